"""``exo-spec coordinator``: find the workers, place models on them, serve the API.

Prints one line once it serves (``exo-spec coordinator serving on HOST:PORT``),
then logs one line per node found or lost and per job state change on stderr;
on SIGINT/SIGTERM it cancels its jobs and releases its placements.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from ..coordinator.discovery import parse_address
from ..coordinator.server import DEFAULT_PORT, Coordinator
from ..serving import address, until_stopped


def add_parser(sub) -> None:
    p = sub.add_parser("coordinator", help="serve a cluster of workers to clients")
    p.add_argument("--host", default="0.0.0.0",
                   help="address to serve on; mDNS browses its interface (default: all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"gRPC port (default: {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--peer", action="append", default=[], metavar="HOST:PORT",
                   help="a worker to use without mDNS (repeatable)")
    p.add_argument("--no-mdns", action="store_true", help="do not look for workers by mDNS")
    p.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between heartbeats to each worker (default: 1)")
    p.add_argument("--lost-after", type=int, default=3, metavar="N",
                   help="missed heartbeats in a row that make a node LOST (default: 3)")
    p.set_defaults(run=run)


def _error(message: str) -> int:
    print(f"exo-spec coordinator: error: {message}", file=sys.stderr)
    return 2


def run(args) -> int:
    try:
        for peer in args.peer:
            parse_address(peer)
    except ValueError as e:
        return _error(f"--peer: {e}")
    if args.heartbeat <= 0 or args.lost_after < 1:
        return _error("--heartbeat must be > 0 and --lost-after >= 1")
    if args.no_mdns and not args.peer:
        print("exo-spec coordinator: warning: --no-mdns and no --peer: no worker can be found",
              file=sys.stderr)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s exo-spec coordinator: %(message)s")
    try:
        return asyncio.run(serve(args))
    except KeyboardInterrupt:
        return 0


async def serve(args) -> int:
    coordinator = Coordinator(args.host, args.port, peers=args.peer, mdns=not args.no_mdns,
                              heartbeat_s=args.heartbeat, lost_after=args.lost_after)
    try:
        port = await coordinator.start()
    except Exception as e:  # a port in use, an address not on this machine, no multicast
        return _error(f"cannot serve on {address(args.host, args.port)}: "
                      f"{type(e).__name__}: {e}")
    finding = ", ".join(filter(None, ["mDNS" if not args.no_mdns else "",
                                      *(f"peer {p}" for p in args.peer)])) or "nothing"
    print(f"exo-spec coordinator serving on {address(args.host, port)} (finding workers by: "
          f"{finding})", file=sys.stderr, flush=True)
    await until_stopped()
    logging.getLogger(__name__).info("stopping")
    await coordinator.stop()
    return 0
