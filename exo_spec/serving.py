"""What the coordinator and worker servers share: how an address is written and
how a server waits to be told to stop."""

from __future__ import annotations

import asyncio
import signal


def address(host: str, port: int) -> str:
    """The dialable "host:port" (IPv6 hosts in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def until_stopped() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
