"""A real cluster on 127.0.0.1: an ``exo-spec coordinator`` process and two
``exo-spec worker`` processes wired with ``--peer`` (no multicast), driven through
the sync and async clients and the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import MODEL_DIR, admin_channel
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mlx_lm.sample_utils import make_logits_processors

from exo_spec.auth.key_file import load_key
from exo_spec.cli import main
from exo_spec.client import AsyncClient, Client
from exo_spec.coordinator.discovery import SERVICE_TYPE, MdnsDiscovery
from exo_spec.coordinator.registry import Registry
from exo_spec.coordinator.states import NodeState
from exo_spec.local_cluster import COORDINATOR_LINE, WORKER_LINE, Background
from exo_spec.prompt import encode_prompt
from exo_spec.status import StatusError
from exo_spec.v1 import inference_pb2, worker_pb2, worker_pb2_grpc
from exo_spec.worker.advertise import SERVICE_TYPE as ADVERTISED

from decoders import loaded
from reference import greedy_reference

PROMPT = "def heappush(heap, item):"
MAX_TOKENS = 12
LONG = 4000  # a job that runs until it is stopped (most of the context of 4096)
STATS_KEYS = ["mode", "num_draft", "drafted", "accepted", "prompt_tokens", "cached_prompt_tokens",
              "generation_tokens", "ttft_s", "acceptance_rate", "tokens_per_round", "prompt_tps",
              "decode_tps"]


def with_model_dir(args: tuple[str, ...]) -> tuple[str, ...]:
    """A worker's ``args`` and, unless they name their own, the folder every test writes
    its checkpoints in as its ``--model-dir`` (``conftest.MODEL_DIR``)."""
    return args if "--model-dir" in args else (*args, "--model-dir", os.environ[MODEL_DIR])


def start_worker(tmp: Path, node_id: str, port: int = 0, *args: str) -> tuple[Background, int]:
    """``--mdns`` in ``args``: advertise (on 127.0.0.1), else ``--no-mdns``."""
    mdns = "--mdns" in args
    args = tuple(a for a in args if a != "--mdns") + (() if mdns else ("--no-mdns",))
    args = with_model_dir(args)
    w = Background(tmp / f"{node_id}-{time.monotonic_ns()}.log", "worker", "--host",
                   "127.0.0.1", "--port", str(port), "--node-id", node_id, *args)
    return w, int(w.wait_for(WORKER_LINE).group(2))


class Cluster:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        (self.w0, p0), (self.w1, p1) = (start_worker(tmp, "w0"),
                                        start_worker(tmp, "w1", 0, "--memory-gb", "3"))
        self.worker_ports = {"w0": p0, "w1": p1}
        self.coordinator = Background(tmp / "coordinator.log", "coordinator", "--host",
                                      "127.0.0.1", "--port", "0", "--no-mdns",
                                      "--peer", f"127.0.0.1:{p0}", "--peer", f"127.0.0.1:{p1}")
        port = self.coordinator.wait_for(COORDINATOR_LINE).group(1)
        self.address = f"127.0.0.1:{port}"
        self.client = Client(self.address)
        wait_until(lambda: ready_ids(self.client) == ["w0", "w1"], 30)

    def log(self) -> str:
        return self.coordinator.log.read_text()

    def stop(self) -> None:
        self.client.close()
        self.coordinator.stop()
        self.w0.stop()
        self.w1.stop()


def wait_until(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def ready_ids(client: Client) -> list[str]:
    return [n.id for n in client.nodes() if n.state == inference_pb2.NODE_STATE_READY]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.stop()


@pytest.fixture(scope="module")
def reference(checkpoints) -> list[int]:
    model = loaded(checkpoints.llama)
    return greedy_reference(model.model, encode_prompt(model.tokenizer, PROMPT), MAX_TOKENS)


def run(client: Client, checkpoints, **options):
    """Token ids as streamed, the token events, and the Finished result."""
    options.setdefault("max_tokens", MAX_TOKENS)
    streamed, chunks, finished, accepted = [], 0, None, None
    for event in client.generate(str(checkpoints.llama), PROMPT, **options):
        kind = event.WhichOneof("event")
        if kind == "accepted":
            assert accepted is None and not streamed
            accepted = event.accepted
        elif kind == "tokens":
            streamed.extend(event.tokens.token_ids)
            chunks += 1
        elif kind == "finished":
            finished = event.finished
    assert accepted is not None and accepted.state == inference_pb2.JOB_STATE_QUEUED
    return streamed, chunks, finished, accepted.id


def refused(call) -> StatusError:
    with pytest.raises(StatusError) as info:
        call()
    return info.value


def streamed_text(checkpoints, tokens: list[int]) -> str:
    """What a local ``exo-spec generate`` writes to stdout as the tokens arrive."""
    detok = loaded(checkpoints.llama).tokenizer.detokenizer
    detok.reset()
    text = []
    for t in tokens:
        detok.add_token(t)
        text.append(detok.last_segment)
    detok.finalize()
    return "".join(text) + detok.last_segment


def exo_spec(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exo_spec.cli", *args], capture_output=True,
                          text=True, timeout=timeout)


# -- the cluster ---------------------------------------------------------------------------


def test_nodes_health_and_reflection(cluster):
    nodes = {n.id: n for n in cluster.client.nodes()}
    assert sorted(nodes) == ["w0", "w1"]
    for node_id, n in nodes.items():
        assert (n.host, n.port) == ("127.0.0.1", cluster.worker_ports[node_id])
        assert n.state == inference_pb2.NODE_STATE_READY and n.backend in ("metal", "cuda", "cpu")
        assert n.chip and n.version and n.last_seen.seconds > 0
    assert nodes["w1"].memory_bytes == 3 * 2**30
    status = cluster.client.status()
    assert (status.ready_nodes, status.lost_nodes) == (2, 0)
    assert status.memory_bytes == sum(n.memory_bytes for n in nodes.values())
    def services(channel) -> set[str]:
        answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return {s.name for a in answers for s in a.list_services_response.service}

    with grpc.insecure_channel(cluster.address) as channel:  # health answers anyone
        for service in ("", "exo_spec.v1.Inference"):
            check = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service))
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as outsider:  # reflection only the key's holders
            services(channel)
        assert outsider.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with admin_channel(cluster.address) as channel:
        assert "exo_spec.v1.Inference" in services(channel)
    assert "node w0 found at" in cluster.log() and "node w1 found at" in cluster.log()


def test_mdns_discovery_on_loopback(tmp_path):
    """A worker advertising on 127.0.0.1 is found by the browser on that interface,
    and is LOST as soon as it says goodbye and stops answering."""
    node_id = f"mdns-{uuid.uuid4().hex[:8]}"
    worker, port = start_worker(tmp_path, node_id, 0, "--mdns")

    async def go():
        registry = Registry(key=load_key())
        discovery = MdnsDiscovery(registry, "127.0.0.1")
        await discovery.start()
        try:
            async def state() -> NodeState | None:
                node = registry.get(node_id)
                return node.state if node else None

            deadline = time.monotonic() + 20
            while await state() != NodeState.READY:
                assert time.monotonic() < deadline, "the worker was not found by mDNS"
                await asyncio.sleep(0.1)
            found = registry.get(node_id)
            await asyncio.to_thread(worker.stop)
            stopped = time.monotonic()
            while await state() != NodeState.LOST:
                assert time.monotonic() - stopped < 10, "the worker was not lost"
                await asyncio.sleep(0.1)
            return found.address, found.source
        finally:
            await discovery.stop()
            await registry.close()

    try:
        assert asyncio.run(go()) == (f"127.0.0.1:{port}", "mdns")
    finally:
        worker.stop()
    assert SERVICE_TYPE == ADVERTISED


# -- jobs ----------------------------------------------------------------------------------


def test_one_node_job_matches_greedy_reference(cluster, checkpoints, reference):
    drafter = str(checkpoints.drafter)
    streamed, chunks, finished, job_id = run(cluster.client, checkpoints, draft_model=drafter,
                                             num_draft=2)
    assert streamed == list(finished.token_ids) == reference
    assert chunks > 1  # tokens stream round by round
    assert finished.finish_reason == "length"
    assert (finished.stats.mode, finished.stats.generation_tokens) == ("draft", MAX_TOKENS)
    assert finished.stats.drafted > 0 and finished.stats.decode_tps > 0
    job = cluster.client.get_job(job_id)
    assert job.state == inference_pb2.JOB_STATE_SUCCEEDED and len(job.node_ids) == 1
    assert list(job.result.token_ids) == reference and job.generated_tokens == MAX_TOKENS
    # the warm placement serves the next job of the same model, drafter and spec
    second = cluster.client.complete(str(checkpoints.llama), PROMPT, draft_model=drafter,
                                     max_tokens=MAX_TOKENS)
    assert list(second.token_ids) == reference
    placements = [p for p in cluster.client.placements() if p.id == job.placement_id]
    assert len(placements) == 1 and placements[0].jobs_served == 2
    p = placements[0]
    assert (p.mode, p.draft_model, p.state) == ("draft", drafter,
                                                inference_pb2.PLACEMENT_STATE_READY)
    assert [(r.layer_start, r.layer_end) for r in p.ranks] == [(0, 2)]
    node = {n.id: n for n in cluster.client.nodes()}[job.node_ids[0]]
    assert p.id in node.placement_ids and node.used_bytes >= p.ranks[0].memory_bytes > 0


def test_a_job_across_two_nodes_matches_greedy_reference(cluster, checkpoints, reference):
    streamed, _, finished, job_id = run(cluster.client, checkpoints, nodes=2)
    assert streamed == list(finished.token_ids) == reference
    assert (finished.stats.ranks, finished.stats.parallel) == (2, "pipeline")
    assert finished.stats.bytes_per_round > 0
    job = cluster.client.get_job(job_id)
    placement = {p.id: p for p in cluster.client.placements()}[job.placement_id]
    assert sorted(job.node_ids) == ["w0", "w1"]
    assert [(r.rank, r.layer_start, r.layer_end) for r in placement.ranks] == \
        [(0, 0, 1), (1, 1, 2)]
    assert placement.ranks[0].node_id == "w0"  # the node with more free memory leads
    assert f"job {job_id} running on w0, w1" in cluster.log()


def test_concurrent_jobs_share_a_warm_placement_one_at_a_time(cluster, checkpoints,
                                                               reference):
    async def go():
        async with AsyncClient(cluster.address) as client:
            async def one():
                stages, tokens = [], []
                async for event in client.generate(str(checkpoints.llama), PROMPT,
                                                   max_tokens=MAX_TOKENS, nodes=2):
                    if event.HasField("progress"):
                        stages.append(event.progress.stage)
                    elif event.HasField("tokens"):
                        tokens.extend(event.tokens.token_ids)
                return stages, tokens

            return await asyncio.gather(*(one() for _ in range(3)))

    results = asyncio.run(go())
    assert all(tokens == reference for _, tokens in results)
    assert any("queued" in stages for stages, _ in results)  # waited for the placement
    assert len([p for p in cluster.client.placements() if len(p.ranks) == 2]) == 1


def test_cancel_mid_stream_then_the_next_job_works(cluster, checkpoints, reference):
    events = cluster.client.generate(str(checkpoints.llama), PROMPT, max_tokens=LONG, nodes=2)
    job_id = next(events).accepted.id
    tokens = 0
    finished = None
    with pytest.raises(StatusError) as info:
        for event in events:
            if event.HasField("tokens"):
                tokens += 1
                if tokens == 2:
                    job = cluster.client.cancel_job(job_id)
                    assert job.state == inference_pb2.JOB_STATE_CANCELLED
            elif event.HasField("finished"):
                finished = event.finished
    assert info.value.code == grpc.StatusCode.CANCELLED
    assert "cancelled by CancelJob" in info.value.message
    assert finished.finish_reason == "cancelled" and len(finished.token_ids) >= 1
    job = cluster.client.get_job(job_id)
    assert job.state == inference_pb2.JOB_STATE_CANCELLED
    assert job.result.finish_reason == "cancelled"
    assert cluster.client.cancel_job(job_id).state == inference_pb2.JOB_STATE_CANCELLED
    streamed, _, _, _ = run(cluster.client, checkpoints, nodes=2)
    assert streamed == reference


def test_a_caller_that_leaves_cancels_its_job(cluster, checkpoints, reference):
    events = cluster.client.generate(str(checkpoints.llama), PROMPT, max_tokens=LONG, nodes=2)
    job_id = next(events).accepted.id
    for event in events:
        if event.HasField("tokens"):
            break
    events.close()  # the caller stops reading: the call, and the job, are cancelled
    wait_until(lambda: cluster.client.get_job(job_id).state ==
               inference_pb2.JOB_STATE_CANCELLED, 20)
    assert "the caller cancelled" in cluster.client.get_job(job_id).error
    assert run(cluster.client, checkpoints, nodes=2)[0] == reference


def test_the_callers_deadline(cluster, checkpoints, reference):
    start = time.monotonic()
    e = refused(lambda: run(cluster.client, checkpoints, max_tokens=LONG, nodes=2, timeout=3))
    assert e.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 10
    wait_until(lambda: any(j.error == "the caller's deadline passed" for j in
                           cluster.client.list_jobs([inference_pb2.JOB_STATE_CANCELLED])), 10)
    assert not cluster.client.list_jobs([inference_pb2.JOB_STATE_RUNNING])
    assert run(cluster.client, checkpoints, nodes=2)[0] == reference


# -- bad input -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def huge(checkpoints, tmp_path_factory) -> Path:
    """The llama with a sparse 1 TiB weight file beside it (a whole one: a header that
    says so, and that many bytes): too big for any node."""
    path = tmp_path_factory.mktemp("huge")
    for f in checkpoints.llama.iterdir():
        (path / f.name).symlink_to(f)
    header = json.dumps({"padding": {"dtype": "U8", "shape": [2**40],
                                     "data_offsets": [0, 2**40]}}).encode()
    with open(path / "model-padding.safetensors", "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + 2**40)
    return path


INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("model, options, code, message", [
    ("", {}, INVALID, "no model given"),
    ("llama", {"temperature": -1}, INVALID, "temperature must be >= 0"),
    ("llama", {"temperature": float("nan")}, INVALID, "temperature must be >= 0"),
    ("llama", {"top_p": 1.5}, INVALID, "top_p must be in (0, 1]"),
    ("llama", {"top_p": -0.5}, INVALID, "top_p must be in (0, 1]"),
    ("llama", {"top_k": -1}, INVALID, "top_k must be >= 0"),
    ("llama", {"min_p": 2}, INVALID, "min_p must be in [0, 1]"),
    ("llama", {"max_tokens": 2**21}, INVALID, "max_tokens must be <="),
    ("llama", {"num_draft": 1000}, INVALID, "num_draft must be <="),
    ("llama", {"spec": "none", "draft_model": "drafter"}, INVALID, "contradict"),
    ("llama", {"spec": "none", "num_draft": 2}, INVALID, "contradict"),
    ("llama", {"spec": "mtp", "draft_model": "drafter"}, INVALID, "exclusive"),
    ("llama", {"nodes": 3}, grpc.StatusCode.FAILED_PRECONDITION,
     "3 nodes were asked for but only 2 are ready"),
    ("/no/such/model", {}, INVALID, "model /no/such/model is not inside node w"),
    ("nobody/no-such-model", {}, grpc.StatusCode.NOT_FOUND,
     "no node can find nobody/no-such-model: w0: model nobody/no-such-model not found on "
     "node w0: not in its Hugging Face cache, and downloads are off"),
    ("llama", {"draft_model": "no-such-drafter"}, grpc.StatusCode.NOT_FOUND,
     "drafter no-such-drafter not found on node w1"),
    ("llama", {"draft_model": "foreign_drafter"}, INVALID, "vocabulary"),
    ("llama", {"spec": "mtp"}, grpc.StatusCode.FAILED_PRECONDITION, "has no MTP heads"),
    ("huge", {}, grpc.StatusCode.RESOURCE_EXHAUSTED, "does not fit on 2 nodes"),
    ("huge", {"nodes": 1}, grpc.StatusCode.RESOURCE_EXHAUSTED, "on one node"),
])
def test_bad_requests_get_the_right_status(cluster, checkpoints, huge, model, options, code,
                                           message):
    paths = {"llama": checkpoints.llama, "huge": huge, "drafter": checkpoints.drafter,
             "foreign_drafter": checkpoints.foreign_drafter}
    if "draft_model" in options:
        options["draft_model"] = str(paths.get(options["draft_model"], options["draft_model"]))
    options = {"max_tokens": MAX_TOKENS, **options}
    e = refused(lambda: cluster.client.complete(str(paths.get(model, model)), PROMPT, **options))
    assert (e.code, message in e.message) == (code, True), e.message


def test_a_prompt_longer_than_the_context_is_invalid(cluster, checkpoints, reference):
    e = refused(lambda: cluster.client.complete(str(checkpoints.llama), PROMPT * 600,
                                                draft_model=str(checkpoints.drafter)))
    assert e.code == grpc.StatusCode.OUT_OF_RANGE and "longer than the model's context" in e.message
    failed = cluster.client.list_jobs([inference_pb2.JOB_STATE_FAILED])
    assert any("longer than the model's context" in j.error for j in failed)


def test_unknown_jobs_and_the_coordinator_keeps_serving(cluster, checkpoints, reference):
    for call in (cluster.client.get_job, cluster.client.cancel_job):
        e = refused(lambda call=call: call("no-such-job"))
        assert (e.code, e.message) == (grpc.StatusCode.NOT_FOUND, "no job no-such-job")
    assert refused(lambda: cluster.client.get_job("")).code == INVALID
    streamed, _, _, _ = run(cluster.client, checkpoints, draft_model=str(checkpoints.drafter))
    assert streamed == reference
    assert cluster.coordinator.proc.poll() is None


# -- clients and CLI -----------------------------------------------------------------------


def test_async_client(cluster, checkpoints, reference):
    async def go():
        async with AsyncClient(cluster.address) as client:
            finished = await client.complete(str(checkpoints.llama), PROMPT,
                                             max_tokens=MAX_TOKENS, nodes=2)
            chunks = [e async for e in client.generate(
                str(checkpoints.llama), PROMPT, max_tokens=MAX_TOKENS, nodes=2)
                if e.HasField("tokens")]
            with pytest.raises(StatusError) as info:
                await client.get_job("no-such-job")
            return (finished, chunks, await client.nodes(), await client.list_jobs(),
                    await client.placements(), await client.status(), info.value)

    finished, chunks, nodes, jobs, placements, status, error = asyncio.run(go())
    assert list(finished.token_ids) == reference
    assert [t for c in chunks for t in c.tokens.token_ids] == reference
    assert sorted(n.id for n in nodes) == ["w0", "w1"]
    assert jobs and placements and status.ready_nodes == 2
    assert error.code == grpc.StatusCode.NOT_FOUND


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``exo-spec ARGS`` in this process: exit status, stdout, stderr."""
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_generate(cluster, checkpoints, reference, capsys):
    base = ["--coordinator", cluster.address, "--model", str(checkpoints.llama),
            "--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS)]
    out = exo_spec("generate", *base, "--draft-model", str(checkpoints.drafter), "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["tokens"] == reference and result["finish_reason"] == "length"
    assert result["text"] == loaded(checkpoints.llama).tokenizer.decode(reference)
    assert list(result["stats"]) == STATS_KEYS and result["stats"]["mode"] == "draft"
    assert result["stats"]["num_draft"] is None  # adaptive, as a local run prints it
    code, out, err = cli(capsys, "generate", *base, "--nodes", "2", "--json")
    assert list(json.loads(out)["stats"]) == STATS_KEYS + [
        "ranks", "parallel", "bytes_per_round", "messages_per_round"]
    code, out, err = cli(capsys, "generate", *base, "--nodes", "2")  # streams, as locally
    assert (code, out) == (0, streamed_text(checkpoints, reference) + "\n")
    assert err.startswith("mode=none accepted=0/0")
    for flags, status, line in [
        (["--nodes", "3"], 2,
         "exo-spec generate: error: FAILED_PRECONDITION: 3 nodes were asked for but only 2 "
         "are ready"),
        (["--model", "nobody/no-such-model"], 2,
         "exo-spec generate: error: NOT_FOUND: no node can"),
        (["--local-ranks", "2"], 2,
         "exo-spec generate: error: --local-ranks does not apply with --coordinator"),
        (["--split", "1,1"], 2, "exo-spec generate: error: --split does not apply"),
        (["--quantize", "8"], 2, "exo-spec generate: error: --quantize does not apply"),
        (["--coordinator", "127.0.0.1:1"], 1, "exo-spec generate: error: UNAVAILABLE: "),
    ]:
        code, out, err = cli(capsys, "generate", *base, *flags)
        assert (code, out, err.count("\n")) == (status, "", 1), err
        assert err.startswith(line), err


def test_cli_generate_carries_penalties_stop_strings_and_logprobs(cluster, checkpoints,
                                                                  reference, capsys):
    """The cluster decodes with the flags a local run takes: the penalized greedy tokens
    are mlx-lm's with the same logits processors, cut before the stop string."""
    model = loaded(checkpoints.llama)
    penalized = greedy_reference(model.model, encode_prompt(model.tokenizer, PROMPT),
                                 MAX_TOKENS, logits_processors=make_logits_processors(
                                     presence_penalty=1.0, presence_context_size=8,
                                     logit_bias={74: 0.5}))
    full, stop = model.tokenizer.decode(penalized), "self"
    assert penalized[0] != reference[0] and 0 < full.index(stop)
    code, out, err = cli(capsys, "generate", "--coordinator", cluster.address,
                         "--model", str(checkpoints.llama), "--prompt", PROMPT,
                         "--max-tokens", str(MAX_TOKENS), "--draft-model",
                         str(checkpoints.drafter), "--num-draft", "3",
                         "--presence-penalty", "1", "--penalty-context-size", "8",
                         "--logit-bias", "74=0.5", "--stop", stop, "--logprobs", "2", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert (result["finish_reason"], result["text"]) == ("stop", full[:full.index(stop)])
    kept = result["tokens"]
    assert kept == penalized[:len(kept)] and model.tokenizer.decode(kept).endswith(stop)
    assert [lp["token_id"] for lp in result["logprobs"]] == kept
    assert all(len(lp["top"]) == 2 and lp["logprob"] <= 0 for lp in result["logprobs"])


def test_cli_nodes_and_jobs(cluster, checkpoints, reference, capsys):
    at = ["--coordinator", cluster.address]
    code, out, _ = cli(capsys, "nodes", *at)
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["ID", "ADDRESS", "STATE", "LEASE", "BACKEND",
                                              "CHIP", "MEMORY", "GiB", "PLACEMENTS"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["w0", f"127.0.0.1:{cluster.worker_ports['w0']}", "READY"],
        ["w1", f"127.0.0.1:{cluster.worker_ports['w1']}", "READY"]]
    nodes = json.loads(cli(capsys, "nodes", *at, "--json")[1])["nodes"]
    assert [(n["id"], n["state"]) for n in nodes] == [("w0", "ready"), ("w1", "ready")]
    assert nodes[1]["memory_bytes"] == 3 * 2**30

    cluster.client.complete(str(checkpoints.llama), PROMPT, max_tokens=MAX_TOKENS)
    jobs = json.loads(cli(capsys, "jobs", *at, "--json")[1])["jobs"]
    last = jobs[-1]
    assert last["state"] == "succeeded" and last["result"]["tokens"] == reference
    code, out, _ = cli(capsys, "jobs", "show", last["id"], *at)
    assert f"id: {last['id']}" in out and "state: succeeded" in out
    code, out, _ = cli(capsys, "jobs", "cancel", last["id"], *at, "--json")
    assert json.loads(out)["state"] == "succeeded"  # a finished job is returned unchanged
    code, out, _ = cli(capsys, "jobs", *at, "--state", "succeeded")
    assert out.splitlines()[0].split()[:2] == ["ID", "STATE"] and last["id"] in out
    assert cli(capsys, "jobs", "show", "nope", *at) == \
        (2, "", "exo-spec jobs: error: NOT_FOUND: no job nope\n")
    assert cli(capsys, "jobs", "cancel", *at) == \
        (2, "", "exo-spec jobs: error: jobs cancel needs a job ID\n")


# -- a worker that disappears (last: it kills one) -------------------------------------


def test_a_lost_worker_fails_its_job_and_leaves_the_ready_set(cluster, checkpoints, reference):
    events = cluster.client.generate(str(checkpoints.llama), PROMPT, max_tokens=LONG, nodes=2)
    job_id = next(events).accepted.id
    with pytest.raises(StatusError) as info:
        for event in events:
            if event.HasField("tokens") and cluster.w1.proc.poll() is None:
                cluster.w1.proc.kill()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert re.search(r"placement p-\w+ on w0, w1 failed: .* \(node w1 not answering\)"
                     r"|node w1 was lost", info.value.message), info.value.message
    job = cluster.client.get_job(job_id)
    assert job.state == inference_pb2.JOB_STATE_FAILED and job.error == info.value.message
    wait_until(lambda: ready_ids(cluster.client) == ["w0"], 30)
    lost = {n.id: n for n in cluster.client.nodes()}["w1"]
    assert lost.state == inference_pb2.NODE_STATE_LOST and not lost.placement_ids
    assert "node w1 lost at" in cluster.log()
    assert all("w1" not in [r.node_id for r in p.ranks] for p in cluster.client.placements())
    e = refused(lambda: run(cluster.client, checkpoints, nodes=2))
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert run(cluster.client, checkpoints)[0] == reference  # w0 still serves

    # the same worker comes back on its port: READY again, and serves again
    cluster.w1, _ = start_worker(cluster.tmp, "w1", cluster.worker_ports["w1"],
                                 "--memory-gb", "3")
    wait_until(lambda: ready_ids(cluster.client) == ["w0", "w1"], 30)
    assert "node w1 ready again" in cluster.log()
    assert run(cluster.client, checkpoints, nodes=2)[0] == reference


def test_the_coordinator_stops_cleanly_and_releases_its_placements(cluster):
    assert cluster.client.placements()
    cluster.coordinator.stop()
    assert cluster.coordinator.proc.returncode == 0 and "stopping" in cluster.log()
    for port in cluster.worker_ports.values():
        with admin_channel(f"127.0.0.1:{port}") as channel:
            info = worker_pb2_grpc.WorkerControlStub(channel).GetInfo(
                worker_pb2.GetInfoRequest(), timeout=10)
        assert list(info.placement_ids) == []
