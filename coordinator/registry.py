"""The nodes a coordinator knows and whether they are alive.

Discovery (mDNS or ``--peer``) hands the registry addresses; each address gets a
heartbeat task calling the worker's ``GetInfo`` every ``interval`` seconds. The
first answer makes the address a node, READY, keyed by the node id it reports. A
READY node none of whose heartbeats sent in the last ``lost_after`` seconds was
answered is LOST: it leaves the ready set and ``on_lost`` is called so its jobs
can go elsewhere. Each heartbeat may take until then to be answered, so a worker
slow to answer (a loaded machine) is not lost for it, and a hung one (stopped, or
cut off without a word) is lost ``lost_after`` seconds after its last answer. A
worker is an asyncio process holding no weights, so its answers do not wait for
the jobs its runners decode. A LOST node that answers again becomes READY again
(``on_ready``). Addresses found by mDNS that stay unreachable for
``FORGET_AFTER_S`` are dropped; ``--peer`` addresses are kept for as long as the
coordinator runs.

Node ids are unique among READY nodes. A second worker answering with the id of
one that is READY (many Macs share one host name, the default id) is listed as
"ID (2)" (the lowest number free), as Bonjour names a second service; it keeps
that name while it answers. Two addresses answering with one ``instance_id`` are
one worker reached two ways: the first keeps it and the other is not used.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from ..auth.grpc_client import aio_channel
from ..auth.key_file import ClusterKey
from ..status import StatusError
from ..v1 import worker_pb2, worker_pb2_grpc
from .placement_plan import size
from .states import NodeState

log = logging.getLogger(__name__)

HEARTBEAT_S = 0.5
LOST_AFTER_S = 2.5
MIN_TIMEOUT_S = 0.2  # the least time a heartbeat gets, however overdue its node is
TIMER_SLACK_S = 0.05  # a deadline that fires this early still counts as reached
FORGET_AFTER_S = 600.0
# Reconnect to a worker that went away within seconds of it coming back, not after
# gRPC's default backoff of up to two minutes.
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 500),
                   ("grpc.min_reconnect_backoff_ms", 500),
                   ("grpc.max_reconnect_backoff_ms", 2000)]


@dataclass(eq=False)
class NodeRecord:
    address: str  # the host:port the coordinator dials
    source: str  # "peer" or "mdns"
    channel: grpc.aio.Channel
    stub: worker_pb2_grpc.WorkerControlStub
    state: NodeState = NodeState.PENDING
    info: worker_pb2.WorkerInfo | None = None
    # The id the coordinator knows it by: the one it reports, or "ID (2)" when a READY
    # node of another worker has that one.
    node_id: str = ""
    last_seen: float = 0.0  # time.time() of the last answer
    # time.monotonic() when the last answered heartbeat was sent (until one is: when
    # the address was added)
    asked_at: float = field(default_factory=time.monotonic)
    misses: int = 0
    error: str = ""  # why the last heartbeat failed
    # mDNS said it left (until it is advertised again): the next failed heartbeat makes
    # it LOST at once (a worker says goodbye before its server stops answering)
    goodbye: bool = False
    task: asyncio.Task | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def host(self) -> str:
        """The address the worker's ring ranks bind to: the one it reports, unless
        that is a wildcard, then the one the coordinator reaches it at."""
        reported = self.info.host if self.info else ""
        if reported and reported not in ("0.0.0.0", "::"):
            return reported
        return self.address.rsplit(":", 1)[0].strip("[]")


class Registry:
    def __init__(self, *, key: ClusterKey, interval: float = HEARTBEAT_S,
                 lost_after: float = LOST_AFTER_S, coordinator_id: str = ""):
        """``key``: the cluster key, which every call to a worker is signed with;
        ``coordinator_id``: what this coordinator's calls name it (its heartbeats
        renew its lease on the workers it holds, ``worker.lease``)."""
        self.key = key
        self.coordinator_id = coordinator_id
        self.interval = interval
        self.lost_after = lost_after
        # What becomes of the nodes, for whoever holds things on them (the coordinator
        # connects its placements): ``on_ready(node)`` when a node becomes READY,
        # ``on_lost(node, reason)`` when it is LOST, ``on_info(node)`` after every
        # answered heartbeat.
        self.on_ready: Callable[[NodeRecord], None] | None = None
        self.on_lost: Callable[[NodeRecord, str], None] | None = None
        self.on_info: Callable[[NodeRecord], None] | None = None
        self._by_address: dict[str, NodeRecord] = {}
        self._closed = False

    # -- what the rest of the coordinator reads ---------------------------------------

    def nodes(self) -> list[NodeRecord]:
        """Every node that ever answered, READY or LOST, by id: one record per id,
        the READY one when it answers at more than one address."""
        best: dict[str, NodeRecord] = {}
        for n in self._by_address.values():
            if n.info is None:
                continue
            other = best.get(n.node_id)
            if other is None or (n.state == NodeState.READY, n.last_seen) > \
                    (other.state == NodeState.READY, other.last_seen):
                best[n.node_id] = n
        return [best[k] for k in sorted(best)]

    def ready(self) -> list[NodeRecord]:
        return [n for n in self.nodes() if n.state == NodeState.READY]

    def get(self, node_id: str) -> NodeRecord | None:
        """The READY node with this id, else a LOST one, else None."""
        matches = [n for n in self.nodes() if n.node_id == node_id]
        return next((n for n in matches if n.state == NodeState.READY),
                    matches[0] if matches else None)

    def is_ready(self, node_id: str) -> bool:
        node = self.get(node_id)
        return node is not None and node.state == NodeState.READY

    # -- what discovery calls ------------------------------------------------------------

    def add(self, address: str, source: str) -> NodeRecord:
        """Start watching ``address`` (idempotent); a known one is checked now."""
        node = self._by_address.get(address)
        if node is not None:
            node.goodbye = False
            self.check_now(address)
            return node
        channel = aio_channel(address, self.key, CHANNEL_OPTIONS)
        node = NodeRecord(address, source, channel, worker_pb2_grpc.WorkerControlStub(channel))
        self._by_address[address] = node
        node.task = asyncio.create_task(self._heartbeat(node), name=f"heartbeat {address}")
        return node

    def lose(self, node: NodeRecord, reason: str) -> None:
        """Make a READY node LOST now (its heartbeats went unanswered, or a job of its
        failed and it did not answer since); it is READY again once it answers."""
        if node.state != NodeState.READY:
            return
        node.state = NodeState.LOST
        log.info("node %s lost at %s: %s", node.node_id, node.address, reason)
        if self.on_lost:
            self.on_lost(node, reason)

    def check_now(self, address: str, *, goodbye: bool = False) -> None:
        """Heartbeat ``address`` at once (mDNS saw it change, or leave: ``goodbye``,
        and then one failed heartbeat is enough to make it LOST)."""
        node = self._by_address.get(address)
        if node is not None:
            node.goodbye = node.goodbye or goodbye
            node.wake.set()

    async def close(self) -> None:
        self._closed = True
        nodes = list(self._by_address.values())
        for node in nodes:
            node.task.cancel()
        await asyncio.gather(*(n.task for n in nodes), return_exceptions=True)
        await asyncio.gather(*(n.channel.close() for n in nodes), return_exceptions=True)

    # -- heartbeats ----------------------------------------------------------------------

    async def _heartbeat(self, node: NodeRecord) -> None:
        while not self._closed:
            node.wake.clear()
            asked = time.monotonic()
            try:
                info = await node.stub.GetInfo(
                    worker_pb2.GetInfoRequest(coordinator_id=self.coordinator_id),
                    timeout=self._timeout(node, asked))
            except grpc.aio.AioRpcError as e:
                if self._missed(node, e):
                    return
            else:
                node.asked_at = asked
                self._answered(node, info)
            try:
                await asyncio.wait_for(node.wake.wait(), self.interval)
            except TimeoutError:
                pass

    def _timeout(self, node: NodeRecord, now: float) -> float:
        """A READY node's heartbeat may take until the node would be LOST; any other
        node's gets ``lost_after``."""
        if node.state != NodeState.READY:
            return self.lost_after
        return max(node.asked_at + self.lost_after - now, MIN_TIMEOUT_S)

    def _answered(self, node: NodeRecord, info: worker_pb2.WorkerInfo) -> None:
        same = next((n for n in self._by_address.values() if n is not node
                     and n.state == NodeState.READY and info.instance_id
                     and n.info.instance_id == info.instance_id), None)
        if same is not None:  # one worker at two addresses: the first one serves
            duplicate = f"the same worker as node {same.node_id} at {same.address}"
            if node.error != duplicate:
                log.warning("not using %s: %s", node.address, duplicate)
            node.error = duplicate
            return
        node.last_seen, node.misses, node.error = time.time(), 0, ""
        if node.state != NodeState.READY or node.info.node_id != info.node_id:
            node.node_id = self._free_id(info.node_id, node)
        rejoined = any(n.node_id == node.node_id for n in self.nodes())
        node.info = info
        if node.state != NodeState.READY:
            node.state = NodeState.READY
            log.info("node %s %s at %s (%s, %s, %s)", node.node_id,
                     "ready again" if rejoined else "found", node.address, info.backend,
                     info.chip, size(info.memory_bytes))
            if node.node_id != info.node_id:
                log.warning("the worker at %s calls itself %s, as another ready worker "
                            "does: it is node %s here (give each worker its own --node-id)",
                            node.address, info.node_id, node.node_id)
            if self.on_ready:
                self.on_ready(node)
        if self.on_info:
            self.on_info(node)

    def _free_id(self, wanted: str, node: NodeRecord) -> str:
        """``wanted``, unless a READY node at another address has it: then the first
        of "wanted (2)", "wanted (3)", ... that none has."""
        taken = {n.node_id for n in self._by_address.values()
                 if n is not node and n.state == NodeState.READY}
        if wanted not in taken:
            return wanted
        return next(f"{wanted} ({i})" for i in itertools.count(2)
                    if f"{wanted} ({i})" not in taken)

    def _missed(self, node: NodeRecord, e: grpc.aio.AioRpcError) -> bool:
        """Count a failed heartbeat; True when the address should be forgotten."""
        node.misses += 1
        node.error = StatusError.from_rpc(e).line()
        silent = time.monotonic() - node.asked_at
        if node.state == NodeState.READY and (
                silent + TIMER_SLACK_S >= self.lost_after or node.goodbye):
            self.lose(node, f"it left (mDNS goodbye) and does not answer ({node.error})"
                      if node.goodbye else
                      f"no heartbeat answered for {silent:.1f}s ({node.error})")
        elif node.state == NodeState.PENDING and node.misses == 1:
            log.info("%s %s does not answer yet (%s); retrying", node.source, node.address,
                     node.error)
        if (node.source == "mdns" and node.state != NodeState.READY
                and silent >= FORGET_AFTER_S):
            log.info("forgetting %s (%s): unreachable for %.0fs", node.address,
                     node.node_id or "never answered", silent)
            del self._by_address[node.address]
            asyncio.get_running_loop().create_task(node.channel.close())
            return True
        return False
