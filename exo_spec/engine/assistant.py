"""Proposer: a Gemma 4 assistant drafter (see exo_spec.models.gemma4_assistant).

The assistant keeps no cache. Each round it reads the target's own K/V, the
caches of the target's last non-shared layer of each attention type, exactly
as the engine left them after trimming the rejected tail, so there is nothing
to roll back. Step i reads ``(s_T or d_i, h)`` where h starts as h_{T-1}, the
target's state that predicted s_T, and then chains through the assistant's
``post_projection``; every step's queries sit at position T, the position of
s_T, as transformers' ``SinglePositionMultiTokenCandidateGenerator`` places them.

Sliding-attention layers see the keys the target's own sliding layer would
see from position T, positions T - window + 1 .. T - 1 (s_T itself is not
fed yet). The rotating cache may hold them in rotated or temporal order, and
one older entry; a mask built from the cache's offsets (host integers, no
sync) selects exactly those positions.
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import KVCache, RotatingKVCache

from ..models.gemma4_assistant import Model, SharedKV
from ..models.heads import language_model
from .cached_model import CachedModel
from .proposer import Process, draft
from .sampling import Sampling


def shared_kv_layers(target_args) -> dict[str, int]:
    """Per layer type, the target layer whose cache the assistant reads: the last
    layer of that type that computes its own K/V (mlx-lm's ``previous_kvs`` rule)."""
    own = target_args.num_hidden_layers - target_args.num_kv_shared_layers
    return {kind: i for i, kind in enumerate(target_args.layer_types[:own])}


def read_kv(cache, sliding_window: int | None) -> tuple[mx.array, mx.array, mx.array | None]:
    """Keys, values and mask of ``cache`` for a query at the position right after it."""
    if type(cache) is KVCache:
        return cache.keys[..., : cache.offset, :], cache.values[..., : cache.offset, :], None
    if type(cache) is RotatingKVCache and cache.keep == 0:
        n, idx, offset = cache.keys.shape[2], cache._idx, cache.offset
        slot = mx.arange(n)
        position = offset - idx + slot - mx.where(slot >= idx, n, 0)
        window = sliding_window or cache.max_size
        return cache.keys, cache.values, (position >= 0) & (position > offset - window)
    raise TypeError(f"the Gemma 4 assistant cannot read a {type(cache).__name__} target cache")


class Gemma4Assistant:
    mode = "assistant"
    needs_hidden = True

    def __init__(self, assistant: Model, target: CachedModel):
        lm = language_model(target.model)
        self.assistant = assistant
        self.target = target
        self.embed = lm.model.embed_tokens
        self.embed_scale = lm.model.embed_scale
        self.sliding_window = lm.args.sliding_window
        layers = shared_kv_layers(lm.args)
        self.kv_layers = {kind: layers[kind] for kind in set(assistant.layer_types)}
        self._token: mx.array | None = None  # s_T
        self._hidden: mx.array | None = None  # h_{T-1}

    def prefill(self, tokens: mx.array, hidden: mx.array | None) -> None:
        self._token, self._hidden = tokens[-1:], hidden[-1:]

    def state(self) -> dict:
        return {}  # the target's caches are its state, and they are restored anyway

    def restore(self, state: dict) -> None:
        pass

    def propose_pipelined(self, tokens: mx.array, hidden: mx.array | None, k: int,
                          sampling: Sampling, process: Process | None = None
                          ) -> tuple[mx.array, mx.array | None]:
        # Nothing to take back: the next commit() sets both fields again.
        self.commit(tokens.shape[0] - 1, tokens, hidden)
        return self.propose(k, sampling, process)

    def commit(self, accepted: int, tokens: mx.array, hidden: mx.array | None) -> None:
        self._token, self._hidden = tokens[-1:], hidden[-1:]

    def withdraw(self) -> None:
        pass  # proposing changed nothing

    def propose(self, k: int, sampling: Sampling, process: Process | None = None
                ) -> tuple[mx.array, mx.array | None]:
        shared = self.shared_kv()
        position = self.target.cache[0].offset
        h = self._hidden[None]

        def next_logits(previous: mx.array | None) -> mx.array:
            nonlocal h
            logits, h = self.step(self._token if previous is None else previous, h, shared,
                                  position)
            return logits

        return draft(k, sampling, next_logits, process)

    def step(self, token: mx.array, hidden: mx.array, shared: SharedKV, position: int):
        """Logits (1, V) for the token after ``token`` (1,), and the next hidden (1, 1, H)."""
        x = mx.concatenate([self.embed(token[None]) * self.embed_scale, hidden], axis=-1)
        logits, h = self.assistant(x, shared, position)
        return logits[0], h

    def shared_kv(self) -> SharedKV:
        out = {}
        for kind, layer in self.kv_layers.items():
            window = self.sliding_window if kind == "sliding_attention" else None
            out[kind] = read_kv(self.target.cache[layer], window)
        return out
