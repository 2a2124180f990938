"""Where the followers of an idle long-lived group wait: off the ring.

MLX's ring backend polls its sockets, so a rank waiting in a collective keeps a
core busy. A worker's placement outlives its jobs, and between jobs each of its
followers would spin at 100% CPU in the next command's ``all_sum`` for as long as
the placement stays warm (one core per idle follower, taken from every other
placement on the node). Rank 0 therefore ends a job by telling the
followers to park (``protocol.PARK``); a parked follower blocks in ``recv`` on a
plain TCP connection to rank 0, and rank 0 rings it awake, one byte, before the
next job's first command. Only that byte travels this way; tensors and commands
stay on ``mx.distributed``. If rank 0 goes away, the parked follower reads end of
file and stops.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import mlx.core as mx

CONNECT_TIMEOUT_S = 30.0


def leader_host() -> str:
    """Rank 0's host, from the ring's hostfile (its first entry)."""
    hosts = json.loads(Path(os.environ["MLX_HOSTFILE"]).read_text())
    return hosts[0][0].rsplit(":", 1)[0].strip("[]")


class Doorbell:
    """Rank 0: one connection per follower."""

    def __init__(self, group: mx.distributed.Group):
        # On rank 0's ring address only, and only until every follower is in: nothing
        # here checks who connects (docs/DESIGN.md, "Who may use a cluster").
        host = leader_host()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.create_server((host, 0), family=family) as server:
            _share_port(server.getsockname()[1], group)
            server.settimeout(CONNECT_TIMEOUT_S)
            self._followers = [server.accept()[0] for _ in range(group.size() - 1)]

    def ring(self) -> None:
        """Wake every follower; RuntimeError (as the ring reports a lost peer) when one
        is gone."""
        try:
            for conn in self._followers:
                conn.sendall(b"!")
        except OSError as e:
            raise RuntimeError(f"a follower's doorbell failed: {e}") from None


class Bell:
    """A follower: its connection to rank 0's doorbell."""

    def __init__(self, group: mx.distributed.Group, host: str):
        port = _share_port(0, group)
        self._conn = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        self._conn.settimeout(None)

    def wait(self) -> None:
        """Block until rank 0 rings; RuntimeError when rank 0 is gone."""
        try:
            rung = self._conn.recv(1)
        except OSError as e:
            raise RuntimeError(f"rank 0's doorbell failed: {e}") from None
        if not rung:
            raise RuntimeError("rank 0 closed its doorbell")


def _share_port(port: int, group: mx.distributed.Group) -> int:
    """Rank 0's ``port`` on every rank (the others pass 0)."""
    return int(mx.distributed.all_sum(mx.array(port, dtype=mx.int32), group=group).item())
