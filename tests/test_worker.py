"""`exo-spec worker` as a coordinator sees it: real worker processes on real ports,
driven through the generated WorkerControl stub; placements over one worker and
over a real ring group of two."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import grpc
import pytest
from conftest import admin_channel
from grpc_health.v1 import health_pb2, health_pb2_grpc
from test_cluster import with_model_dir
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
from exo_spec.worker.model_sources import ModelSources

from decoders import loaded
from reference import greedy_reference

PROMPT = "def heappush(heap, item):"
MAX_TOKENS = 12
LONG = 4000  # a job that runs until it is stopped (most of the context of 4096)
GROUP_TIMEOUT = ("--group-timeout", "5")  # the tiny models' forwards take milliseconds
SERVICE_TYPE = "_exo-spec._tcp.local."  # what coordinators browse for


class Worker:
    def __init__(self, log: Path, node_id: str, *args: str):
        self.node_id = node_id
        self.process = Background(log, "worker", "--host", "127.0.0.1", "--node-id", node_id,
                                  *with_model_dir(args))
        self.proc, self.log = self.process.proc, log
        self.port = 0

    def wait_serving(self) -> Worker:
        self.port = int(self.process.wait_for(WORKER_LINE).group(2))
        self.channel = admin_channel(f"127.0.0.1:{self.port}")
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
    started = start_workers(tmp, ("w0", "--no-mdns", "--prefix-cache-mb", "64", *GROUP_TIMEOUT),
                            ("w1", "--no-mdns", "--memory-gb", "3", "--prefix-cache-mb", "0",
                             *GROUP_TIMEOUT))
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
        inspect_model(str(gemma), None, SpecMode.NONE, "w0", sources=ModelSources.of([tmp_path]),
                      ranks=2)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be split" in e.value.message


@pytest.mark.parametrize("model, draft_model, spec, code, message", [
    ("/no/such/model", "", 0, grpc.StatusCode.INVALID_ARGUMENT,
     "model /no/such/model is not inside node w0's model directories"),
    ("nobody/no-such-model", "", 0, grpc.StatusCode.NOT_FOUND, "nobody/no-such-model not found"),
    ("llama", "no-such-drafter", 0, grpc.StatusCode.NOT_FOUND,
     "drafter no-such-drafter not found on node w0"),
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


def test_models_come_only_from_the_model_dirs_and_the_hub_cache(checkpoints, tmp_path,
                                                                 monkeypatch):
    """Paths relative to a model dir or inside one, and ids in the hub cache, are found;
    a path outside one (however it gets there: ``..``, a symlink) is refused in the
    same words whether it exists or not; a model card cannot make the node fetch."""
    models, hub = tmp_path / "models", tmp_path / "hub"
    shutil.copytree(checkpoints.llama, models / "llama")
    (models / "link-out").symlink_to(checkpoints.drafter)
    repo = hub / "models--org--tiny"
    shutil.copytree(checkpoints.drafter, repo / "snapshots" / "abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    shutil.copytree(checkpoints.llama, models / "carded")
    (models / "carded" / "exo_spec_card.json").write_text(
        json.dumps({"drafter_model_ids": ["someone/far-away-drafter"]}))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    sources = ModelSources.of([models])
    for name, found in [("llama", models / "llama"), (str(models / "x" / ".." / "llama"),
                                                      models / "llama"),
                        ("org/tiny", repo / "snapshots" / "abc")]:
        assert sources.locate(name, "n0") == found.resolve()
    for name in ("link-out", "../../" + "/".join(checkpoints.drafter.parts[1:]),
                 str(checkpoints.drafter), "/no/such/model", str(models / ".." / "elsewhere")):
        with pytest.raises(StatusError) as e:
            sources.locate(name, "n0")
        assert (e.value.code, e.value.message) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            f"model {name} is not inside node n0's model directories "
            "(exo-spec worker --model-dir)")
    with pytest.raises(StatusError) as e:
        inspect_model("carded", None, SpecMode.AUTO, "n0", sources=sources)
    assert (e.value.code, e.value.message) == (
        grpc.StatusCode.NOT_FOUND, "drafter someone/far-away-drafter not found on node n0: "
        "not in its Hugging Face cache, and downloads are off (exo-spec worker "
        "--allow-downloads)")


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


@pytest.mark.parametrize("job, code, message", [
    (decode(prompt=PROMPT * 600), grpc.StatusCode.OUT_OF_RANGE,
     "longer than the model's context"),
    (decode(sampling=common_pb2.Sampling(temperature=-1)), grpc.StatusCode.INVALID_ARGUMENT,
     "temperature"),
    (decode(messages=[common_pb2.ChatMessage(role="user", content="hi")]),
     grpc.StatusCode.INVALID_ARGUMENT, "a prompt or messages, not both"),
    (decode(stop=[""]), grpc.StatusCode.INVALID_ARGUMENT, "each must be 1 to 256"),
    (decode(logprobs=True, top_logprobs=21), grpc.StatusCode.INVALID_ARGUMENT,
     "top_logprobs must be <= 20"),
    (decode(penalties=common_pb2.Penalties(logit_bias={100_000: 1.0})),
     grpc.StatusCode.INVALID_ARGUMENT, "outside the vocabulary"),
])
def test_bad_jobs_are_refused(workers, single, job, code, message):
    got, details = status_of(lambda: run(workers[0], single, job))
    assert got == code and message in details, details


@pytest.fixture(scope="module")
def short(workers, checkpoints, tmp_path_factory):
    """The llama with its context cut to 64 tokens, decoding plainly."""
    path = tmp_path_factory.mktemp("short")
    for f in checkpoints.llama.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 64}))
    load(workers[0], "short", path, spec=common_pb2.SPEC_MODE_NONE)
    yield "short"
    release(workers[:1], "short")


def test_max_tokens_and_the_context(workers, short):
    """PROMPT is 10 tokens raw: 6 of them fill 60 of the context's 64, leaving room for 4."""
    near = {"prompt": PROMPT * 6, "ignore_chat_template": True}
    code, details = status_of(lambda: run(workers[0], short, decode(max_tokens=5, **near)))
    assert code == grpc.StatusCode.OUT_OF_RANGE
    assert details == "max_tokens 5 and the prompt's 60 tokens exceed the model's context of 64"
    code, details = status_of(lambda: run(workers[0], short, decode(prompt=PROMPT * 7)))
    assert code == grpc.StatusCode.OUT_OF_RANGE and "longer than the model's context" in details
    _, finished = run(workers[0], short, decode(max_tokens=4, **near))
    assert (finished.finish_reason, len(finished.token_ids)) == ("length", 4)
    _, finished = run(workers[0], short, decode(max_tokens=0, **near))  # the rest: 4
    assert (finished.finish_reason, len(finished.token_ids)) == ("length", 4)
    for job, default, generated in ((near, 3, 3), (near, 9, 4), ({"prompt": "def"}, 9, 9)):
        *_, last = workers[0].stub.RunJob(worker_pb2.RunJobRequest(  # the default caps it
            placement_id=short, decode=decode(max_tokens=0, **job),
            default_max_tokens=default), timeout=60)
        assert (last.finished.finish_reason, len(last.finished.token_ids)) == \
            ("length", generated)


# -- chat, stop strings and logprobs, on a drafter that always agrees ----------------


@pytest.fixture(scope="module")
def twin(workers, checkpoints):
    """The llama drafting for itself: every draft is kept, so with --num-draft 3 each
    round emits 4 tokens."""
    events = load(workers[0], "twin", checkpoints.llama, draft_model=checkpoints.llama)
    assert events[-1].ready_mode == "draft"
    yield "twin"
    release(workers[:1], "twin")


def chunks(worker: Worker, placement_id: str, job: common_pb2.Decode):
    """The job's token chunks as streamed, and its Finished event."""
    events = list(worker.stub.RunJob(worker_pb2.RunJobRequest(
        placement_id=placement_id, job_id=uuid.uuid4().hex, decode=job), timeout=60))
    assert events[-1].HasField("finished")
    return [e.tokens for e in events[:-1]], events[-1].finished


def test_chat_messages_render_with_the_chat_template(workers, checkpoints, twin):
    turns = [("system", "You write Python."), ("user", PROMPT)]
    job = common_pb2.Decode(max_tokens=MAX_TOKENS, num_draft=3, messages=[
        common_pb2.ChatMessage(role=r, content=c) for r, c in turns])
    streamed, finished = run(workers[0], twin, job)
    model = loaded(checkpoints.llama)
    prompt = model.tokenizer.apply_chat_template(
        [{"role": r, "content": c} for r, c in turns], add_generation_prompt=True)
    assert streamed == list(finished.token_ids) == \
        greedy_reference(model.model, list(prompt), MAX_TOKENS)
    assert finished.stats.prompt_tokens == len(prompt)
    assert finished.stats.accepted == finished.stats.drafted > 0


def test_a_stop_string_completing_inside_a_round_ends_the_job_there(workers, checkpoints,
                                                                     twin):
    rounds, _ = chunks(workers[0], twin, decode(max_tokens=40, num_draft=3))
    tokens = [t for r in rounds for t in r.token_ids]
    # The text after each token, as the runner's detokenizer shows it; a stop string of
    # 3 characters that first completes with a token inside a round (not its last).
    detok = loaded(checkpoints.llama).tokenizer.detokenizer
    texts, text = [], ""
    for t in tokens:
        detok.add_token(t)
        text += detok.last_segment
        texts.append(text)
    ends = list(itertools.accumulate(len(r.token_ids) for r in rounds))  # past each round
    cut = next(i for i in range(1, len(tokens))
               if i + 1 not in ends and len(texts[i]) > len(texts[i - 1]) >= 3
               and texts[i].find(texts[i][-3:]) == len(texts[i]) - 3)
    stop = texts[cut][-3:]
    got, finished = chunks(workers[0], twin, decode(max_tokens=40, num_draft=3,
                                                    stop=["never there", stop],
                                                    logprobs=True, top_logprobs=2))
    assert finished.finish_reason == "stop"
    assert [t for r in got for t in r.token_ids] == list(finished.token_ids) == \
        tokens[: cut + 1]
    assert "".join(r.text for r in got) == finished.text == texts[cut][:-3]
    # No round after the one the stop string cut: each round after the first token drafted
    # 3, and the decoder drafted no more.
    last_round = next(i for i, end in enumerate(ends) if end > cut)
    assert len(got) == last_round + 1 and len(rounds[last_round].token_ids) > 1
    assert finished.stats.drafted == 3 * last_round
    assert finished.stats.generation_tokens == cut + 1
    assert all(len(r.logprobs) == len(r.token_ids) for r in got)


def test_logprobs_come_with_every_token(workers, checkpoints, twin):
    got, finished = chunks(workers[0], twin, decode(num_draft=3, logprobs=True,
                                                    top_logprobs=2))
    logprobs = [lp for r in got for lp in r.logprobs]
    assert [lp.token_id for lp in logprobs] == list(finished.token_ids) == \
        reference(checkpoints.llama)
    for lp in logprobs:  # greedy: each token is the likeliest at its position
        assert len(lp.top) == 2 and lp.top[0].token_id == lp.token_id
        assert lp.top[0].logprob == pytest.approx(lp.logprob) and lp.logprob <= 0
        assert lp.top[1].logprob <= lp.top[0].logprob and lp.top[1].token
    text = b"".join(lp.token for lp in logprobs).decode("utf-8", "replace")
    assert text == loaded(checkpoints.llama).tokenizer.decode(finished.token_ids)
    plain, _ = chunks(workers[0], twin, decode(num_draft=3))
    assert all(not r.logprobs for r in plain)


# -- ListModels --------------------------------------------------------------------


def test_a_conversation_s_next_turn_reads_the_prefix_cache(workers, checkpoints):
    """w0 keeps a prefix cache per placement, w1 none: turn 2 of a chat re-sends turn 1,
    which w0 does not prefill again, with the same tokens as w1 and mlx-lm."""
    placements = {w: f"chat-{w.node_id}" for w in workers}
    for w, placement_id in placements.items():
        load(w, placement_id, checkpoints.llama, draft_model=checkpoints.drafter)
    try:
        turn = [common_pb2.ChatMessage(role="user", content=PROMPT)]
        got, turn1_tokens = {}, {}
        for w, placement_id in placements.items():
            _, first = run(w, placement_id, decode(prompt="", num_draft=2, messages=turn))
            assert first.stats.cached_prompt_tokens == 0
            turn1_tokens[w.node_id] = first.stats.prompt_tokens
            turn2 = turn + [common_pb2.ChatMessage(role="assistant", content=first.text),
                            common_pb2.ChatMessage(role="user", content="class Queue:")]
            got[w.node_id] = run(w, placement_id, decode(prompt="", num_draft=2,
                                                         messages=turn2))
        (cached_tokens, cached), (plain_tokens, plain) = got["w0"], got["w1"]
        # The template renders turn 2 as turn 1's prompt and more: a hit at its very end.
        assert cached.stats.cached_prompt_tokens == turn1_tokens["w0"] > 0
        assert plain.stats.cached_prompt_tokens == 0
        model = loaded(checkpoints.llama)
        prompt = model.tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in turn2], add_generation_prompt=True)
        assert cached.stats.prompt_tokens == plain.stats.prompt_tokens == len(prompt)
        assert cached_tokens == plain_tokens == greedy_reference(model.model, list(prompt),
                                                                 MAX_TOKENS)
    finally:
        for w, placement_id in placements.items():
            release([w], placement_id)


def test_list_models_from_the_hub_cache_and_model_dirs(tmp_path, monkeypatch):
    hub, dirs = tmp_path / "hub", [tmp_path / "a", tmp_path / "b"]
    (hub / "models--org--tiny" / "snapshots" / "0123").mkdir(parents=True)
    (hub / "models--org--tiny" / "snapshots" / "0123" / "config.json").write_text("{}")
    (hub / "models--org--partial" / "snapshots").mkdir(parents=True)
    for d, name in ((dirs[0], "zeta"), (dirs[1], "alpha"), (dirs[1], "no-config")):
        (d / name).mkdir(parents=True)
        if name != "no-config":
            (d / name / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    worker = start_workers(tmp_path, ("lister", "--no-mdns", "--model-dir", str(dirs[0]),
                                      "--model-dir", str(dirs[1])))[0]
    try:
        listed = worker.stub.ListModels(worker_pb2.ListModelsRequest()).models
    finally:
        worker.stop()
    assert list(listed) == [str(dirs[0] / "zeta"), str(dirs[1] / "alpha"), "org/tiny"]
    missing = subprocess.run([sys.executable, "-m", "exo_spec.cli", "worker", "--no-mdns",
                              "--model-dir", str(tmp_path / "nowhere")],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "is not a directory" in missing.stderr


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


def test_a_group_s_next_turn_reads_the_prefix_cache(workers, checkpoints, group):
    """Rank 0's worker (w0) keeps a prefix cache, and every rank its own stage's caches:
    turn 2 of a chat prefills only what follows turn 1's prompt, with mlx-lm's tokens."""
    turn = [common_pb2.ChatMessage(role="user", content=PROMPT + " # group")]
    _, first = run(workers[0], group, decode(prompt="", num_draft=2, messages=turn))
    turn2 = turn + [common_pb2.ChatMessage(role="assistant", content=first.text),
                    common_pb2.ChatMessage(role="user", content="class Queue:")]
    streamed, finished = run(workers[0], group, decode(prompt="", num_draft=2, messages=turn2))
    assert finished.stats.cached_prompt_tokens == first.stats.prompt_tokens > 0
    model = loaded(checkpoints.llama)
    prompt = model.tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in turn2], add_generation_prompt=True)
    assert streamed == greedy_reference(model.model, list(prompt), MAX_TOKENS)


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


def _runners_of(worker: Worker) -> list[int]:
    """The pids of ``worker``'s runner processes."""
    runners = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[1] == str(worker.proc.pid):
            runners.append(int(pid))
    return runners


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_holding_a_group_stops_cleanly_on_a_signal(checkpoints, tmp_path, sig):
    """Both workers of a 2-node placement are signalled: each releases its rank (the
    runner reads end of file and exits), stops serving and exits 0, without a C++
    abort at interpreter exit."""
    pair = start_workers(tmp_path, ("s0", "--no-mdns"), ("s1", "--no-mdns"))
    try:
        load_group(pair, "held", checkpoints.llama, spec=common_pb2.SPEC_MODE_NONE)
        run(pair[0], "held", decode())
        runners = [pid for w in pair for pid in _runners_of(w)]
        assert len(runners) == 2
        for w in pair:
            w.proc.send_signal(sig)
        codes = [w.proc.wait(30) for w in pair]
    finally:
        for w in pair:
            w.stop()
    logs = [w.log.read_text() for w in pair]
    assert codes == [0, 0], logs
    assert not any("terminate called" in log or "Traceback" in log for log in logs), logs
    assert not any(Path(f"/proc/{pid}").exists() for pid in runners)


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
        info, removed = asyncio.run(_browse(f"{node_id}@127.0.0.1:{worker.port}.{SERVICE_TYPE}",
                                            worker.stop))
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
