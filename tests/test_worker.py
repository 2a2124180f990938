"""`exo-spec worker` as a coordinator sees it: real worker processes on real ports,
driven through the generated WorkerControl stub; placements over one worker and
over a real ring group of two."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from exo_spec import __version__, frames
from exo_spec.local_cluster import WORKER_LINE, Background
from exo_spec.models.synthetic_gemma4 import write_gemma4_text
from exo_spec.prompt import encode_prompt
from exo_spec.sampling import Sampling
from exo_spec.spec_mode import SpecMode
from exo_spec.status import StatusError
from exo_spec.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from exo_spec.worker.messages import (
    Cancel,
    Finished,
    Job,
    LoadConfig,
    Progress,
    Ready,
    Tokens,
    from_frame,
    to_frame,
)
from exo_spec.worker.model_info import inspect_model

from decoders import loaded
from reference import greedy_reference

PROMPT = "def heappush(heap, item):"
MAX_TOKENS = 12
LONG = 100_000  # a job that runs until it is stopped
GROUP_TIMEOUT = ("--group-timeout", "5")  # the tiny models' forwards take milliseconds
SERVICE_TYPE = "_exo-spec._tcp.local."  # what coordinators browse for


class Worker:
    def __init__(self, log: Path, node_id: str, *args: str):
        self.node_id = node_id
        self.process = Background(log, "worker", "--host", "127.0.0.1", "--node-id", node_id,
                                  *args)
        self.proc, self.log = self.process.proc, log
        self.port = 0

    def wait_serving(self) -> Worker:
        self.port = int(self.process.wait_for(WORKER_LINE).group(2))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = worker_pb2_grpc.WorkerControlStub(self.channel)
        return self

    def host(self) -> str:
        """A ring address on this worker, as a coordinator builds one."""
        return f"127.0.0.1:{self.stub.ReservePort(worker_pb2.ReservePortRequest()).port}"

    def stop(self) -> None:
        self.process.stop()


def start_workers(tmp: Path, *specs: tuple[str, ...]) -> list[Worker]:
    workers = [Worker(tmp / f"{spec[0]}.log", *spec) for spec in specs]
    return [w.wait_serving() for w in workers]


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("workers")
    started = start_workers(tmp, ("w0", "--no-mdns", *GROUP_TIMEOUT),
                            ("w1", "--no-mdns", "--memory-gb", "3", *GROUP_TIMEOUT))
    yield started
    for w in started:
        w.stop()


def load(worker: Worker, placement_id: str, model: Path, rank: int = 0,
         hosts: list[str] | None = None, draft_model: Path | None = None,
         spec: int = common_pb2.SPEC_MODE_AUTO) -> list[worker_pb2.LoadEvent]:
    return list(worker.stub.LoadPlacement(worker_pb2.LoadPlacementRequest(
        placement_id=placement_id, model=str(model), rank=rank, spec=spec,
        hosts=hosts or ["127.0.0.1:0"], draft_model=str(draft_model or ""))))


def load_group(workers: list[Worker], placement_id: str, model: Path, **kwargs) -> list[str]:
    """Every rank's LoadPlacement at once, as the ring only forms with all of them."""
    hosts = [w.host() for w in workers]
    modes: list[str] = [""] * len(workers)
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            events = load(workers[r], placement_id, model, r, hosts, **kwargs)
            modes[r] = events[-1].ready_mode
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return modes


def release(workers: list[Worker], placement_id: str) -> None:
    for w in workers:
        w.stub.ReleasePlacement(worker_pb2.ReleasePlacementRequest(placement_id=placement_id))


def decode(prompt: str = PROMPT, max_tokens: int = MAX_TOKENS, **kwargs) -> common_pb2.Decode:
    return common_pb2.Decode(prompt=prompt, max_tokens=max_tokens, **kwargs)


def run(worker: Worker, placement_id: str, job: common_pb2.Decode, timeout: float = 60):
    """The job's token ids as streamed, and its Finished event."""
    streamed: list[int] = []
    for event in worker.stub.RunJob(worker_pb2.RunJobRequest(
            placement_id=placement_id, job_id=uuid.uuid4().hex, decode=job), timeout=timeout):
        if event.HasField("tokens"):
            streamed.extend(event.tokens.token_ids)
        else:
            return streamed, event.finished
    raise AssertionError("the stream ended without a Finished event")


def reference(path: Path, max_tokens: int = MAX_TOKENS) -> list[int]:
    model = loaded(path)
    return greedy_reference(model.model, encode_prompt(model.tokenizer, PROMPT), max_tokens)


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


# -- the node ----------------------------------------------------------------------


def test_get_info_health_and_memory_override(workers):
    w0, w1 = workers
    info = w0.stub.GetInfo(worker_pb2.GetInfoRequest())
    assert (info.node_id, info.version, info.host, info.port) == \
        ("w0", __version__, "127.0.0.1", w0.port)
    assert info.backend in ("metal", "cuda", "cpu") and info.chip and info.memory_bytes > 0
    assert w1.stub.GetInfo(worker_pb2.GetInfoRequest()).memory_bytes == 3 * 2**30
    health = health_pb2_grpc.HealthStub(w0.channel)
    for service in ("", "exo_spec.v1.WorkerControl"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING


# -- InspectModel ------------------------------------------------------------------


def test_inspect_model(workers, checkpoints):
    stub = workers[0].stub
    info = stub.InspectModel(worker_pb2.InspectModelRequest(
        model=str(checkpoints.llama), draft_model=str(checkpoints.drafter)))
    assert (info.mode, info.draft_model, info.num_layers, info.context_length) == \
        ("draft", str(checkpoints.drafter), 2, 4096)
    size = (checkpoints.llama / "model.safetensors").stat().st_size
    draft_size = (checkpoints.drafter / "model.safetensors").stat().st_size
    assert (info.weight_bytes, info.draft_bytes) == (size, draft_size)
    mtp = stub.InspectModel(worker_pb2.InspectModelRequest(model=str(checkpoints.qwen3_5)))
    assert (mtp.mode, mtp.draft_model, mtp.draft_bytes) == ("mtp", "", 0)
    plain = stub.InspectModel(worker_pb2.InspectModelRequest(
        model=str(checkpoints.qwen3_5), spec=common_pb2.SPEC_MODE_NONE))
    assert plain.mode == "none"


def test_inspect_model_says_which_models_cannot_span_nodes(workers, checkpoints, tmp_path):
    gemma = write_gemma4_text(tmp_path / "gemma4", checkpoints.tokenizer, seed=3)
    stub = workers[0].stub
    assert stub.InspectModel(worker_pb2.InspectModelRequest(
        model=str(checkpoints.llama))).split_refusal == ""
    info = stub.InspectModel(worker_pb2.InspectModelRequest(model=str(gemma)))
    assert "gemma4_text cannot be split across ranks" in info.split_refusal
    with pytest.raises(StatusError) as e:
        inspect_model(str(gemma), None, SpecMode.NONE, "w0", ranks=2)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be split" in e.value.message


@pytest.mark.parametrize("model, draft_model, spec, code, message", [
    ("/no/such/model", "", 0, grpc.StatusCode.NOT_FOUND, "/no/such/model not found on node w0"),
    ("nobody/no-such-model", "", 0, grpc.StatusCode.NOT_FOUND, "nobody/no-such-model not found"),
    ("llama", "/no/such/drafter", 0, grpc.StatusCode.NOT_FOUND, "/no/such/drafter not found"),
    ("llama", "foreign_drafter", 0, grpc.StatusCode.INVALID_ARGUMENT,
     "does not share the target's vocabulary"),
    ("llama", "", common_pb2.SPEC_MODE_MTP, grpc.StatusCode.FAILED_PRECONDITION,
     "has no MTP heads"),
])
def test_inspect_model_refusals(workers, checkpoints, model, draft_model, spec, code, message):
    def path(name: str) -> str:
        return str(getattr(checkpoints, name)) if hasattr(checkpoints, name) else name

    start = time.monotonic()
    got, details = status_of(lambda: workers[0].stub.InspectModel(
        worker_pb2.InspectModelRequest(model=path(model), draft_model=path(draft_model),
                                       spec=spec), timeout=30))
    assert (got, time.monotonic() - start < 10) == (code, True)
    assert message in details


# -- one node ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def single(workers, checkpoints):
    events = load(workers[0], "single", checkpoints.llama, draft_model=checkpoints.drafter)
    assert [e.progress for e in events[:-1]] == ["loading target and drafter"]
    assert events[-1].ready_mode == "draft"
    yield "single"
    release(workers[:1], "single")


def test_single_node_jobs_match_greedy_reference(workers, checkpoints, single):
    for num_draft in (2, 0):  # the second job reuses the loaded weights
        streamed, finished = run(workers[0], single, decode(num_draft=num_draft))
        assert streamed == list(finished.token_ids) == reference(checkpoints.llama)
        assert finished.finish_reason == "length"
        stats = finished.stats
        assert (stats.mode, stats.ranks, stats.generation_tokens) == ("draft", 1, MAX_TOKENS)
        assert stats.prompt_tokens > 0 and stats.decode_tps > 0
    assert stats.num_draft == 0  # adaptive
    assert finished.text == loaded(checkpoints.llama).tokenizer.decode(streamed)
    assert single in workers[0].stub.GetInfo(worker_pb2.GetInfoRequest()).placement_ids


def test_bad_jobs_are_invalid_argument(workers, single):
    long = decode(prompt=PROMPT * 600)
    code, details = status_of(lambda: run(workers[0], single, long))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "longer than the model's context" in details
    hot = decode(sampling=common_pb2.Sampling(temperature=-1))
    code, details = status_of(lambda: run(workers[0], single, hot))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "temperature" in details
    _, finished = run(workers[0], single, decode())  # the placement still serves
    assert finished.finish_reason == "length"


def test_unknown_placements(workers):
    code, _ = status_of(lambda: run(workers[0], "nowhere", decode()))
    assert code == grpc.StatusCode.NOT_FOUND
    release(workers, "nowhere")  # releasing is idempotent


def test_the_runner_finishes_a_cancelled_job_and_exits_when_stdin_closes(checkpoints):
    """The runner's own protocol, under the worker: messages in, messages out."""
    config = LoadConfig(model=str(checkpoints.llama), draft_model=None, spec=SpecMode.AUTO,
                        split=None, ranks=1, group_timeout_s=60)
    runner = subprocess.Popen([sys.executable, "-m", "exo_spec.worker.runner", config.to_json()],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def send(message) -> None:
        frames.write(runner.stdin, to_frame(message))

    def receive():
        return from_frame(frames.read(runner.stdout))

    try:
        assert [type(receive()) for _ in range(2)] == [Progress, Ready]
        send(Job(job_id="j", prompt=PROMPT, max_tokens=LONG, sampling=Sampling(), seed=None,
                 num_draft=None, ignore_chat_template=False))
        assert type(receive()) is Tokens
        send(Cancel(job_id="j"))
        while type(message := receive()) is Tokens:
            pass
        assert (type(message), message.finish_reason) == (Finished, "cancelled")
        assert 0 < len(message.token_ids) < LONG
        runner.stdin.close()
        assert runner.wait(10) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


# -- a group of two workers ------------------------------------------------------


@pytest.fixture(scope="module")
def group(workers, checkpoints):
    modes = load_group(workers, "group", checkpoints.llama, draft_model=checkpoints.drafter)
    assert modes == ["draft", "none"]  # rank 1 holds no proposer
    yield "group"
    release(workers, "group")


def test_group_jobs_in_a_row_match_greedy_reference(workers, checkpoints, group):
    for _ in range(2):  # the second job starts from a reset group
        streamed, finished = run(workers[0], group, decode(num_draft=2))
        assert streamed == list(finished.token_ids) == reference(checkpoints.llama)
        stats = finished.stats
        assert (stats.mode, stats.ranks, stats.parallel) == ("draft", 2, "pipeline")
        assert stats.drafted > 0 and stats.bytes_per_round > 0
    code, _ = status_of(lambda: run(workers[1], group, decode()))
    assert code == grpc.StatusCode.FAILED_PRECONDITION  # jobs go to rank 0's worker


def _runner_cpu_seconds(workers: list[Worker]) -> float:
    """CPU time used so far by the runner processes of ``workers``."""
    parents = {str(w.proc.pid) for w in workers}
    ticks = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] in parents:  # ppid
            ticks += int(fields[11]) + int(fields[12])  # utime + stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _wait_until_idle(workers, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        before = _runner_cpu_seconds(workers)
        time.sleep(0.5)
        if _runner_cpu_seconds(workers) - before < 0.1:
            return
        assert time.monotonic() < deadline, "the runners never went idle"


def test_an_idle_group_waits_off_the_ring(workers, checkpoints, group):
    """Between jobs the follower parks on rank 0's doorbell instead of spinning in the
    ring backend's poll loop (a core per follower before), and the next job wakes it."""
    run(workers[0], group, decode(num_draft=2))
    time.sleep(0.5)
    before = _runner_cpu_seconds(workers)
    time.sleep(3)
    assert _runner_cpu_seconds(workers) - before < 0.3
    streamed, _ = run(workers[0], group, decode(num_draft=2))
    assert streamed == reference(checkpoints.llama)


def test_parked_followers_stop_when_rank_0_goes(workers, checkpoints):
    """A follower waiting off the ring reads end of file when rank 0's runner exits,
    and its runner ends instead of waiting for ever."""
    load_group(workers, "parked", checkpoints.llama, spec=common_pb2.SPEC_MODE_NONE)
    try:
        run(workers[0], "parked", decode())
        _wait_until_idle(workers)  # rank 0 parks its followers after the job's last event
        release(workers[:1], "parked")
        deadline = time.monotonic() + 20
        while "rank 0 closed its doorbell" not in workers[1].log.read_text():
            assert time.monotonic() < deadline, workers[1].log.read_text()[-2000:]
            time.sleep(0.2)
    finally:
        release(workers, "parked")


def test_a_cancelled_job_leaves_the_group_usable(workers, checkpoints, group):
    call = workers[0].stub.RunJob(worker_pb2.RunJobRequest(
        placement_id=group, job_id="to-cancel", decode=decode(max_tokens=LONG, num_draft=2)))
    assert next(call).HasField("tokens")
    call.cancel()
    start = time.monotonic()
    streamed, finished = run(workers[0], group, decode(num_draft=2), timeout=30)
    assert time.monotonic() - start < 30
    assert streamed == reference(checkpoints.llama)
    assert "job to-cancel cancelled" in workers[0].log.read_text()


def test_group_with_mtp_matches_greedy_reference(workers, checkpoints):
    modes = load_group(workers, "mtp", checkpoints.qwen3_5, spec=common_pb2.SPEC_MODE_MTP)
    try:
        assert modes[0] == "mtp"
        streamed, finished = run(workers[0], "mtp", decode(num_draft=2))
        assert streamed == reference(checkpoints.qwen3_5)
        assert finished.stats.mode == "mtp" and finished.stats.drafted > 0
    finally:
        release(workers, "mtp")


def test_a_lost_rank_is_unavailable(workers, checkpoints, tmp_path):
    """Rank 0 fails the job with the ring's error, or (when the ring leaves a
    collective waiting) after the group timeout."""
    doomed = start_workers(tmp_path, ("doomed", "--no-mdns", *GROUP_TIMEOUT))[0]
    try:
        load_group([workers[0], doomed], "lost", checkpoints.llama,
                   spec=common_pb2.SPEC_MODE_NONE)
        call = workers[0].stub.RunJob(worker_pb2.RunJobRequest(
            placement_id="lost", job_id="lost-job", decode=decode(max_tokens=LONG)),
            timeout=60)
        assert next(call).HasField("tokens")
        doomed.proc.kill()
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - start < 20
        code, details = status_of(lambda: run(workers[0], "lost", decode()))
        assert code == grpc.StatusCode.UNAVAILABLE and "failed" in details
    finally:
        doomed.stop()
        release(workers[:1], "lost")
    assert "lost" not in workers[0].stub.GetInfo(worker_pb2.GetInfoRequest()).placement_ids


# -- mDNS --------------------------------------------------------------------------


def test_a_worker_is_found_by_mdns_on_loopback(tmp_path):
    """Multicast works on this box's loopback interface; the worker advertises on
    the interface of --host only, so the browser listens there too."""
    node_id = f"test-node.{uuid.uuid4().hex[:8]}"
    worker = start_workers(tmp_path, (node_id,))[0]
    try:
        info, removed = asyncio.run(_browse(f"{node_id}.{SERVICE_TYPE}", worker.stop))
    finally:
        worker.stop()
    props = {k.decode(): v.decode() for k, v in info.properties.items()}
    assert props["node_id"] == node_id and props["version"] == __version__
    assert props["port"] == str(worker.port) and info.port == worker.port
    assert props["backend"] in ("metal", "cuda", "cpu") and props["chip"]
    assert int(props["memory_bytes"]) > 0
    assert info.parsed_addresses() == ["127.0.0.1"]
    assert removed  # a stopped worker says goodbye


async def _browse(wanted: str, stop_worker) -> tuple[AsyncServiceInfo, bool]:
    zc = AsyncZeroconf(interfaces=["127.0.0.1"])
    added, removed = asyncio.Event(), asyncio.Event()

    def on_change(zeroconf, service_type, name, state_change):  # zeroconf passes keywords
        if name == wanted:
            (added if state_change.name == "Added" else removed).set()

    browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[on_change])
    try:
        await asyncio.wait_for(added.wait(), 15)
        info = AsyncServiceInfo(SERVICE_TYPE, wanted)
        assert await info.async_request(zc.zeroconf, 5000)
        await asyncio.to_thread(stop_worker)
        try:
            await asyncio.wait_for(removed.wait(), 10)
        except TimeoutError:
            pass
        return info, removed.is_set()
    finally:
        await browser.async_cancel()
        await zc.async_close()
