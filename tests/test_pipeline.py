"""One target over real ring-backend processes, pipelined or tensor-parallel, run
through the CLI."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from exo_spec.engine.cached_model import make_cache
from exo_spec.group.launch import _free_ports
from exo_spec.group.pipeline import Stage, layer_count
from exo_spec.group.protocol import FORWARD, Command
from exo_spec.group.stage_cache import StageCache
from exo_spec.group.tensor import check_shardable
from exo_spec.models import synthetic
from exo_spec.models.load import load
from exo_spec.models.synthetic_gemma4 import write_gemma4_text
from exo_spec.prompt import encode_prompt

from decoders import loaded, tiny_qwen3_next
from reference import greedy_reference, quantized_by_mlx_lm

PROMPT = "def heappush(heap, item):"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def models(checkpoints, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    llama4 = synthetic.write_llama(root / "llama4", checkpoints.tokenizer,
                                   num_hidden_layers=4, seed=5)
    return {
        "llama4": llama4,
        "qwen3_5": checkpoints.qwen3_5,
        "deepseek_v3": checkpoints.deepseek_v3,
        "gemma4": write_gemma4_text(root / "gemma4", checkpoints.tokenizer, seed=3),
        "drafter": checkpoints.drafter,
        "llama4-noisy": synthetic.write_perturbed(llama4, root / "llama4-noisy", 0.02, seed=8),
        "qwen3_5-noisy": synthetic.write_perturbed(checkpoints.qwen3_5, root / "qwen3_5-noisy",
                                              0.02, seed=9),
        # wide enough that half of each layer still holds whole groups of 64 quantized
        "llama128": synthetic.write_llama(root / "llama128", checkpoints.tokenizer,
                                          hidden_size=128, intermediate_size=256,
                                          num_hidden_layers=2, seed=6),
    }


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exo_spec.cli", "generate", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "target, ranks, split, drafter, lookup",
    [
        ("llama4", "2", "3,1", None, None),
        ("llama4", "3", "1,2,1", "llama4-noisy", None),
        ("qwen3_5", "2", "3,1", "qwen3_5-noisy", None),
        ("qwen3_5", "3", "2,1,1", "drafter", None),
        # --prompt-lookup alone at every draft length, then beside a drafter
        *[("llama4", "2", "3,1", None, k) for k in ("1", "2", "3", "4", "auto")],
        ("qwen3_5", "2", "3,1", "qwen3_5-noisy", "2"),
    ],
)
def test_pipeline_matches_greedy_reference(models, target, ranks, split, drafter, lookup):
    """``lookup``: --prompt-lookup with this draft length (auto: adaptive)."""
    path = models[target]
    spec = ["--draft-model", str(models[drafter])] if drafter else []
    if lookup:
        spec.append("--prompt-lookup")
    k = lookup or "2"
    spec += ([] if k == "auto" else ["--num-draft", k]) if spec else ["--no-spec"]
    max_tokens = 32 if lookup else MAX_TOKENS  # llama4's decode repeats itself after ~20
    proc = cli("--json", "--prompt", PROMPT, "--model", str(path), "--max-tokens",
               str(max_tokens), "--local-ranks", ranks, "--split", split, *spec)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    prompt = encode_prompt(loaded(path).tokenizer, PROMPT)
    assert out["tokens"] == greedy_reference(loaded(path).model, prompt, max_tokens)
    stats = out["stats"]
    assert (stats["ranks"], stats["parallel"]) == (int(ranks), "pipeline")
    assert stats["mode"] == "+".join(
        mode for mode, used in (("lookup", lookup), ("draft", drafter)) if used) or "none"
    if lookup and k != "auto":
        assert stats["accepted"] > 0
    if drafter and drafter.endswith("noisy"):
        # Both paths of a round are exercised: some drafts kept, some rejected.
        assert 0 < stats["accepted"] < stats["drafted"]


@pytest.mark.parametrize("parallel", ["pipeline", "tensor"])
def test_rotating_kv_cache_across_ranks(models, parallel):
    """A 16-token window wraps during decoding on every rank; drafts are partly
    rejected, so the rotating caches are rewound across the group."""
    path = models["llama4"]
    proc = cli("--json", "--prompt", PROMPT, "--model", str(path), "--draft-model",
               str(models["llama4-noisy"]), "--num-draft", "3", "--max-tokens", "20",
               "--max-kv-size", "16", "--local-ranks", "2", "--parallel", parallel)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    prompt = encode_prompt(loaded(path).tokenizer, PROMPT)
    assert len(prompt) + 20 > 16
    assert out["tokens"] == greedy_reference(loaded(path).model, prompt, 20, max_kv_size=16)
    assert 0 < out["stats"]["accepted"] < out["stats"]["drafted"]


@pytest.mark.parametrize("target, split, flags", [
    ("qwen3_5", "3,1", ["--num-draft", "2"]),
    # A warm-up job first: the group's caches are reset before the job that is reported.
    ("qwen3_5", "3,1", ["--warmup-tokens", "5"]),
    ("deepseek_v3", "1,1", ["--num-draft", "2"]),  # its body takes no input_embeddings
    # Every rank quantizes the layers it keeps, rank 0 the MTP head too: the tokens are
    # mlx-lm's greedy decode of the target mlx-lm quantized the same way.
    ("qwen3_5", "3,1", ["--num-draft", "2", "--quantize", "8"]),
    ("qwen3_5", "3,1", ["--num-draft", "2", "--prompt-lookup"]),
])
def test_mtp_on_rank_0_matches_greedy_reference(models, target, split, flags):
    path = models[target]
    proc = cli("--json", "--prompt", PROMPT, "--model", str(path), "--max-tokens",
               str(MAX_TOKENS), "--local-ranks", "2", "--split", split, "--mtp", *flags)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    prompt = encode_prompt(loaded(path).tokenizer, PROMPT)
    model = quantized_by_mlx_lm(path, 8) if "--quantize" in flags else loaded(path).model
    assert out["tokens"] == greedy_reference(model, prompt, MAX_TOKENS)
    assert out["stats"]["mode"] == ("lookup+mtp" if "--prompt-lookup" in flags else "mtp")
    assert out["stats"]["drafted"] > 0
    assert out["stats"]["generation_tokens"] == MAX_TOKENS


def test_models_whose_layers_cannot_be_split_are_one_line(models):
    proc = cli("--prompt", PROMPT, "--model", str(models["gemma4"]), "--no-spec",
               "--local-ranks", "2")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1
    assert "model_type gemma4_text cannot be split across ranks" in proc.stderr


def test_mtp_without_mtp_weights_is_one_line(models):
    proc = cli("--prompt", PROMPT, "--model", str(models["llama4"]), "--mtp",
               "--local-ranks", "2")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "no MTP weights" in proc.stderr


@pytest.mark.parametrize("ranks", [2, 3])
def test_a_round_moves_k_plus_1_rows_per_hop(models, ranks):
    """The target drafting for itself accepts every draft: 4 rounds of k=2, each
    one command and k+1 hidden rows on each of the ``ranks`` hops."""
    path, k = models["llama4"], 2
    proc = cli("--json", "--prompt", PROMPT, "--model", str(path), "--draft-model", str(path),
               "--num-draft", str(k), "--max-tokens", str(1 + 4 * (k + 1)),
               "--local-ranks", str(ranks))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)["stats"]
    assert stats["accepted"] == stats["drafted"] == 4 * k
    embed = loaded(path).model.model.embed_tokens.weight
    hidden_row = embed.shape[1] * embed.dtype.size
    command = Command(FORWARD).encode().nbytes
    assert stats["bytes_per_round"] == (k + 1) * hidden_row * ranks + command
    assert stats["messages_per_round"] == 1 + ranks


@pytest.mark.parametrize(
    "target, drafter",
    [("llama4", None), ("llama4", "llama4-noisy"), ("qwen3_5", "qwen3_5-noisy"),
     ("qwen3_5", "mtp")],
)
def test_tensor_parallel_matches_greedy_reference(models, target, drafter):
    """qwen3_5's shard() splits its lm_head over the vocabulary: the MTP row checks
    that rank 0 drafts with the whole head and verifies with the gathered one."""
    path = models[target]
    spec = ["--no-spec"] if drafter is None else ["--mtp", "--num-draft", "2"] \
        if drafter == "mtp" else ["--draft-model", str(models[drafter]), "--num-draft", "2"]
    proc = cli("--json", "--prompt", PROMPT, "--model", str(path), "--max-tokens",
               str(MAX_TOKENS), "--local-ranks", "2", "--parallel", "tensor", *spec)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    prompt = encode_prompt(loaded(path).tokenizer, PROMPT)
    assert out["tokens"] == greedy_reference(loaded(path).model, prompt, MAX_TOKENS)
    stats = out["stats"]
    assert (stats["ranks"], stats["parallel"]) == (2, "tensor")
    if drafter == "mtp":  # a random MTP head drafts, but accepts next to nothing
        assert stats["mode"] == "mtp" and stats["drafted"] > 0
    elif drafter:
        assert 0 < stats["accepted"] < stats["drafted"]


def test_tensor_parallel_quantized_matches_greedy_reference(models):
    """Each rank quantizes the target as it loads, then keeps its slices of the
    quantized layers: mlx-lm's greedy decode of the target mlx-lm quantized alike
    (at 4 bits it parts from the float decode within these tokens)."""
    path = models["llama128"]
    proc = cli("--json", "--prompt", PROMPT, "--model", str(path), "--max-tokens",
               str(MAX_TOKENS), "--local-ranks", "2", "--parallel", "tensor", "--no-spec",
               "--quantize", "4")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    prompt = encode_prompt(loaded(path).tokenizer, PROMPT)
    assert out["tokens"] == greedy_reference(quantized_by_mlx_lm(path, 4), prompt, MAX_TOKENS)
    assert out["tokens"] != greedy_reference(loaded(path).model, prompt, MAX_TOKENS)
    assert (out["stats"]["ranks"], out["stats"]["parallel"]) == (2, "tensor")


@pytest.mark.parametrize(
    "target, args, message",
    [
        ("llama4", ["--local-ranks", "3", "--no-spec"], "num_attention_heads 4 does not divide"),
        ("llama4", ["--local-ranks", "2", "--split", "3,1"], "--split is for --parallel pipeline"),
        ("llama4", ["--local-ranks", "2", "--quantize", "8"], "hidden_size 64 over 2 ranks"),
    ],
)
def test_tensor_parallel_refusals_are_one_line(models, target, args, message):
    proc = cli("--prompt", PROMPT, "--model", str(models[target]), "--parallel", "tensor",
               *args)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_models_mlx_lm_cannot_shard_are_refused():
    with pytest.raises(ValueError, match="mlx-lm cannot shard model_type gemma4_text"):
        check_shardable({"model_type": "gemma4_text"}, 2)


@pytest.mark.parametrize(
    "target, parallel, split, drafter",
    [("qwen3_5", "pipeline", [3, 1], "qwen3_5-noisy"), ("llama4", "tensor", None, "llama4-noisy")],
)
def test_next_turn_from_the_prefix_cache_across_ranks(models, tmp_path, target, parallel,
                                                      split, drafter):
    """A 2-rank group keeps every rank's own caches of turn 1's prompt: turn 2 starts
    from them (rank 0's proposer state too) and decodes what it decodes with no cache,
    mlx-lm's greedy decode."""
    path = models[target]
    job = {"model": str(path), "draft_model": str(models[drafter]), "parallel": parallel,
           "split": split, "num_draft": 2, "max_tokens": MAX_TOKENS,
           "first": "def heappush(heap, item):\n    heap.append(item)\n" * 4,
           "next": "class Queue:\n    def __init__(self"}
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in _free_ports(2)]))
    script = Path(__file__).with_name("group_turns.py")
    procs = [subprocess.Popen([sys.executable, str(script), json.dumps(job)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "MLX_RANK": str(rank),
                                   "MLX_HOSTFILE": str(hostfile)})
             for rank in range(2)]
    try:
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs[0][1] + outs[1][1]
    out = json.loads(outs[0][0])
    prompt = out["prompt"]
    assert out["got"] == out["want"] == greedy_reference(loaded(path).model, prompt, MAX_TOKENS)
    assert 0 < out["cached"] < len(prompt) and out["fresh_cached"] == 0
    assert out["logits_differ"] < 1e-4  # every rank restored its own caches


def test_sampling_matches_one_process(checkpoints):
    """Rank 0 samples from the same logits as a single process: same seed, same tokens."""
    args = ["--json", "--prompt", PROMPT, "--model", str(checkpoints.llama), "--draft-model",
            str(checkpoints.drafter), "--num-draft", "3", "--temp", "0.9", "--seed", "3",
            "--max-tokens", str(MAX_TOKENS)]
    one, group = cli(*args), cli(*args, "--local-ranks", "2")
    assert one.returncode == 0 and group.returncode == 0, one.stderr + group.stderr
    assert json.loads(group.stdout)["tokens"] == json.loads(one.stdout)["tokens"]


@pytest.mark.parametrize("name", ["llama4", "qwen3_5", "deepseek_v3", "qwen3_next"])
def test_stages_compose_to_the_whole_model(models, name):
    """Rank 0's stage, a later stage fed its hidden rows, and rank 0's head give the
    whole model's logits, over a prompt and then one more token through the caches."""
    def fresh():
        return tiny_qwen3_next() if name == "qwen3_next" else load(str(models[name])).model

    layers = layer_count(fresh())
    cut = layers // 2
    first = StageCache(Stage(fresh(), range(0, cut), rank=0))
    later = StageCache(Stage(fresh(), range(cut, layers), rank=1))
    whole = fresh()
    cache = make_cache(whole)
    for tokens in ([[3, 40, 7, 99, 12]], [[5]]):
        x = mx.array(tokens)
        h = later(first(x))
        np.testing.assert_allclose(np.array(first.stage.project(first.stage.norm(h))),
                                   np.array(whole(x, cache=cache)), rtol=1e-4, atol=1e-4)


def test_a_follower_keeps_only_its_layers(models):
    model = load(str(models["llama4"]), lazy=True).model
    Stage(model, range(1, 3), rank=1)
    names = [k for k, _ in tree_flatten(model.parameters())]
    assert names and all(k.startswith("model.layers.") for k in names)
    assert {k.split(".")[2] for k in names} == {"0", "1"}  # layers 1 and 2, renumbered


def test_bad_split_is_one_line(models):
    proc = cli("--prompt", PROMPT, "--model", str(models["llama4"]),
               "--local-ranks", "2", "--split", "4,1")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--split 4,1" in proc.stderr


def _child_with_rank(parent: int, rank: int) -> int:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in map(int, children):
        if f"MLX_RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return pid
    raise AssertionError(f"no rank {rank} among {children}")


def test_dead_rank_fails_the_job(models):
    proc = subprocess.Popen(
        [sys.executable, "-m", "exo_spec.cli", "generate", "--prompt", PROMPT, "--model",
         str(models["llama4"]), "--no-spec", "--max-tokens", "4000", "--local-ranks", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        # Decoding has started once rank 0 streams text.
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready and os.read(proc.stdout.fileno(), 1), "no output from rank 0"
        os.kill(_child_with_rank(proc.pid, 1), signal.SIGKILL)
        start = time.monotonic()
        _, err = proc.communicate(timeout=30)
        assert time.monotonic() - start < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert "exited with status" in err.decode()
