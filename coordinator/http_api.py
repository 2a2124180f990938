"""The OpenAI-compatible HTTP API of a coordinator: Starlette on uvicorn, on the
coordinator's own event loop, beside its gRPC server (see ``docs/SERVING.md``).

- ``POST /v1/chat/completions``, ``POST /v1/completions``: a request is read into
  a ``GenerateRequest`` (``openai_shapes``) and then runs exactly as
  ``Inference.Generate`` runs it: ``api.job_request``, ``scheduler.submit``, the
  job's events. Without ``stream`` the answer is the whole completion; with it,
  server-sent events, each round's accepted text as it comes. A streamed request
  that fails before its first token gets an HTTP error like an unstreamed one; one
  that fails later ends its stream with an ``error`` event.
- ``GET /v1/models``: the models of the coordinator's placements, then those any
  ready worker reports (``ListModels``).
- ``GET /health``: 200 while the coordinator runs.

Every request but ``/health`` brings an API key (``http_auth``), else 401; a job
records the caller its key stands for as its owner.

A client that disconnects stops its job, CANCELLED, whether it waits in the queue,
for the model to load, or reads the stream. Errors are OpenAI's error object, the
HTTP status mapped from the gRPC status in one table (``ERRORS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

import grpc
import uvicorn
from grpc import StatusCode
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..auth.callers import ApiKeys
from ..serving import address
from ..status import StatusError
from ..v1 import common_pb2, worker_pb2
from .api import job_request
from .http_auth import BearerAuth
from .job import End, Job
from .openai_shapes import (
    ChatShape,
    CompletionShape,
    Defaults,
    FieldError,
    Parsed,
    chat_request,
    completion_request,
)
from .placement_lifecycle import PlacementLifecycle
from .registry import Registry
from .scheduler import WAITING, Scheduler
from .states import JobState

log = logging.getLogger(__name__)

# gRPC status -> (HTTP status, OpenAI error type, error code). Anything else is 500.
ERRORS: dict[StatusCode, tuple[int, str, str]] = {
    StatusCode.INVALID_ARGUMENT: (400, "invalid_request_error", "invalid_argument"),
    StatusCode.FAILED_PRECONDITION: (400, "invalid_request_error", "failed_precondition"),
    StatusCode.UNAUTHENTICATED: (401, "authentication_error", "unauthenticated"),
    StatusCode.NOT_FOUND: (404, "not_found_error", "model_not_found"),
    StatusCode.OUT_OF_RANGE: (413, "invalid_request_error", "context_length_exceeded"),
    StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error", "resource_exhausted"),
    StatusCode.CANCELLED: (499, "cancelled_error", "cancelled"),
    StatusCode.UNAVAILABLE: (503, "service_unavailable_error", "unavailable"),
    StatusCode.DEADLINE_EXCEEDED: (504, "timeout_error", "deadline_exceeded"),
}
SERVER_ERROR = (500, "server_error")
JOB_HEADER = "x-exo-spec-job"  # the job's id, for `exo-spec jobs show|cancel`
LIST_MODELS_TIMEOUT_S = 5.0
START_TIMEOUT_S = 10.0
SHUTDOWN_S = 5.0  # for responses still being written once every job has ended
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def error_body(e: StatusError) -> dict:
    _, kind, code = ERRORS.get(e.code, (*SERVER_ERROR, e.code.name.lower()))
    return {"error": {"message": e.message, "type": kind, "param": getattr(e, "param", None),
                      "code": code}}


def http_status(code: StatusCode) -> int:
    return ERRORS.get(code, SERVER_ERROR)[0]


def error_response(e: StatusError, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(e), status_code=http_status(e.code), headers=headers)


def _sse(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False,
                                                           separators=(",", ":"))
    return f"data: {text}\n\n".encode()


class _Server(uvicorn.Server):
    def capture_signals(self):  # the coordinator's own process handles its signals
        return contextlib.nullcontext()


class _ClientCall:
    """The job of one HTTP request, stopped (CANCELLED) when its client disconnects."""

    def __init__(self, job: Job, receive: Callable):
        self.job = job
        self._watch = asyncio.create_task(self._watch_client(receive),
                                          name=f"HTTP client of job {job.id}")

    async def _watch_client(self, receive) -> None:
        # The body is read: the next message is the disconnect (or the response's end).
        while (await receive())["type"] != "http.disconnect":
            pass
        self.stop("the HTTP client disconnected")

    def stop(self, why: str) -> None:
        if not self.job.finished:
            self.job.stop(StatusError(StatusCode.CANCELLED, why))

    def close(self) -> None:
        self._watch.cancel()
        self.stop("the HTTP response ended")  # one it no longer follows (cut off, or a fault)


class _EventStream(Response):
    """Server-sent events from ``events``; the job stops if the stream ends first."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[bytes], call: _ClientCall):
        self.events, self.call = events, call
        self.status_code, self.background = 200, None
        self.init_headers({**SSE_HEADERS, JOB_HEADER: call.job.id})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            async for data in self.events:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the connection is gone; the watcher stops the job
            pass
        finally:
            await self.events.aclose()
            self.call.close()


class HttpApi:
    def __init__(self, registry: Registry, placements: PlacementLifecycle,
                 scheduler: Scheduler, host: str, port: int, *, api_keys: ApiKeys,
                 default_model: str = "", default_draft_model: str = ""):
        self.registry = registry
        self.placements = placements
        self.scheduler = scheduler
        self.host, self.port = host, port
        self.defaults = Defaults(default_model, default_draft_model)
        self.started_at = time.time()
        self.app = Starlette(routes=[
            Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
        ], exception_handlers={HTTPException: self._http_error, Exception: self._bug},
            middleware=[Middleware(BearerAuth, api_keys=api_keys, refuse=error_response)])
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        """The API's base URL, as OpenAI clients take it."""
        return f"http://{address(self.host, self.port)}/v1"

    # -- serving ----------------------------------------------------------------------

    def bind(self) -> None:
        """Bind the listening socket (``port`` 0 picks a free one); RuntimeError when
        the address cannot be bound."""
        try:
            family, kind, proto, _, where = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(where)
            except OSError:
                sock.close()
                raise
        except OSError as e:
            raise RuntimeError(f"cannot serve HTTP on {address(self.host, self.port)}: "
                               f"{e}") from None
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        self._socket, self.port = sock, sock.getsockname()[1]

    async def start(self) -> None:
        """Serve on the bound socket; returns once uvicorn accepts connections."""
        if self._socket is None:
            self.bind()
        config = uvicorn.Config(self.app, log_config=None, log_level="warning",
                                access_log=False, lifespan="off", ws="none",
                                timeout_graceful_shutdown=SHUTDOWN_S)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]),
                                         name="HTTP API")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if self._task.done() or time.monotonic() > deadline:
                self._task.cancel()
                why = self._task.done() and not self._task.cancelled() and self._task.exception()
                raise RuntimeError(f"the HTTP API did not start on "
                                   f"{address(self.host, self.port)}"
                                   + (f": {why!r}" if why else ""))
            await asyncio.sleep(0.01)

    def stop_accepting(self) -> None:
        """Take no new connection; the ones open end as their jobs do."""
        if self._server is not None:
            self._server.should_exit = True

    async def stop(self) -> None:
        self.stop_accepting()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await self._task
        if self._socket is not None:
            self._socket.close()

    # -- endpoints ----------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, chat_request, ChatShape)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, completion_request, CompletionShape)

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model, "object": "model", "created": int(self.started_at),
             "owned_by": "exo-spec", "loaded": loaded}
            for model, loaded in (await self.model_ids()).items()]})

    async def health(self, request: Request) -> Response:
        states = [j.state for j in self.scheduler.jobs.values()]
        return JSONResponse({
            "status": "ok", "version": __version__, "ready_nodes": len(self.registry.ready()),
            "placements": len(self.placements.by_id),
            "running_jobs": states.count(JobState.RUNNING),
            "waiting_jobs": sum(s in WAITING for s in states)})

    async def model_ids(self) -> dict[str, bool]:
        """Every model the cluster holds (True) or a ready worker can load (False):
        those of the placements first, then the workers' (``ListModels``), by name."""
        held = dict.fromkeys([p.model for p in self.placements.by_id.values()], True)

        async def listed(node) -> list[str]:
            try:
                answer = await node.stub.ListModels(worker_pb2.ListModelsRequest(),
                                                    timeout=LIST_MODELS_TIMEOUT_S)
            except grpc.aio.AioRpcError as e:
                if e.code() != StatusCode.UNIMPLEMENTED:
                    log.info("ListModels on node %s: %s", node.node_id,
                             StatusError.from_rpc(e).line())
                return []
            return list(answer.models)

        lists = await asyncio.gather(*(listed(n) for n in self.registry.ready()))
        found = dict(held)
        for model in [self.defaults.model] + sorted({m for ms in lists for m in ms}):
            if model:
                found.setdefault(model, False)
        return found

    # -- one job ----------------------------------------------------------------------

    async def _generate(self, http: Request, parse, shape_type) -> Response:
        try:
            try:
                body = json.loads(await http.body())
            except (ValueError, UnicodeDecodeError) as e:
                raise FieldError(None, f"the request body is not valid JSON: {e}") from None
            parsed: Parsed = parse(body, self.defaults)
            asked = job_request(parsed.request, len(self.registry.ready()),
                                owner=http.state.caller.id)
        except StatusError as e:
            return error_response(e)
        job = self.scheduler.submit(asked)
        call = _ClientCall(job, http.receive)
        shape = shape_type(parsed, job.id, job.created)
        headers = {JOB_HEADER: job.id}
        streaming = False
        try:
            if not parsed.stream:
                return await self._whole(job, parsed, shape, headers)
            first = []  # the events up to its first output: an error before it is a status
            while True:
                first.append(item := await job.events.get())
                if isinstance(item, End):
                    if item.error is not None:
                        return error_response(item.error, headers)
                    break
                if item.HasField("tokens") or item.HasField("finished"):
                    break
            streaming = True
            return _EventStream(self._stream(job, shape, first), call)
        finally:
            if not streaming:
                call.close()

    async def _whole(self, job: Job, parsed: Parsed, shape, headers: dict) -> Response:
        finished, logprobs = None, []
        while not isinstance(item := await job.events.get(), End):
            if item.HasField("tokens") and parsed.logprobs:
                logprobs.extend(item.tokens.logprobs)
            elif item.HasField("finished"):
                finished = item.finished
        if item.error is not None:
            return error_response(item.error, headers)
        return JSONResponse(shape.response(finished, logprobs), headers=headers)

    async def _stream(self, job: Job, shape, first: list) -> AsyncIterator[bytes]:
        for chunk in shape.first_chunks():
            yield _sse(chunk)
        finished = common_pb2.Finished()
        while not isinstance(item := first.pop(0) if first else await job.events.get(), End):
            if item.HasField("tokens"):
                if item.tokens.text or item.tokens.logprobs:
                    yield _sse(shape.chunk(item.tokens.text, list(item.tokens.logprobs)))
            elif item.HasField("finished"):
                finished = item.finished
        if item.error is not None:
            yield _sse(error_body(item.error))
        else:
            for chunk in shape.last_chunks(finished):
                yield _sse(chunk)
        yield _sse("[DONE]")

    # -- errors outside a job -------------------------------------------------------------

    async def _http_error(self, request: Request, e: HTTPException) -> Response:
        code = {404: StatusCode.NOT_FOUND, 405: StatusCode.INVALID_ARGUMENT}.get(
            e.status_code, StatusCode.INVALID_ARGUMENT)
        body = error_body(StatusError(code, f"{request.method} {request.url.path}: "
                                            f"{e.detail}"))
        body["error"]["code"] = None
        return JSONResponse(body, status_code=e.status_code)

    async def _bug(self, request: Request, e: Exception) -> Response:
        log.exception("HTTP %s %s", request.method, request.url.path)
        return error_response(StatusError(StatusCode.INTERNAL, f"{type(e).__name__}: {e}"))
