"""``exo-spec worker``: serve this machine to a coordinator (``worker.server``), to
callers that hold the cluster key (``--key-file``); without one it does not start."""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from pathlib import Path

from ..auth.key_file import KeyFileError, add_key_file_flag, load_key
from ..worker.batching import KV_BUDGET_SHARE, MAX_BATCH, Batching
from ..worker.lease import DEFAULT_TIMEOUT_S as DEFAULT_LEASE_TIMEOUT_S
from ..worker.runner.watchdog import DEFAULT_TIMEOUT_S


def add_parser(sub) -> None:
    p = sub.add_parser("worker", help="serve this machine to a coordinator")
    p.add_argument("--host", help="address to bind and advertise (default: the primary one)")
    p.add_argument("--port", type=int, default=0, help="gRPC port (default: any free one)")
    p.add_argument("--memory-gb", type=float,
                   help="memory budget to advertise (default: 75%% of physical memory)")
    p.add_argument("--node-id", help="this node's id (default: the host name); a coordinator "
                                     "lists a second worker with a ready one's id as 'ID (2)'")
    p.add_argument("--no-mdns", action="store_true", help="do not advertise by mDNS")
    p.add_argument("--group-timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="fail a job whose group makes no progress for S seconds "
                        f"(default {DEFAULT_TIMEOUT_S:g})")
    p.add_argument("--lease-timeout", type=float, default=DEFAULT_LEASE_TIMEOUT_S, metavar="S",
                   help="serve one coordinator at a time: the first that loads here holds "
                        "this worker while it keeps calling (its heartbeats renew the lease); "
                        "once it has been silent for S seconds its placements are released "
                        "and another coordinator may take over "
                        f"(default {DEFAULT_LEASE_TIMEOUT_S:g})")
    p.add_argument("--prefix-cache-mb", type=float, metavar="N",
                   help="keep up to N MiB of recent prompts' caches per placement, so "
                        "a conversation's next turn prefills only its new tokens (0: off; "
                        "default 1024, at most 5%% of the memory budget: see "
                        "worker.control.default_prefix_cache_bytes)")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, metavar="N",
                   help="decode up to N jobs of a one-node placement together, in one "
                        "batched pass per round (1: one at a time; jobs past it wait; "
                        f"default {MAX_BATCH})")
    p.add_argument("--kv-budget-gb", type=float, metavar="G",
                   help="the KV caches of a placement's batched jobs stay within G GiB: "
                        "a job that would pass it waits (default "
                        f"{KV_BUDGET_SHARE * 100:.0f}%% of the memory budget)")
    p.add_argument("--model-dir", action="append", default=[], metavar="DIR",
                   help="a folder of checkpoint directories: models load only from these, "
                        "by a path relative to one or inside one, and from the Hugging Face "
                        "hub cache; any other path is refused (repeatable; default ~/models, "
                        "which need not exist; ListModels lists them and the hub cache)")
    p.add_argument("--allow-downloads", action="store_true",
                   help="fetch a Hugging Face id missing from the hub cache (a request's, or "
                        "a drafter its model card names); off by default, so no request can "
                        "make this machine download a repository")
    add_key_file_flag(p)
    p.set_defaults(run=run)


def run(args) -> int:
    for flag, value in (("--memory-gb", args.memory_gb), ("--group-timeout", args.group_timeout),
                        ("--lease-timeout", args.lease_timeout)):
        if value is not None and not 0 < value < math.inf:
            print(f"exo-spec worker: error: {flag} must be > 0, got {value}", file=sys.stderr)
            return 2
    if args.prefix_cache_mb is not None and not 0 <= args.prefix_cache_mb < math.inf:
        print(f"exo-spec worker: error: --prefix-cache-mb must be >= 0, got "
              f"{args.prefix_cache_mb}", file=sys.stderr)
        return 2
    if args.max_batch < 1:
        print(f"exo-spec worker: error: --max-batch must be >= 1, got {args.max_batch}",
              file=sys.stderr)
        return 2
    if args.kv_budget_gb is not None and not 0 < args.kv_budget_gb < math.inf:
        print(f"exo-spec worker: error: --kv-budget-gb must be > 0, got {args.kv_budget_gb}",
              file=sys.stderr)
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
    try:
        key = load_key(args.key_file)
    except KeyFileError as e:
        print(f"exo-spec worker: error: {e}", file=sys.stderr)
        return 2
    from ..worker.model_sources import DEFAULT_MODEL_DIR, ModelSources
    from ..worker.node import this_node
    from ..worker.server import serve

    models = ModelSources.of(model_dirs or [DEFAULT_MODEL_DIR], args.allow_downloads)

    node = this_node(args.node_id, args.host, args.memory_gb)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s exo-spec worker {node.node_id}: %(message)s")
    try:
        return asyncio.run(serve(
            node, key, args.port, mdns=not args.no_mdns, group_timeout_s=args.group_timeout,
            models=models, lease_timeout_s=args.lease_timeout,
            prefix_cache_bytes=None if args.prefix_cache_mb is None
            else int(args.prefix_cache_mb * 2**20),
            batching=Batching(args.max_batch, None if args.kv_budget_gb is None
                              else int(args.kv_budget_gb * 2**30))))
    except KeyboardInterrupt:
        return 0
