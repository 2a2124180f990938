"""Advertise a worker by mDNS: one ``_exo-spec._tcp.local.`` service named after its
node id and address, whose TXT properties carry what a coordinator needs before it
connects.

The service's name and host name hold the worker's address, so two workers with one
node id (many Macs share a host name, the default id) never claim the same mDNS
names, however close together they start: every coordinator sees both, and its
registry tells them apart (``coordinator.registry``: the later one is "ID (2)").
"""

from __future__ import annotations

import re
import socket

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from .. import __version__
from ..serving import address
from .node import Node

SERVICE_TYPE = "_exo-spec._tcp.local."
MAX_LABEL_BYTES = 63  # a DNS label, the service's instance name among them


def properties(node: Node, port: int) -> dict[str, str]:
    return {
        "node_id": node.node_id,
        "version": __version__,
        "port": str(port),
        "memory_bytes": str(node.memory_bytes),
        "chip": node.chip,
        "backend": node.backend,
    }


def instance_name(node: Node, port: int) -> str:
    """``NODE_ID@HOST:PORT``, the node id cut to fit one DNS label."""
    where = f"@{address(node.host, port)}"
    room = MAX_LABEL_BYTES - len(where.encode())
    return node.node_id.encode()[:room].decode(errors="ignore") + where


def service_info(node: Node, port: int) -> AsyncServiceInfo:
    # The SRV target must be a DNS host name: one per address, so that two workers
    # never give one name two addresses.
    server = "exo-spec-" + re.sub(r"[^A-Za-z0-9]", "-", node.host)
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{instance_name(node, port)}.{SERVICE_TYPE}",
        addresses=[socket.inet_pton(_family(node.host), node.host)],
        port=port,
        properties=properties(node, port),
        server=f"{server}.local.",
    )


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Advertiser:
    """Registers the service on the interface of ``node.host`` only, so the address
    a coordinator reads is the one the worker serves on."""

    def __init__(self, node: Node, port: int):
        self._info = service_info(node, port)
        version = IPVersion.V6Only if ":" in node.host else IPVersion.V4Only
        self._zeroconf = AsyncZeroconf(interfaces=[node.host], ip_version=version)

    async def start(self) -> None:
        # The name holds this worker's address, so no other live worker has it: a
        # conflict (NonUniqueNameException) is a fault worth stopping for.
        # Both calls return once the records are queued, with a task that sends them.
        announced = await self._zeroconf.async_register_service(self._info,
                                                               allow_name_change=False)
        await announced

    async def stop(self) -> None:
        said_goodbye = await self._zeroconf.async_unregister_service(self._info)
        await said_goodbye
        await self._zeroconf.async_close()
