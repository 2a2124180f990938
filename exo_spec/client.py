"""A typed client for a coordinator's ``exo_spec.v1.Inference`` API, blocking
(``Client``) and asyncio (``AsyncClient``).

    with Client("head.local:50151") as c:
        for event in c.generate("mlx-community/...", "Write a haiku", max_tokens=64):
            if event.HasField("tokens"):
                print(event.tokens.text, end="", flush=True)
        print(c.nodes())

Every call proves the cluster key (``key``, by default the one in the user's key
file: ``exo_spec.auth.key_file``) or brings an API key (``api_key``), whose caller
sees only its own jobs. Messages are the generated protobuf classes
(``exo_spec.v1``). Every error is an ``exo_spec.status.StatusError`` carrying the
gRPC status code and the coordinator's message.
Leaving a ``generate`` loop early (break, an exception, closing the iterator)
cancels the call, and with it the job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import TypedDict, Unpack

import grpc

from .auth.grpc_client import Credential, aio_channel, channel
from .auth.key_file import ClusterKey, load_key
from .sampling import NO_PENALTIES, Penalties
from .spec_mode import SpecMode
from .status import StatusError
from .v1 import common_pb2, inference_pb2, inference_pb2_grpc

DEFAULT_PORT = 50151
UNARY_TIMEOUT_S = 30.0


def no_result() -> StatusError:
    """What a Generate stream that ended without its ``finished`` event raises."""
    return StatusError(grpc.StatusCode.UNKNOWN, "the stream ended without a result")


class GenerateOptions(TypedDict, total=False):
    draft_model: str
    spec: str  # a SpecMode: "auto", "mtp", "none", "lookup" or "lookup_mtp"
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int | None
    num_draft: int  # 0 is adaptive
    ignore_chat_template: bool
    nodes: int  # 0 lets the coordinator choose
    messages: list[dict]  # [{"role": ..., "content": ...}], instead of the prompt
    stop: list[str]
    penalties: Penalties
    logprobs: int | None  # with each token, its logprob and this many alternatives


def generate_request(model: str, prompt: str, *, draft_model: str = "",
                     spec: str = SpecMode.AUTO, max_tokens: int = 256,
                     temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                     min_p: float = 0.0, seed: int | None = None, num_draft: int = 0,
                     ignore_chat_template: bool = False, nodes: int = 0,
                     messages: Sequence[dict] = (), stop: Sequence[str] = (),
                     penalties: Penalties = NO_PENALTIES,
                     logprobs: int | None = None) -> inference_pb2.GenerateRequest:
    """``prompt`` is ignored (send "") when ``messages`` are given."""
    try:
        mode = SpecMode(spec)
    except ValueError:
        raise ValueError(f"spec must be one of {', '.join(SpecMode)}, got {spec!r}") from None
    return inference_pb2.GenerateRequest(
        model=model, draft_model=draft_model or "", spec=mode.to_proto(), nodes=nodes,
        decode=common_pb2.Decode(
            prompt=prompt, max_tokens=max_tokens, num_draft=num_draft or 0,
            ignore_chat_template=ignore_chat_template,
            sampling=common_pb2.Sampling(temperature=temperature, top_p=top_p, top_k=top_k,
                                         min_p=min_p, seed=seed),
            messages=[common_pb2.ChatMessage(role=m["role"], content=m["content"])
                      for m in messages],
            stop=list(stop), penalties=_penalties(penalties),
            logprobs=logprobs is not None, top_logprobs=logprobs or 0))


def _penalties(p: Penalties) -> common_pb2.Penalties:
    return common_pb2.Penalties(**asdict(p))


def address(target: str) -> str:
    """"host" gets the default port; "host:port" and "[v6]:port" stay as they are."""
    if target.startswith("[") or target.count(":") == 1:
        return target
    return f"[{target}]:{DEFAULT_PORT}" if ":" in target else f"{target}:{DEFAULT_PORT}"


def _finished(events: Iterable[inference_pb2.GenerateEvent]) -> common_pb2.Finished:
    for event in events:
        if event.HasField("finished"):
            return event.finished
    raise no_result()


def credential(key: ClusterKey | None, api_key: str | None) -> Credential:
    """``api_key`` if given, else ``key``, else the key in the user's key file
    (``key_file.KeyFileError`` when there is none)."""
    return api_key or key or load_key()


class Client:
    def __init__(self, target: str, *, key: ClusterKey | None = None,
                 api_key: str | None = None, timeout: float | None = UNARY_TIMEOUT_S):
        """``target``: the coordinator's "host:port"; ``key``, ``api_key``: who calls
        (``credential``); ``timeout``: seconds for each call other than ``generate``
        (which has its own)."""
        self.timeout = timeout
        self._channel = channel(address(target), credential(key, api_key))
        self._stub = inference_pb2_grpc.InferenceStub(self._channel)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def generate(self, model: str, prompt: str, *, timeout: float | None = None,
                 **options: Unpack[GenerateOptions]) -> Iterator[inference_pb2.GenerateEvent]:
        """The job's events: ``accepted``, ``progress``, ``tokens``..., ``finished``.
        ``timeout``: a deadline for the whole job (DEADLINE_EXCEEDED cancels it)."""
        return self.stream(generate_request(model, prompt, **options), timeout=timeout)

    def complete(self, model: str, prompt: str, *, timeout: float | None = None,
                 **options: Unpack[GenerateOptions]) -> common_pb2.Finished:
        """Run a job to its end and return its result."""
        return _finished(self.generate(model, prompt, timeout=timeout, **options))

    def stream(self, request: inference_pb2.GenerateRequest, *,
               timeout: float | None = None) -> Iterator[inference_pb2.GenerateEvent]:
        call = self._stub.Generate(request, timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as e:
            raise StatusError.from_rpc(e) from None
        finally:
            call.cancel()

    def _unary(self, method, request):
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise StatusError.from_rpc(e) from None

    def get_job(self, job_id: str) -> inference_pb2.Job:
        return self._unary(self._stub.GetJob, inference_pb2.GetJobRequest(job_id=job_id))

    def list_jobs(self, states: Iterable[int] = ()) -> list[inference_pb2.Job]:
        """``states``: ``inference_pb2.JOB_STATE_*`` values; all jobs when empty."""
        return list(self._unary(self._stub.ListJobs,
                                inference_pb2.ListJobsRequest(states=states)).jobs)

    def cancel_job(self, job_id: str) -> inference_pb2.Job:
        return self._unary(self._stub.CancelJob, inference_pb2.CancelJobRequest(job_id=job_id))

    def nodes(self) -> list[inference_pb2.Node]:
        return list(self._unary(self._stub.ListNodes, inference_pb2.ListNodesRequest()).nodes)

    def placements(self) -> list[inference_pb2.Placement]:
        return list(self._unary(self._stub.ListPlacements,
                                inference_pb2.ListPlacementsRequest()).placements)

    def status(self) -> inference_pb2.ClusterStatus:
        return self._unary(self._stub.GetClusterStatus, inference_pb2.GetClusterStatusRequest())


class AsyncClient:
    """``Client`` for asyncio: the same methods, awaited (``generate`` is an async
    iterator: to leave it early and cancel the job at once, iterate it inside
    ``contextlib.aclosing``)."""

    def __init__(self, target: str, *, key: ClusterKey | None = None,
                 api_key: str | None = None, timeout: float | None = UNARY_TIMEOUT_S):
        self.timeout = timeout
        self._channel = aio_channel(address(target), credential(key, api_key))
        self._stub = inference_pb2_grpc.InferenceStub(self._channel)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def generate(self, model: str, prompt: str, *, timeout: float | None = None,
                 **options: Unpack[GenerateOptions]
                 ) -> AsyncIterator[inference_pb2.GenerateEvent]:
        return self.stream(generate_request(model, prompt, **options), timeout=timeout)

    async def complete(self, model: str, prompt: str, *, timeout: float | None = None,
                       **options: Unpack[GenerateOptions]) -> common_pb2.Finished:
        async for event in self.generate(model, prompt, timeout=timeout, **options):
            if event.HasField("finished"):
                return event.finished
        raise no_result()

    async def stream(self, request: inference_pb2.GenerateRequest, *,
                     timeout: float | None = None
                     ) -> AsyncIterator[inference_pb2.GenerateEvent]:
        call = self._stub.Generate(request, timeout=timeout)
        try:
            async for event in call:
                yield event
        except grpc.aio.AioRpcError as e:
            raise StatusError.from_rpc(e) from None
        finally:
            call.cancel()

    async def _unary(self, method, request):
        try:
            return await method(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as e:
            raise StatusError.from_rpc(e) from None

    async def get_job(self, job_id: str) -> inference_pb2.Job:
        return await self._unary(self._stub.GetJob, inference_pb2.GetJobRequest(job_id=job_id))

    async def list_jobs(self, states: Iterable[int] = ()) -> list[inference_pb2.Job]:
        response = await self._unary(self._stub.ListJobs,
                                     inference_pb2.ListJobsRequest(states=states))
        return list(response.jobs)

    async def cancel_job(self, job_id: str) -> inference_pb2.Job:
        return await self._unary(self._stub.CancelJob,
                                 inference_pb2.CancelJobRequest(job_id=job_id))

    async def nodes(self) -> list[inference_pb2.Node]:
        return list((await self._unary(self._stub.ListNodes,
                                       inference_pb2.ListNodesRequest())).nodes)

    async def placements(self) -> list[inference_pb2.Placement]:
        return list((await self._unary(self._stub.ListPlacements,
                                       inference_pb2.ListPlacementsRequest())).placements)

    async def status(self) -> inference_pb2.ClusterStatus:
        return await self._unary(self._stub.GetClusterStatus,
                                 inference_pb2.GetClusterStatusRequest())


STATS = ("mode", "num_draft", "drafted", "accepted", "prompt_tokens", "cached_prompt_tokens",
         "generation_tokens", "ttft_s", "acceptance_rate", "tokens_per_round", "prompt_tps",
         "decode_tps")
GROUP_STATS = ("ranks", "parallel", "bytes_per_round", "messages_per_round")


def stats_dict(stats: common_pb2.Stats) -> dict:
    """The ``stats`` object of ``exo-spec generate --json``, as a local run prints it."""
    d = {name: getattr(stats, name) for name in STATS}
    d["num_draft"] = d["num_draft"] or None
    if stats.ranks > 1:
        d.update({name: getattr(stats, name) for name in GROUP_STATS})
    if stats.resumed_tokens:  # the job resumed on another placement after a node was lost
        d["resumed_tokens"] = stats.resumed_tokens
    if stats.batch_size > 1:  # its placement decoded it together with other jobs
        d["batch_size"] = stats.batch_size
    return d
