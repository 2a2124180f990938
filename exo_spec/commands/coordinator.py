"""``exo-spec coordinator``: find the workers, place models on them, serve the API.

Prints one line once it serves (``exo-spec coordinator serving on HOST:PORT``),
and with ``--http-port`` a second (``exo-spec coordinator: OpenAI API on
http://HOST:PORT/v1``), then logs one line per node found or lost and per job
state change on stderr; on SIGINT/SIGTERM it cancels its jobs, releases its
placements and ends its leases on the workers. Its id, its jobs and its ready
placements live in ``--state-dir``, so a coordinator killed and started again
keeps its workers (their leases name its id), its job history and its warm models.

Its callers and workers prove the cluster key (``--key-file``), which it makes on its
first start, saying how workers join; HTTP callers (and gRPC callers without the
key) bring an API key (``--api-key``, ``--api-key-file``; with ``--http-port`` and
none given, one is made and printed).
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

from ..auth.callers import ApiKeys, generate_api_key
from ..auth.key_file import (
    ClusterKey,
    KeyFileError,
    add_key_file_flag,
    key_path,
    load_or_create_key,
)
from ..coordinator.api import MAX_TOKENS
from ..coordinator.discovery import parse_address
from ..coordinator.registry import HEARTBEAT_S, LOST_AFTER_S
from ..coordinator.scheduler import DEFAULT_MAX_QUEUE, DEFAULT_MAX_TOKENS
from ..coordinator.server import DEFAULT_PORT, Coordinator
from ..coordinator.state_store import StateDirError, default_state_dir
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


def add_auth_flags(p) -> None:
    """The flags of who may call, shared with ``exo-spec serve``."""
    add_key_file_flag(p, made=True)
    p.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="an API key that HTTP requests (Authorization: Bearer KEY) and gRPC "
                        "calls without the cluster key may bring; each key's caller sees "
                        "only its own jobs (repeatable; default: one is made and printed "
                        "when the HTTP API is served)")
    p.add_argument("--api-key-file", type=Path, metavar="PATH",
                   help="API keys, one a line (keeps them out of the process list)")


def api_keys(args, serves_http: bool) -> tuple[ApiKeys, str | None]:
    """The keys ``add_auth_flags`` gave, and the one made when none was and HTTP is
    served; KeyFileError when ``--api-key-file`` is unreadable."""
    keys = list(args.api_key)
    if args.api_key_file is not None:
        try:
            lines = args.api_key_file.read_text().splitlines()
        except OSError as e:
            raise KeyFileError(f"cannot read --api-key-file {args.api_key_file}: "
                               f"{e.strerror}") from None
        keys += [line.strip() for line in lines if line.strip()]
    made = generate_api_key() if not keys and serves_http else None
    return ApiKeys(keys + [made] if made else keys), made


def cluster_key(args, say: Callable[[str], None]) -> ClusterKey:
    """The cluster key (made in its file on a first start, and ``say`` tells how workers
    and clients join); KeyFileError when it cannot be read or made."""
    key, made = load_or_create_key(args.key_file)
    if made:
        say(f"made a new cluster key in {key_path(args.key_file)} (mode 0600); a worker or "
            "client machine joins with a copy of it at its own key file, or with "
            "`exo-spec key --join TOKEN`, TOKEN from `exo-spec key --join-token` here")
    return key


def add_parser(sub) -> None:
    p = sub.add_parser("coordinator", help="serve a cluster of workers to clients")
    p.add_argument("--host", default="0.0.0.0",
                   help="address to serve on; mDNS browses its interface (default: all)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"gRPC port (default: {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--peer", action="append", default=[], metavar="HOST:PORT",
                   help="a worker to use without mDNS (repeatable)")
    p.add_argument("--no-mdns", action="store_true", help="do not look for workers by mDNS")
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_S, metavar="SECONDS",
                   help=f"seconds between heartbeats to each worker (default: {HEARTBEAT_S})")
    p.add_argument("--lost-after", type=float, default=LOST_AFTER_S, metavar="SECONDS",
                   help="a node none of whose heartbeats of the last SECONDS was answered is "
                        f"LOST (default: {LOST_AFTER_S})")
    p.add_argument("--http-port", type=int, metavar="P",
                   help="also serve the OpenAI-compatible HTTP API on this port (default: "
                        f"off; exo-spec serve uses {DEFAULT_HTTP_PORT}; 0 picks a free one)")
    p.add_argument("--http-host", metavar="H",
                   help="address of the HTTP API (default: --host)")
    p.add_argument("--state-dir", type=Path, metavar="DIR",
                   help="where the coordinator keeps its id, its job history and its "
                        "placements, so a restart keeps its workers and warm models; one "
                        "coordinator per directory (default: $XDG_STATE_HOME/exo-spec, "
                        "else ~/.local/state/exo-spec)")
    add_job_flags(p)
    add_auth_flags(p)
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
    if not 0 < args.heartbeat < args.lost_after < math.inf:  # NaN too
        return _error("--heartbeat must be > 0 and --lost-after more than --heartbeat")
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
    try:
        key = cluster_key(args, lambda line: print(f"exo-spec coordinator: {line}",
                                                   file=sys.stderr, flush=True))
        keys, made = api_keys(args, serves_http=args.http_port is not None)
    except KeyFileError as e:
        return _error(str(e))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s exo-spec coordinator: %(message)s")
    try:
        return asyncio.run(serve(args, key, keys, made))
    except KeyboardInterrupt:
        return 0


async def serve(args, key: ClusterKey, keys: ApiKeys, made_api_key: str | None) -> int:
    state_dir = (args.state_dir or default_state_dir()).expanduser().resolve()
    try:
        coordinator = Coordinator(args.host, args.port, key=key, api_keys=keys,
                                  peers=args.peer,
                                  mdns=not args.no_mdns, heartbeat_s=args.heartbeat,
                                  lost_after_s=args.lost_after, http_port=args.http_port,
                                  http_host=args.http_host, max_queue=args.max_queue,
                                  default_max_tokens=args.max_tokens_default,
                                  state_dir=state_dir)
    except StateDirError as e:
        return _error(str(e))
    logging.getLogger(__name__).info("coordinator %s, state in %s",
                                     coordinator.store.coordinator_id, state_dir)
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
    if made_api_key:
        print(f"exo-spec coordinator: API key (made now; --api-key or --api-key-file sets "
              f"yours): {made_api_key}", file=sys.stderr, flush=True)
    await until_stopped()
    logging.getLogger(__name__).info("stopping")
    await coordinator.stop()
    return 0
