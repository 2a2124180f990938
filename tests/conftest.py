"""Tiny real checkpoints, written once per test run with fixed seeds."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from exo_spec.models import synthetic


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
