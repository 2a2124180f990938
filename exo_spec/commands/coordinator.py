"""``exo-spec coordinator``: find the workers, place models on them, serve the API.

Prints one line once it serves (``exo-spec coordinator serving on HOST:PORT``),
and with ``--http-port`` a second (``exo-spec coordinator: OpenAI API on
http://HOST:PORT/v1``), then logs one line per node found or lost and per job
state change on stderr; on SIGINT/SIGTERM it cancels its jobs and releases its
placements.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys

from ..coordinator.api import MAX_TOKENS
from ..coordinator.discovery import parse_address
from ..coordinator.scheduler import DEFAULT_MAX_QUEUE, DEFAULT_MAX_TOKENS
from ..coordinator.server import DEFAULT_PORT, Coordinator
from ..serving import address, until_stopped

DEFAULT_HTTP_PORT = 52415  # exo-spec serve's; the coordinator serves HTTP only when asked


def add_job_flags(p) -> None:
    """The flags of what the coordinator admits, shared with ``exo-spec serve``."""
    p.add_argument("--max-queue", type=int, default=DEFAULT_MAX_QUEUE, metavar="N",
                   help="jobs of one model that may wait at a time; more are refused with "
                        f"RESOURCE_EXHAUSTED (HTTP 429) (default: {DEFAULT_MAX_QUEUE})")
    p.add_argument("--max-tokens-default", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help="the most tokens a request that names no max_tokens decodes (it "
                        f"decodes the rest of the context, at most N) (default: "
                        f"{DEFAULT_MAX_TOKENS})")


def check_job_flags(args) -> str | None:
    """What is wrong with the flags of ``add_job_flags``, if anything."""
    if args.max_queue < 1:
        return f"--max-queue must be >= 1, got {args.max_queue}"
    if not 1 <= args.max_tokens_default <= MAX_TOKENS:
        return f"--max-tokens-default must be from 1 to {MAX_TOKENS}, got " \
               f"{args.max_tokens_default}"
    return None


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
    p.add_argument("--http-port", type=int, metavar="P",
                   help="also serve the OpenAI-compatible HTTP API on this port (default: "
                        f"off; exo-spec serve uses {DEFAULT_HTTP_PORT}; 0 picks a free one)")
    p.add_argument("--http-host", metavar="H",
                   help="address of the HTTP API (default: --host)")
    add_job_flags(p)
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
    if not 0 < args.heartbeat < math.inf or args.lost_after < 1:  # NaN too
        return _error("--heartbeat must be > 0 and --lost-after >= 1")
    for flag, port in (("--port", args.port), ("--http-port", args.http_port)):
        if port is not None and not 0 <= port < 65536:
            return _error(f"{flag} must be a port number, got {port}")
    if args.http_host is not None and args.http_port is None:
        return _error("--http-host needs --http-port")
    if wrong := check_job_flags(args):
        return _error(wrong)
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
                              heartbeat_s=args.heartbeat, lost_after=args.lost_after,
                              http_port=args.http_port, http_host=args.http_host,
                              max_queue=args.max_queue,
                              default_max_tokens=args.max_tokens_default)
    try:
        port = await coordinator.start()
    except Exception as e:  # a port in use, an address not on this machine, no multicast
        return _error(f"cannot serve on {address(args.host, args.port)}: "
                      f"{type(e).__name__}: {e}")
    finding = ", ".join(filter(None, ["mDNS" if not args.no_mdns else "",
                                      *(f"peer {p}" for p in args.peer)])) or "nothing"
    print(f"exo-spec coordinator serving on {address(args.host, port)} (finding workers by: "
          f"{finding})", file=sys.stderr, flush=True)
    if coordinator.http:
        print(f"exo-spec coordinator: OpenAI API on {coordinator.http.url}", file=sys.stderr,
              flush=True)
    await until_stopped()
    logging.getLogger(__name__).info("stopping")
    await coordinator.stop()
    return 0
