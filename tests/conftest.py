"""Tiny real checkpoints, written once per test run with fixed seeds."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from exo_spec.auth import key_file
from exo_spec.auth.grpc_client import channel
from exo_spec.models import synthetic


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory):
    """Coordinators the tests start keep their state (``--state-dir``'s default) in this
    run's own directory, never in the user's."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("state")))
        yield


@pytest.fixture(scope="session", autouse=True)
def cluster_key(tmp_path_factory):
    """Every coordinator, worker and client the tests start finds one cluster key at its
    default path (``$XDG_CONFIG_HOME/exo-spec/cluster.key``), in this run's own
    directory: the user's is never read."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))
        env.delenv(key_file.ENV, raising=False)
        yield key_file.save_key(key_file.ClusterKey.generate())


def admin_channel(target: str) -> grpc.Channel:
    """A channel to a coordinator or worker the tests started, its calls signed with the
    run's cluster key (the admin's)."""
    return channel(target, key_file.load_key())


# Workers load models only from their --model-dir folders. Every checkpoint a test writes
# is under pytest's base temporary directory, so the helpers that start workers
# (test_cluster.with_model_dir) give them that one, named here.
MODEL_DIR = "EXO_SPEC_TEST_MODEL_DIR"


@pytest.fixture(scope="session", autouse=True)
def model_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as env:
        env.setenv(MODEL_DIR, str(tmp_path_factory.getbasetemp()))
        yield


@dataclass(frozen=True)
class Checkpoints:
    tokenizer: Path
    llama: Path  # dense target
    drafter: Path  # smaller llama sharing the tokenizer
    qwen3_5: Path  # hybrid GatedDeltaNet + attention target with mtp.* weights
    deepseek_v3: Path  # MLA + MoE target with its MTP block past num_hidden_layers
    foreign_drafter: Path  # a llama with a different tokenizer


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> Checkpoints:
    root = tmp_path_factory.mktemp("checkpoints")
    tok = root / "tokenizer"
    synthetic.write_tokenizer(tok)
    other_tok = root / "other-tokenizer"
    synthetic.write_tokenizer(other_tok, vocab_size=400)
    return Checkpoints(
        tokenizer=tok,
        llama=synthetic.write_llama(root / "llama", tok, seed=0),
        drafter=synthetic.write_llama(
            root / "drafter", tok, hidden_size=32, num_hidden_layers=1, seed=1
        ),
        qwen3_5=synthetic.write_qwen3_5(root / "qwen3_5", tok, seed=2),
        deepseek_v3=synthetic.write_deepseek_v3(root / "deepseek_v3", tok, seed=3),
        foreign_drafter=synthetic.write_llama(
            root / "foreign", other_tok, hidden_size=32, num_hidden_layers=1, seed=4
        ),
    )


@dataclass(frozen=True)
class Trained:
    path: Path  # what `exo-spec make-models --size test` wrote
    log: str  # its stderr


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    out = tmp_path_factory.mktemp("make-models") / "models"
    proc = subprocess.run(
        [sys.executable, "-m", "exo_spec.cli", "make-models", "--size", "test", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return Trained(out, proc.stderr)
