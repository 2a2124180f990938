"""``exo-spec worker``: serve this machine to a coordinator (``worker.server``)."""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from pathlib import Path

from ..worker.runner.watchdog import DEFAULT_TIMEOUT_S


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help="serve this machine to a coordinator")
    p.add_argument("--host", help="address to bind and advertise (default: the primary one)")
    p.add_argument("--port", type=int, default=0, help="gRPC port (default: any free one)")
    p.add_argument("--memory-gb", type=float,
                   help="memory budget to advertise (default: 75%% of physical memory)")
    p.add_argument("--node-id", help="this node's id (default: the host name)")
    p.add_argument("--no-mdns", action="store_true", help="do not advertise by mDNS")
    p.add_argument("--group-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="fail a job whose group makes no progress for S seconds "
                        f"(default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--prefix-cache-mb", type=float, metavar="N",
                   help="keep up to N MiB of recent prompts' caches per placement, so "
                        "a conversation's next turn prefills only its new tokens (0: off; "
                        "default 1024, at most 5%% of the memory budget: see "
                        "worker.control.default_prefix_cache_bytes)")
    p.add_argument("--model-dir", action="append", default=[], metavar="DIR",
                   help="a folder of checkpoint directories to list as loadable models "
                        "(repeatable; the Hugging Face hub cache is always listed)")
    p.set_defaults(run=run)


def run(args) -> int:
    for flag, value in (("--memory-gb", args.memory_gb), ("--group-timeout", args.group_timeout)):
        if value is not None and not 0 < value < math.inf:
            print(f"exo-spec worker: error: {flag} must be > 0, got {value}", file=sys.stderr)
            return 2
    if args.prefix_cache_mb is not None and not 0 <= args.prefix_cache_mb < math.inf:
        print(f"exo-spec worker: error: --prefix-cache-mb must be >= 0, got "
              f"{args.prefix_cache_mb}", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:  # gRPC would bind port % 65536
        print(f"exo-spec worker: error: --port must be a port number, got {args.port}",
              file=sys.stderr)
        return 2
    model_dirs = [Path(d).expanduser().resolve() for d in args.model_dir]
    for d in model_dirs:
        if not d.is_dir():
            print(f"exo-spec worker: error: --model-dir {d} is not a directory",
                  file=sys.stderr)
            return 2
    from ..worker.node import this_node
    from ..worker.server import serve

    node = this_node(args.node_id, args.host, args.memory_gb)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s exo-spec worker {node.node_id}: %(message)s")
    try:
        return asyncio.run(serve(
            node, args.port, mdns=not args.no_mdns, group_timeout_s=args.group_timeout,
            model_dirs=model_dirs,
            prefix_cache_bytes=None if args.prefix_cache_mb is None
            else int(args.prefix_cache_mb * 2**20)))
    except KeyboardInterrupt:
        return 0
