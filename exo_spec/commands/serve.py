"""``exo-spec serve``: one model on this machine behind the OpenAI-compatible HTTP API.

One process and one event loop hold a coordinator (gRPC on ``--grpc-port``, the
HTTP API on ``--host``/``--port``, no mDNS) and a worker on 127.0.0.1 that the
coordinator uses as its one ``--peer``; the model itself loads, as on any worker,
in a runner process of its own. Before it says it serves, it loads the model by
running a one-token job through the same path every request takes, printing each
step on stderr; then it prints ``exo-spec serve: http://HOST:PORT/v1``
(``--verbose`` also logs every node, placement and job event). A request
that names no model gets ``--model`` (and ``--draft-model``). Its worker loads
models as ``exo-spec worker`` does (``worker.model_sources``): from the ``--model-dir``
folders, the Hugging Face hub cache, and the checkpoints ``--model`` and
``--draft-model`` name, which it fetches first when they are Hugging Face ids (a
local path is taken as an absolute one); nothing a request names is downloaded.
SIGINT or SIGTERM
cancels the jobs, releases the model and exits 0; a model that cannot be loaded
exits 2.

Its HTTP requests bring an API key (``--api-key``, ``--api-key-file``, else one made
and printed at start); its gRPC API and its worker take the user's cluster key
(``--key-file``, made on first use), as a coordinator's do, so ``exo-spec jobs``
reaches it with no flag.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from pathlib import Path

from ..auth.key_file import KeyFileError
from .coordinator import (
    DEFAULT_HTTP_PORT,
    add_auth_flags,
    add_job_flags,
    api_keys,
    check_job_flags,
    cluster_key,
)

READY_TIMEOUT_S = 30.0  # for the coordinator's first heartbeat to reach the worker
WARM_UP_PROMPT = "Hello"


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model on this machine over an "
                                     "OpenAI-compatible HTTP API")
    p.add_argument("--model", required=True, help="a Hugging Face id or a local path")
    p.add_argument("--draft-model",
                   help="a drafter sharing the model's tokenizer, for requests that name none")
    p.add_argument("--host", default="127.0.0.1",
                   help="address of the HTTP API and the gRPC API (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_HTTP_PORT,
                   help=f"HTTP port (default: {DEFAULT_HTTP_PORT}; 0 picks a free one)")
    p.add_argument("--grpc-port", type=int, default=0,
                   help="the coordinator's gRPC port, for exo-spec jobs and nodes "
                        "(default: a free one, printed)")
    p.add_argument("--memory-gb", type=float,
                   help="memory budget for models (default: 75%% of physical memory)")
    p.add_argument("--model-dir", action="append", default=[], metavar="DIR",
                   help="a folder of checkpoint directories that requests may also name "
                        "and /v1/models lists (repeatable; the Hugging Face hub cache is "
                        "always listed)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log every node, placement and job event on stderr")
    add_job_flags(p)
    add_auth_flags(p)
    p.set_defaults(run=run)


def _error(message: str) -> int:
    print(f"exo-spec serve: error: {message}", file=sys.stderr, flush=True)
    return 2


def _say(message: str) -> None:
    print(f"exo-spec serve: {message}", file=sys.stderr, flush=True)


def run(args) -> int:
    for flag, port in (("--port", args.port), ("--grpc-port", args.grpc_port)):
        if not 0 <= port < 65536:
            return _error(f"{flag} must be a port number, got {port}")
    if args.memory_gb is not None and not 0 < args.memory_gb < math.inf:  # NaN too
        return _error(f"--memory-gb must be > 0, got {args.memory_gb}")
    if wrong := check_job_flags(args):
        return _error(wrong)
    args.model_dir = [Path(d).expanduser().resolve() for d in args.model_dir]
    if missing := [d for d in args.model_dir if not d.is_dir()]:
        return _error(f"--model-dir {missing[0]} is not a directory")
    from ..models.load import ModelLoadError, exists, resolve

    try:  # what the command line names is fetched now, and its worker may load it
        model = resolve(args.model)
        draft = resolve(args.draft_model) if args.draft_model else None
    except ModelLoadError as e:
        return _error(str(e).splitlines()[0])
    if exists(args.model):  # requests name it as given here, so by an absolute path
        args.model = str(model.resolve())
    if draft and exists(args.draft_model):
        args.draft_model = str(draft.resolve())
    args.model_dir += [path for path in (model, draft) if path]
    try:
        key = cluster_key(args, _say)
        keys, made = api_keys(args, serves_http=True)
    except KeyFileError as e:
        return _error(str(e))
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s exo-spec serve: %(message)s")
    try:
        return asyncio.run(_serve(args, key, keys, made))
    except KeyboardInterrupt:
        return 0


async def _serve(args, key, keys, made_api_key: str | None) -> int:
    from ..coordinator.server import Coordinator
    from ..serving import address, until_stopped
    from ..worker.model_sources import ModelSources
    from ..worker.node import this_node
    from ..worker.runner.watchdog import DEFAULT_TIMEOUT_S
    from ..worker.server import worker_server

    stopped = asyncio.create_task(until_stopped())
    await asyncio.sleep(0)  # its signal handlers are in place from here on
    node = this_node("local", "127.0.0.1", args.memory_gb)
    worker, control, placements = worker_server(node, key, DEFAULT_TIMEOUT_S,
                                                ModelSources.of(args.model_dir))
    control.port = worker.add_insecure_port("127.0.0.1:0")
    await worker.start()
    coordinator = Coordinator(
        args.host, args.grpc_port, key=key, api_keys=keys,
        peers=[f"127.0.0.1:{control.port}"], mdns=False,
        http_port=args.port, http_host=args.host,
        max_queue=args.max_queue, default_max_tokens=args.max_tokens_default,
        default_model=args.model, default_draft_model=args.draft_model or "")
    try:
        try:
            grpc_port = await coordinator.start()
        except Exception as e:  # a port in use, an address not on this machine
            return _error(str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}")
        _say(f"gRPC API on {address(args.host, grpc_port)}")
        warm_up = asyncio.create_task(_load(coordinator, args.model, args.draft_model or ""))
        await asyncio.wait([warm_up, stopped], return_when=asyncio.FIRST_COMPLETED)
        if not warm_up.done():  # stopped while loading
            warm_up.cancel()
            await asyncio.gather(warm_up, return_exceptions=True)
            return 0
        if error := warm_up.result():
            return _error(error)
        if made_api_key:
            _say(f"API key (made now; --api-key or --api-key-file sets yours): "
                 f"{made_api_key}")
        _say(coordinator.http.url)
        await stopped
        logging.getLogger(__name__).info("stopping")
        return 0
    finally:
        stopped.cancel()
        await coordinator.stop()
        await placements.release_all()
        await worker.stop(grace=1.0)


async def _load(coordinator, model: str, draft_model: str) -> str | None:
    """Load ``model`` by running a one-token job, as a request would; why it failed, if
    it did."""
    import time

    from grpc import StatusCode

    from ..auth.callers import ADMIN_ID
    from ..coordinator.api import job_request
    from ..coordinator.job import End
    from ..status import StatusError
    from ..v1 import common_pb2, inference_pb2

    deadline = time.monotonic() + READY_TIMEOUT_S
    while not coordinator.registry.ready():
        if time.monotonic() > deadline:
            return "the local worker did not answer the coordinator"
        await asyncio.sleep(0.05)
    request = inference_pb2.GenerateRequest(model=model, draft_model=draft_model,
                                            decode=common_pb2.Decode(
                                                prompt=WARM_UP_PROMPT, max_tokens=1,
                                                ignore_chat_template=True))
    try:
        job = coordinator.scheduler.submit(job_request(request, 1, owner=ADMIN_ID))
    except StatusError as e:
        return e.line()
    try:
        while not isinstance(item := await job.events.get(), End):
            if item.HasField("progress"):
                _say(item.progress.message)
        return item.error.line() if item.error else None
    finally:
        if not job.finished:
            job.stop(StatusError(StatusCode.CANCELLED, "exo-spec serve is stopping"))
