"""The caches of recent sequences, so that a job whose tokens extend one prefills only
the rest (a conversation's next turn re-sends the whole of the turns before).

One ``PrefixCache`` serves one model and one cache layout (a placement): it keeps, per
stored token sequence, an independent copy (``cache_snapshot.clone``) of the target's
caches (``RoundCache.cache``) taken at exactly the end of that sequence, and an
optional ``extra`` payload, for instance the proposer's state at the same point (a
drafter's cache list, an MTP head's cache list and the target's last hidden row: a
dict of named cache lists, arrays and plain values, copied the same way). Entries are
bounded by the bytes of their arrays (``max_bytes``); the least recently stored or hit
goes first.

``lookup(tokens)`` hands back fresh copies from which feeding ``tokens[hit.length:]``
gives what a fresh prefill of ``tokens`` gives, so output is unchanged by a hit. What
that implies, since state is kept at exact boundaries:

- **At least one token is left to prefill**: the job needs the logits of its last
  prompt token, which no cache holds.
- **Recurrent state** (GatedDeltaNet, SSM: the ``ArraysCache`` of hybrids), and a
  ``RotatingKVCache`` that has wrapped, is valid only where it was taken: such an entry
  serves only a sequence that extends the *whole* stored one. For a chat, store at the
  prompt's end (every turn's prompt starts with the one before, where the chat template
  renders the history the same way); the tokens a job generated may be re-rendered
  differently by the template in the next turn's prompt.
- **KV-only entries** (KVCache, QuantizedKVCache, an unwrapped RotatingKVCache, MLA's
  latent KVCache) can be cut: one serves the longest prefix it shares with the new
  tokens, so an entry also serves another conversation with the same system prompt.
  Storing such an entry drops the cuttable entries that are prefixes of it.
- **``extra``** is only valid at its entry's end: a hit cut shorter carries none (the
  proposer then reads the prompt as on a miss; its state changes only how many drafts
  are kept, never the output).
- **A RotatingKVCache that keeps its first tokens** (``keep`` > 0, as ``--max-kv-size``
  builds) depends on how tokens were fed once more than its window were: its entries
  serve only sequences no longer than the window (``cache_snapshot.sink_window``).

Copies are taken on the device and queued with ``mx.async_eval`` at store time; a hit's
copies are lazy and computed with the first prefill chunk. Not thread-safe: a runner
serves one job at a time.

``engine.decoder.SpecDecoder`` looks each prompt up before its prefill (only entries of
its own target's cache ``layout``) and stores it, with the proposer's state as
``extra``, once its first token is read; ``job_series.JobSeries`` carries one from job to
job, as a worker's one-machine placement does (``exo-spec worker --prefix-cache-mb``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from . import cache_snapshot


@dataclass
class Hit:
    length: int  # tokens the caches hold: prefill tokens[length:] (at least one)
    caches: list  # fresh caches, independent of the entry and of each other hit's
    extra: dict | None  # a fresh copy of the entry's extra, only where length is its end


@dataclass
class _Entry:
    tokens: np.ndarray  # int64
    caches: list  # the stored copies: never handed out, only cloned again
    extra: dict | None
    nbytes: int
    cuttable: bool  # every cache may be cut to a prefix (KV caches only)
    window: int | None  # the longest sequence it may start (sink_window), None: any
    layout: tuple  # cache_snapshot.layout of its caches

    def usable(self, tokens: np.ndarray) -> int:
        """How many of ``tokens`` this entry can stand for, leaving at least one."""
        n = tokens.shape[0]
        if self.window is not None and n > self.window:
            return 0
        stored = self.tokens.shape[0]
        if not self.cuttable:
            return stored if stored < n and np.array_equal(tokens[:stored], self.tokens) else 0
        common = min(stored, n)
        differ = np.flatnonzero(tokens[:common] != self.tokens[:common])
        return min(int(differ[0]) if differ.size else common, n - 1)


class PrefixCache:
    def __init__(self, max_bytes: int):
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()  # oldest first
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0  # prompt tokens not prefilled, over all hits
        self.evictions = 0

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tokens: Sequence[int]) -> bool:
        """Whether an entry ends exactly at ``tokens``."""
        return tuple(int(t) for t in tokens) in self._entries

    def store(self, tokens: Sequence[int], caches: list, extra: dict | None = None) -> bool:
        """Keep a copy of ``caches``, which have seen exactly ``tokens``, and of ``extra``.
        False if the copy alone is larger than ``max_bytes`` (nothing is stored then).
        The copies are queued on the device at once; the caller may go on using (and
        changing) its caches."""
        key = tuple(int(t) for t in tokens)
        if not key:
            raise ValueError("cannot store an empty sequence")
        for c in caches:
            seen = cache_snapshot.length(c)
            if seen is not None and seen != len(key):
                raise ValueError(f"a {type(c).__name__} has seen {seen} tokens, "
                                 f"not the {len(key)} stored")
        memo: dict = {}
        copies = [cache_snapshot.clone(c, memo=memo) for c in caches]
        extra_copy = cache_snapshot.clone_tree(extra) if extra is not None else None
        new = cache_snapshot.arrays([copies, extra_copy])
        entry = _Entry(
            tokens=np.array(key, dtype=np.int64), caches=copies, extra=extra_copy,
            nbytes=sum(a.nbytes for a in new),
            cuttable=all(cache_snapshot.can_cut(c) for c in caches),
            window=min((w for w in map(cache_snapshot.sink_window, caches) if w is not None),
                       default=None),
            layout=cache_snapshot.layout(caches),
        )
        if entry.nbytes > self.max_bytes:
            return False
        self._drop(key)
        if entry.cuttable:  # a cuttable entry serves whatever its cuttable prefixes did
            for old_key, old in list(self._entries.items()):
                if old.cuttable and old.layout == entry.layout and len(old_key) < len(key) \
                        and key[: len(old_key)] == old_key:
                    self._drop(old_key)
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.evictions += 1
        if new:
            mx.async_eval(new)
        return True

    def lookup(self, tokens: Sequence[int], layout: tuple | None = None) -> Hit | None:
        """Fresh caches for the longest stored prefix of ``tokens`` that leaves at least
        one token to prefill, or None. Among equally long ones, an entry that ends there
        (its ``extra`` comes along) is preferred, then the most recent. ``layout``: only
        entries whose caches have it (``cache_snapshot.layout`` of the caller's own: a
        model built with another ``max_kv_size`` makes other caches)."""
        wanted = np.asarray(tokens, dtype=np.int64).reshape(-1)
        best, best_length, best_ends = None, 0, False
        for key in reversed(self._entries):  # most recent first
            entry = self._entries[key]
            if layout is not None and entry.layout != layout:
                continue
            n = entry.usable(wanted)
            ends = n == len(key)
            if n > best_length or (n and n == best_length and ends and not best_ends):
                best, best_length, best_ends = key, n, ends
        if best is None:
            self.misses += 1
            return None
        entry = self._entries[best]
        self._entries.move_to_end(best)
        self.hits += 1
        self.reused_tokens += best_length
        if best_ends:
            memo: dict = {}
            caches = [cache_snapshot.clone(c, memo=memo) for c in entry.caches]
            extra = cache_snapshot.clone_tree(entry.extra) if entry.extra is not None else None
        else:
            cut: dict[int, object] = {}  # keep aliases: one clone per stored cache
            for c in entry.caches:
                if id(c) not in cut:
                    cut[id(c)] = cache_snapshot.clone(c, best_length)
            caches = [cut[id(c)] for c in entry.caches]
            extra = None
        return Hit(best_length, caches, extra)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: tuple[int, ...]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes
