"""A job's ``Penalties`` applied to the logits, as mlx-lm's ``make_logits_processors``
applies them in ``generate_step``: logit bias, then repetition, presence and
frequency penalties, each over the newest ``*_context_size`` tokens of the history
(the prompt and every token emitted up to the one the row was fed).

A verify pass has one row per fed position, each with its own history: row j of
``[last, d1..dk]`` sees the history ending with ``last`` and then ``d1..dj``. Every
row is processed at once, from one token array that ends with the newest row's
history, so a round costs the same few operations whatever its width. The history
itself stays on the device, cut to the longest context any penalty reads
(``tail``): building it never waits for the host.
"""

from __future__ import annotations

from functools import lru_cache

import mlx.core as mx
import numpy as np

from ..sampling import Penalties


@lru_cache(maxsize=256)
def _windows(length: int, rows: int, context: int) -> tuple[mx.array, mx.array]:
    """Indices (rows, context) into a token array of ``length`` of each row's newest
    ``context`` tokens, where row j's history is the array's first
    ``length - rows + 1 + j`` tokens, and which of them are real. A history shorter
    than ``context`` pads its window with its first token: a repeat, which a penalty
    counting presence ignores (the frequency penalty masks it)."""
    ends = length - rows + 1 + np.arange(rows)[:, None]  # one past each row's history
    index = ends - context + np.arange(context)[None, :]
    return mx.array(np.maximum(index, 0), dtype=mx.int32), mx.array(index >= 0)


class LogitsProcessing:
    """``penalties`` (active ones) as one function of logits and history."""

    def __init__(self, penalties: Penalties):
        self.penalties = penalties
        p = penalties
        self._history_penalties = [
            (name, value, size) for name, value, size in (
                ("repetition", p.repetition_penalty, p.repetition_context_size),
                ("presence", p.presence_penalty, p.presence_context_size),
                ("frequency", p.frequency_penalty, p.frequency_context_size),
            ) if value != 0  # as make_logits_processors: a repetition penalty of 1 is a no-op
        ]
        # How many of the newest tokens any penalty reads; 0: logit bias only, no history.
        self.context = max((size for _, _, size in self._history_penalties), default=0)
        self._bias = None
        if p.logit_bias:
            self._bias = (mx.array(list(p.logit_bias.keys())),
                          mx.array(list(p.logit_bias.values())))
        self.vocab: int | None = None  # the target's width, once bound

    def bind(self, vocab: int) -> None:
        """The target's logits are ``vocab`` wide: logit bias ids must lie within, and a
        narrower proposer's logits are widened to it while processed."""
        bad = [t for t in self.penalties.logit_bias if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"logit_bias token id {bad[0]} is outside the vocabulary "
                             f"(0..{vocab - 1})")
        self.vocab = vocab

    def tail(self, tokens: mx.array) -> mx.array | None:
        """``tokens`` cut to the newest ``context``: all the history any penalty reads.
        None where no penalty reads history."""
        if not self.context:
            return None
        return tokens[-self.context :] if tokens.shape[0] > self.context else tokens

    def extend(self, history: mx.array | None, tokens: mx.array) -> mx.array | None:
        """``history`` followed by ``tokens``, cut by ``tail``."""
        if not self.context:
            return None
        return self.tail(mx.concatenate([history, tokens]))

    def for_drafts(self, history: mx.array | None):
        """What a proposer's logits go through: these penalties over ``history`` and the
        drafts before each one, as the target's verify rows will see them."""

        def process(logits: mx.array, drafts: list[mx.array]) -> mx.array:
            tokens = history if not drafts or history is None \
                else mx.concatenate([history, *drafts])
            return self(logits, tokens)

        return process

    def __call__(self, logits: mx.array, tokens: mx.array | None) -> mx.array:
        """Process ``logits`` (R, V): row j's history is ``tokens[: len(tokens) - R + 1 + j]``
        (``tokens`` may be None where no penalty reads history)."""
        width = logits.shape[-1]
        if self.vocab is not None and width < self.vocab:  # a proposer with a narrower head
            padded = mx.pad(logits, [(0, 0), (0, self.vocab - width)],
                            constant_values=-float("inf"))
            return self(padded, tokens)[:, :width]
        if self._bias is not None:
            ids, values = self._bias
            logits = logits.at[:, ids].add(values)
        rows = logits.shape[0]
        for name, penalty, size in self._history_penalties:
            # A window wider than the history only pads it: cap it there.
            index, real = _windows(tokens.shape[0], rows, min(size, tokens.shape[0]))
            window = tokens[index]  # (R, size)
            if name == "frequency":  # every occurrence counts: padding must not
                amount = mx.where(real, penalty, 0.0).astype(logits.dtype)
                logits = logits.at[mx.arange(rows)[:, None], window].subtract(amount)
                continue
            selected = mx.take_along_axis(logits, window, axis=-1)
            if name == "repetition":
                selected = mx.where(selected < 0, selected * penalty, selected / penalty)
            else:
                selected = selected - penalty
            logits = mx.put_along_axis(logits, window, selected, axis=-1)
        return logits
