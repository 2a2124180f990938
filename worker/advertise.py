"""Advertise a worker by mDNS: one ``_exo-spec._tcp.local.`` service named after its
node id, whose TXT properties carry what a coordinator needs before it connects."""

from __future__ import annotations

import re
import socket

from zeroconf import IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from .. import __version__
from .node import Node

SERVICE_TYPE = "_exo-spec._tcp.local."


def properties(node: Node, port: int) -> dict[str, str]:
    return {
        "node_id": node.node_id,
        "version": __version__,
        "port": str(port),
        "memory_bytes": str(node.memory_bytes),
        "chip": node.chip,
        "backend": node.backend,
    }


def service_info(node: Node, port: int) -> AsyncServiceInfo:
    # The SRV target must be a DNS host name, whatever characters the node id has.
    server = re.sub(r"[^A-Za-z0-9-]", "-", node.node_id).strip("-") or "exo-spec"
    return AsyncServiceInfo(
        SERVICE_TYPE,
        f"{node.node_id}.{SERVICE_TYPE}",
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
        # A node id already on the network is refused (NonUniqueNameException),
        # never silently renamed: the id is how coordinators tell nodes apart.
        # Both calls return once the records are queued, with a task that sends them.
        announced = await self._zeroconf.async_register_service(self._info,
                                                               allow_name_change=False)
        await announced

    async def stop(self) -> None:
        said_goodbye = await self._zeroconf.async_unregister_service(self._info)
        await said_goodbye
        await self._zeroconf.async_close()
