"""What ``make-models --size`` builds: model shapes, corpus, batches and step budgets."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Shape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class Schedule:
    """AdamW with linear warmup and cosine decay to ``lr * final_lr_fraction``. Training
    stops at ``max_steps`` or, when ``time_budget_s`` is set, at the step count the
    measured speed says fits in the budget, whichever comes first."""

    max_steps: int
    lr: float
    warmup_steps: int
    batch_size: int
    seq_len: int
    time_budget_s: float | None = None
    weight_decay: float = 0.1
    final_lr_fraction: float = 0.1


@dataclass(frozen=True)
class Expansion:
    """The trained target (and dense target) enlarged without changing their function
    (``expand``): MLPs ``mlp_factor`` times wider, ``extra_layers`` more layers."""

    mlp_factor: int
    extra_layers: int


@dataclass(frozen=True)
class Size:
    name: str
    vocab_size: int
    corpus_chars: int
    target: Shape
    drafter: Shape
    target_schedule: Schedule
    drafter_schedule: Schedule
    # A dense llama of the target's shape, trained on the text alone, for comparing the
    # drafter with mlx-lm's speculative decoding, which cannot rewind the hybrid target.
    dense_target_schedule: Schedule | None = None
    mtp_weight: float = 1.0
    # Then the MTP head alone, the target frozen, on the drafter's data: the target's
    # greedy continuations are what its drafts are checked against.
    mtp_schedule: Schedule | None = None
    # The drafter's data: the text, and (this share of its tokens) the trained target's
    # greedy continuations of `distill_count` windows of the text (see distill).
    distill_share: float = 0.5
    distill_count: int = 256
    distill_prompt: int = 32
    distill_new_tokens: int = 96
    include_tests: bool = False
    num_prompts: int = 12
    seed: int = 0
    gpu_dtype: str = "bfloat16"
    expansion: Expansion | None = None


SIZES = {
    # Seconds on a CPU, for the test suite: models that load and decode, not good ones.
    "test": Size(
        name="test",
        vocab_size=320,
        corpus_chars=150_000,
        target=Shape(32, 2, 2, 1, 64),
        drafter=Shape(32, 1, 2, 1, 64),
        target_schedule=Schedule(max_steps=30, lr=3e-3, warmup_steps=5, batch_size=8,
                                 seq_len=64),
        drafter_schedule=Schedule(max_steps=30, lr=3e-3, warmup_steps=5, batch_size=8,
                                  seq_len=64),
        dense_target_schedule=Schedule(max_steps=30, lr=3e-3, warmup_steps=5, batch_size=8,
                                       seq_len=64),
        mtp_schedule=Schedule(max_steps=30, lr=3e-3, warmup_steps=5, batch_size=8, seq_len=64),
        num_prompts=4,
        distill_count=16,
        distill_new_tokens=16,
    ),
    # About two minutes on two CPU cores with MLX's reference-BLAS CPU backend, which
    # multiplies at a few GFLOP/s: small models, a fixed step count, so the result is
    # the same on every machine. Tiny models like a low learning rate with warmup here.
    "demo": Size(
        name="demo",
        vocab_size=512,
        corpus_chars=1_000_000,
        target=Shape(64, 2, 4, 2, 192),
        drafter=Shape(48, 1, 3, 1, 128),
        target_schedule=Schedule(max_steps=200, lr=1.5e-3, warmup_steps=20, batch_size=8,
                                 seq_len=64),
        drafter_schedule=Schedule(max_steps=250, lr=1.5e-3, warmup_steps=20, batch_size=8,
                                  seq_len=64),
        mtp_schedule=Schedule(max_steps=100, lr=1e-3, warmup_steps=10, batch_size=8,
                              seq_len=64),
    ),
    # A 100M+ parameter target for one GPU in about five minutes: steps are fitted to
    # wall-clock budgets (capped), so the step count depends on the hardware.
    "bench": Size(
        name="bench",
        vocab_size=8192,
        corpus_chars=40_000_000,
        target=Shape(1024, 8, 16, 4, 3072),
        drafter=Shape(384, 4, 6, 2, 1024),
        target_schedule=Schedule(max_steps=20_000, lr=6e-4, warmup_steps=50, batch_size=32,
                                 seq_len=512, time_budget_s=125.0),
        drafter_schedule=Schedule(max_steps=20_000, lr=1e-3, warmup_steps=50, batch_size=32,
                                  seq_len=512, time_budget_s=35.0),
        dense_target_schedule=Schedule(max_steps=20_000, lr=6e-4, warmup_steps=50,
                                       batch_size=32, seq_len=512, time_budget_s=40.0),
        # The head alone needs a high rate: its few dozen steps at 3e-4 leave its
        # acceptance where the joint run had it.
        mtp_schedule=Schedule(max_steps=20_000, lr=1e-3, warmup_steps=10, batch_size=32,
                              seq_len=512, time_budget_s=35.0),
        include_tests=True,
        distill_count=512,
        distill_prompt=64,
        distill_new_tokens=192,
    ),
}

# The bench's models, the targets enlarged so that a decoding pass on one GPU is bound
# by its weight reads, as a large model's is on a Mac: 16 layers with 32 times wider
# MLPs, about 10 GB in bfloat16 (the trained 8 layers compute the output; the copies
# and the wider MLPs' extra neurons add exactly zero to it).
SIZES["bench-wide"] = replace(SIZES["bench"], name="bench-wide",
                              expansion=Expansion(mlp_factor=32, extra_layers=8))
