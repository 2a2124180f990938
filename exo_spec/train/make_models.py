"""``exo-spec make-models``: train a target with an MTP head, a drafter and an
untrained drafter from the Python standard library's sources, offline.

Output directory::

    tokenizer/          byte-level BPE trained on the training files
    target/             mlx-lm qwen3_5 with mtp.* weights (see architectures)
    drafter/            a small mlx-lm llama trained on the same tokens
    untrained-drafter/  the drafter's architecture with its seeded initial weights
    dense-target/       (bench and test sizes) an mlx-lm llama of the target's shape
                        trained on the text: a pair with the drafter that mlx-lm's
                        speculative decoding accepts (it cannot rewind the hybrid)
    *-trained/          (bench-wide) the targets as trained, where target/ and
                        dense-target/ hold them enlarged (see expand)
    prompts.json        snippets of held-out files to prompt with
    manifest.json       sizes, parameter counts, steps, losses, seconds, version

The drafter learns from the text and from the trained target's greedy
continuations of windows of it (see distill): cheap to make, and they teach the
drafter the habits the target falls into when it decodes greedily, which text
alone does not. Soft-label distillation was the alternative: it needs target
forward passes over all the drafter's batches, or, done inside the target's own
step, learns from a target that is still untrained itself (in the demo's budget
such a drafter agrees with the target far less often than one trained on the
text). Then the MTP head trains alone, the target frozen, on the drafter's
data: its drafts are checked against the target's greedy choices, which the
joint training never showed it.
``models_for(size)`` keeps one built copy per size in the user's cache.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .. import __version__
from ..models import synthetic
from . import architectures, checkpoint, corpus, distill
from .expand import expand, weight_bytes
from .gated_delta import chunked_training
from .sizes import SIZES, Expansion, Size
from .trainer import TrainResult, train

VERSION = 2  # bump when a size's recipe changes, so caches rebuild


def _log(line: str) -> None:
    print(f"make-models: {line}", file=sys.stderr, flush=True)


def _count(module) -> int:
    return sum(v.size for _, v in tree_flatten(module.parameters()))


def _summary(result: TrainResult) -> dict:
    return {"steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 1),
            "first_loss": [round(v, 4) for v in result.first_loss],
            "final_loss": [round(v, 4) for v in result.final_loss]}


def build(size: Size, out: Path, *, seed: int | None = None, max_steps: int | None = None,
          time_budget_s: float | None = None) -> dict:
    """Train and write everything for ``size`` into ``out`` (which must not exist yet
    or be empty). Returns the manifest. ``time_budget_s`` is split between target
    and drafter in the proportion of their schedules' budgets."""
    seed = size.seed if seed is None else seed
    start = time.perf_counter()
    on_gpu = mx.default_device() == mx.gpu
    compute = getattr(mx, size.gpu_dtype) if on_gpu else mx.float32
    out.mkdir(parents=True, exist_ok=True)

    docs = corpus.training_documents(size.corpus_chars, size.include_tests)
    tok_dir = out / "tokenizer"
    synthetic.write_tokenizer(tok_dir, size.vocab_size, "\n".join(docs))
    tokens = corpus.token_stream(docs, tok_dir, synthetic.EOS)
    _log(f"{len(docs)} stdlib files, {sum(map(len, docs)):,} chars, {len(tokens):,} tokens "
         f"(vocabulary {size.vocab_size}, {time.perf_counter() - start:.1f}s)")

    budgets = _split_budget(size, time_budget_s)
    t_config = architectures.target_config(size.target, tok_dir)
    target = architectures.build_target(t_config, seed)
    _log(f"target: qwen3_5 {_count(target.target):,} parameters + MTP {_count(target.mtp):,}")
    with chunked_training():
        t_result = train(target, partial(architectures.target_loss, mtp_weight=size.mtp_weight),
                         tokens, size.target_schedule, name="target", seed=seed,
                         compute_dtype=compute, max_steps=max_steps, time_budget_s=budgets[0])
    # Decode the continuations in the dtype the checkpoint is written in, as users
    # will (float32 decoding of the bench target failed inside MLX's CUDA graphs).
    # The head keeps its float32 weights: it trains on.
    target.target.set_dtype(compute)

    d_config = architectures.llama_config(size.drafter, tok_dir)
    drafter = architectures.build_llama(d_config, seed + 1)
    checkpoint.write_llama(out / "untrained-drafter", drafter, d_config, tok_dir, compute)
    _log(f"drafter: llama {_count(drafter):,} parameters")
    samples = distill.greedy_continuations(
        target.target, tokens, count=size.distill_count, prompt_len=size.distill_prompt,
        new_tokens=size.distill_new_tokens, seed=seed + 2,
        separator=synthetic._token_id(tok_dir, synthetic.EOS))
    _log(f"{size.distill_count} greedy continuations of the target ({len(samples):,} tokens) "
         f"for the drafter" + (" and the MTP head" if size.mtp_schedule else ""))
    drafter_tokens = distill.mixture(tokens, samples, size.distill_share)
    m_result = None
    if size.mtp_schedule:
        target.target.freeze()
        with chunked_training():
            m_result = train(target, architectures.mtp_loss, drafter_tokens, size.mtp_schedule,
                             name="MTP head", seed=seed + 4, compute_dtype=compute,
                             max_steps=max_steps, time_budget_s=budgets[3])
    checkpoint.write_target(out / "target", target, t_config, tok_dir, compute)
    d_result = train(drafter, architectures.lm_loss, drafter_tokens, size.drafter_schedule,
                     name="drafter", seed=seed + 1, compute_dtype=compute,
                     max_steps=max_steps, time_budget_s=budgets[1])
    checkpoint.write_llama(out / "drafter", drafter, d_config, tok_dir, compute)

    dense = None
    if size.dense_target_schedule:
        dense_config = architectures.llama_config(size.target, tok_dir)
        dense_target = architectures.build_llama(dense_config, seed + 3)
        _log(f"dense target: llama {_count(dense_target):,} parameters")
        dense_result = train(dense_target, architectures.lm_loss, tokens,
                             size.dense_target_schedule, name="dense target", seed=seed + 3,
                             compute_dtype=compute, max_steps=max_steps,
                             time_budget_s=budgets[2])
        checkpoint.write_llama(out / "dense-target", dense_target, dense_config, tok_dir, compute)
        dense = {"parameters": _count(dense_target), "loss_parts": ["next_token"],
                 **_summary(dense_result)}

    expanded = expand_models(out, size.expansion) if size.expansion else None

    prompts = corpus.held_out_prompts(size.num_prompts)
    (out / "prompts.json").write_text(json.dumps(prompts, indent=1))
    manifest = {
        "version": VERSION,
        "exo_spec_version": __version__,
        "size": size.name,
        "seed": seed,
        "python": platform.python_version(),
        "device": str(mx.default_device()),
        "dtype": str(compute),
        "corpus": {"files": len(docs), "chars": sum(map(len, docs)), "tokens": len(tokens),
                   "vocab_size": size.vocab_size, "include_tests": size.include_tests},
        "target": {"parameters": _count(target.target), "mtp_parameters": _count(target.mtp),
                   "loss_parts": ["total", "next_token", "mtp"], "mtp_weight": size.mtp_weight,
                   **_summary(t_result),
                   **({"mtp_head_alone": {"data": "drafter's", "loss_parts": ["mtp"],
                                          **_summary(m_result)}} if m_result else {})},
        "drafter": {"parameters": _count(drafter), "loss_parts": ["next_token"],
                    "distilled_tokens": len(samples), "distill_share": size.distill_share,
                    **_summary(d_result)},
        **({"dense_target": dense} if dense else {}),
        **({"expansion": expanded} if expanded else {}),
        "prompts": len(prompts),
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def expand_models(out: Path, expansion: Expansion) -> dict:
    """Move ``out``'s target and dense target to ``*-trained`` and write them enlarged
    in their place; what was done and the weight bytes before and after."""
    result = {"mlp_factor": expansion.mlp_factor, "extra_layers": expansion.extra_layers}
    for name in ("target", "dense-target"):
        if not (out / name).is_dir():
            continue
        trained = out / f"{name}-trained"
        os.rename(out / name, trained)
        expand(trained, out / name, mlp_factor=expansion.mlp_factor,
               extra_layers=expansion.extra_layers)
        result[name] = {"trained_bytes": weight_bytes(trained),
                        "bytes": weight_bytes(out / name)}
        _log(f"{name}: enlarged from {weight_bytes(trained) / 1e9:.2f} GB to "
             f"{weight_bytes(out / name) / 1e9:.2f} GB of weights")
    return result


def _split_budget(size: Size, total: float | None) -> list[float | None]:
    """Time budgets of the target, the drafter, the dense target and the MTP head alone
    (where the size has them): the schedules' own, or ``total`` split in their
    proportions."""
    schedules = [size.target_schedule, size.drafter_schedule, size.dense_target_schedule,
                 size.mtp_schedule]
    if total is None:
        return [s.time_budget_s if s else None for s in schedules]
    weights = [(s.time_budget_s or s.max_steps) if s else 0 for s in schedules]
    return [total * w / sum(weights) for w in weights]


def build_atomically(size: Size, out: Path, **kwargs) -> dict:
    """``build`` into a temporary sibling of ``out`` and rename it into place, so an
    interrupted run leaves no half-written ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        manifest = build(size, tmp, **kwargs)
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "exo-spec" / "models"


def models_for(size: str) -> Path:
    """The built models of ``size`` in the user's cache, building them on first use."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r} (choose from {', '.join(SIZES)})")
    path = cache_root() / f"{size}-v{VERSION}"
    if (path / "manifest.json").is_file():
        return path
    try:
        build_atomically(SIZES[size], path)
    except OSError:
        if not (path / "manifest.json").is_file():  # not a concurrent build that won
            raise
    return path
