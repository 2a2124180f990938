"""A group's prefix cache: every rank keeps its own stage's (or shards') caches for the
same prompts, and rank 0 decides.

Rank 0 owns the index, an ``engine.prefix_cache.PrefixCache`` of its own caches (token
keys, LRU order, byte bound: its own share stands for every rank's), and gives each
entry an id. Every follower keeps ``Snapshots``: id -> a copy of its own caches at that
entry's end. The decoder (``SpecDecoder``) uses a ``GroupPrefixCache`` as it uses a
``PrefixCache`` on one machine; what the other ranks must do rides on one command each
(``protocol``), once per job, never per token:

- **lookup**: on a hit, RESTORE(id) before the prefill: every follower starts from a
  copy of its snapshot, rank 0 from the entry's caches (``GroupTarget.adopt``), and the
  prefill feeds the rest of the prompt as on one machine.
- **store** (once the first token is read, the caches at the prompt's end):
  SNAPSHOT(id) on every follower, then FORGET(id) for each entry the store evicted.

Only hits at a stored prompt's exact end are served (a conversation's next turn): a
cut hit is reported as a miss, since whether a cache may be cut is a per-rank fact
(another stage may hold recurrent state) that rank 0 cannot see.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx

from ..engine import cache_snapshot
from ..engine.prefix_cache import Hit, PrefixCache
from .protocol import FORGET, RESTORE, SNAPSHOT, Command


def _copy(caches: list) -> list:
    memo: dict = {}
    return [cache_snapshot.clone(c, memo=memo) for c in caches]


class Snapshots:
    """A follower's copies of its own caches, by rank 0's entry id."""

    def __init__(self):
        self._by_id: dict[int, list] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def serve(self, command: Command, local) -> None:
        """Do a RESTORE, SNAPSHOT or FORGET command on ``local`` (a ``StageCache`` or
        ``CachedModel``)."""
        if command.op == RESTORE:
            local.rounds.drop()
            local.rounds.cache = _copy(self._by_id[command.rows])
        elif command.op == SNAPSHOT:
            copies = _copy(local.rounds.cache)
            self._by_id[command.rows] = copies
            if new := cache_snapshot.arrays(copies):
                mx.async_eval(new)
        elif command.rows < 0:
            self._by_id.clear()
        else:
            self._by_id.pop(command.rows, None)


class GroupPrefixCache:
    """Rank 0's prefix cache for a group: a ``PrefixCache`` of rank 0's own caches whose
    entries every follower mirrors (``Snapshots``), through ``target``'s group."""

    def __init__(self, index: PrefixCache, target):
        self.index = index
        self.target = target  # GroupTarget: ``command`` reaches every follower
        self._ids: dict[tuple[int, ...], int] = {}  # the index's keys -> entry ids
        self._next_id = 0

    @property
    def max_bytes(self) -> int:
        return self.index.max_bytes

    @property
    def bytes_used(self) -> int:
        return self.index.bytes_used

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, tokens: Sequence[int], layout: tuple | None = None) -> Hit | None:
        hit = self.index.lookup(tokens, layout)
        if hit is None:
            return None
        entry_id = self._ids.get(tuple(int(t) for t in tokens[: hit.length]))
        if entry_id is None:  # cut from a longer entry: not served across ranks
            self.index.hits -= 1
            self.index.reused_tokens -= hit.length
            self.index.misses += 1
            return None
        self.target.command(Command(RESTORE, entry_id))
        return hit

    def store(self, tokens: Sequence[int], caches: list, extra: dict | None = None) -> bool:
        key = tuple(int(t) for t in tokens)
        if not self.index.store(key, caches, extra):
            return False
        entry_id, self._next_id = self._next_id, self._next_id + 1
        self.target.command(Command(SNAPSHOT, entry_id))
        old = self._ids.pop(key, None)
        if old is not None:
            self.target.command(Command(FORGET, old))
        self._ids[key] = entry_id
        for gone in [k for k in self._ids if k not in self.index]:
            self.target.command(Command(FORGET, self._ids.pop(gone)))
        return True

    def clear(self) -> None:
        self.index.clear()
        self._ids.clear()
        self.target.command(Command(FORGET, -1))
