"""Random keys of one sequence in a batch, from its own seed and its own step count.

A seeded sequence must emit the same tokens whoever shares its batch, so nothing it
draws may come from MLX's global key, whose state depends on every draw before.
Each draw's key is a hash of (seed, step, slot) instead: step counts the sequence's
own target passes (0: the prompt's), slot says which draw of the step it is (0: the
target's, j: the j-th draft). MLX's key for seed s is the pair (s >> 32, s & 2^32-1).
"""

from __future__ import annotations

import hashlib
import struct

import mlx.core as mx

from ...sampling import mlx_seed


def _key(seed: int, step: int, slot: int) -> list[int]:
    digest = hashlib.blake2b(struct.pack("<QQQ", seed, step, slot), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return [value >> 32, value & 0xFFFFFFFF]


def step_keys(seeds: list[int], steps: list[int], slots: int) -> mx.array:
    """Keys (rows, slots, 2) uint32: row b's slot j is its (seeds[b], steps[b], j) key."""
    return mx.array([[_key(mlx_seed(seed), step, j) for j in range(slots)]
                     for seed, step in zip(seeds, steps, strict=True)], mx.uint32)


def fresh_seed() -> int:
    """A seed for a sequence that asked for none, from MLX's global key (so a process
    that seeds MLX decodes reproducibly as a whole)."""
    hi, lo = mx.random.randint(0, 2**31, (2,)).tolist()
    return hi << 31 | lo
