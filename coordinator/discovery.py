"""How a coordinator finds workers: mDNS, and ``--peer HOST:PORT`` where multicast
is blocked. Both only hand addresses to the registry, whose heartbeats decide
what is a node and whether it is alive.

The mDNS browser listens for ``_exo-spec._tcp.local.`` (the type workers
advertise, ``exo_spec.worker.advertise.SERVICE_TYPE``) on the interface of the
coordinator's ``--host``, or on every interface when that is a wildcard. A
service that appears or changes is resolved to its address and port; one that
says goodbye makes the registry heartbeat it at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from ..serving import address
from .registry import Registry

log = logging.getLogger(__name__)

SERVICE_TYPE = "_exo-spec._tcp.local."
RESOLVE_TIMEOUT_MS = 3000


def parse_address(text: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as the dialable "host:port"; ValueError
    with a message when it is not one."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return f"{host}:{int(port)}"


def add_peers(registry: Registry, peers: list[str]) -> None:
    for peer in peers:
        registry.add(parse_address(peer), "peer")


class MdnsDiscovery:
    def __init__(self, registry: Registry, host: str):
        """``host``: the coordinator's bind address; a wildcard browses everywhere."""
        self.registry = registry
        wildcard = host in ("", "0.0.0.0", "::")
        if wildcard:
            self._zc = AsyncZeroconf(interfaces=InterfaceChoice.All)
        else:
            v6 = ipaddress.ip_address(host).version == 6
            self._zc = AsyncZeroconf(interfaces=[host],
                                     ip_version=IPVersion.V6Only if v6 else IPVersion.V4Only)
        self._browser: AsyncServiceBrowser | None = None
        self._addresses: dict[str, str] = {}  # service name -> its host:port
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE,
                                            handlers=[self._on_change])

    async def stop(self) -> None:
        if self._browser:
            await self._browser.async_cancel()
        for task in self._tasks:
            task.cancel()
        await self._zc.async_close()

    def _on_change(self, zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            if name in self._addresses:
                self.registry.check_now(self._addresses[name], goodbye=True)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
            log.info("mDNS: %s did not resolve", name)
            return
        hosts = info.parsed_scoped_addresses()
        if not hosts or not info.port:
            log.info("mDNS: %s has no address", name)
            return
        hosts.sort(key=lambda h: ":" in h)  # IPv4 first
        where = address(hosts[0], info.port)
        if self._addresses.get(name) != where:
            node_id = (info.properties or {}).get(b"node_id", b"?").decode(errors="replace")
            log.info("mDNS: %s (node %s) at %s", name, node_id, where)
        self._addresses[name] = where
        self.registry.add(where, "mdns")
