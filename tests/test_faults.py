"""Faults: a job that survives a lost node, hung nodes found within seconds, and
workers that share one node id.

The runner's resume (a job carrying what it emitted before) runs in this process on
a real model; the cluster tests run real ``exo-spec`` processes on 127.0.0.1: a
coordinator with its default heartbeats and three workers wired with ``--peer``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import MODEL_DIR, admin_channel

from exo_spec.auth.key_file import load_key
from exo_spec.client import Client
from exo_spec.coordinator.discovery import MdnsDiscovery
from exo_spec.coordinator.registry import LOST_AFTER_S, NodeRecord, Registry
from exo_spec.coordinator.states import NodeState
from exo_spec.local_cluster import COORDINATOR_LINE, WORKER_LINE, Background
from exo_spec.model_set import load_models
from exo_spec.prompt import encode_prompt
from exo_spec.sampling import Penalties, Sampling
from exo_spec.v1 import inference_pb2, worker_pb2, worker_pb2_grpc
from exo_spec.worker.messages import Finished, Job, Tokens
from exo_spec.worker.runner.job import run_job
from exo_spec.worker.runner.targets import Local

from decoders import loaded
from reference import greedy_reference

PROMPT = "def heappush(heap, item):"
FAILOVER_TOKENS = 400
KILL_AFTER = 50  # streamed tokens, when the failover test kills a node: well inside the job
READY = inference_pb2.NODE_STATE_READY
LOST = inference_pb2.NODE_STATE_LOST


# -- resuming inside the runner ------------------------------------------------------


def _run(job: Job, target: Local) -> tuple[list[Tokens], Finished]:
    sent = []
    run_job(job, target, sent.append, lambda: False)
    *chunks, finished = sent
    assert isinstance(finished, Finished) and all(isinstance(c, Tokens) for c in chunks)
    return chunks, finished


def _cuts(chunks: list[Tokens]) -> list[int]:
    """The token counts after each chunk: where a lost node can leave a job (the
    coordinator holds whole chunks)."""
    counts, n = [], 0
    for c in chunks:
        n += len(c.token_ids)
        counts.append(n)
    return counts


def test_a_resumed_job_goes_on_as_the_uninterrupted_one(checkpoints):
    """A job resumed after any chunk streams exactly the rest of the uninterrupted
    job's tokens, text and logprobs, with penalties seeing the emitted tokens as
    generated and a stop string matching across the cut."""
    target = Local(load_models(str(checkpoints.llama), str(checkpoints.drafter)))
    job = Job(job_id="j", prompt=PROMPT, max_tokens=48, sampling=Sampling(), seed=None,
              num_draft=None, ignore_chat_template=False, top_logprobs=2,
              penalties=Penalties(repetition_penalty=1.3, presence_penalty=0.4))
    chunks, whole = _run(job, target)
    # A stop string whose first occurrence spans a cut, so that part of it was held
    # back when the node was lost.
    text, shown = "".join(c.text for c in chunks), 0
    for cut, c in zip(_cuts(chunks), chunks, strict=True):
        shown += len(c.text)
        stop = text[shown - 2: shown + 3]
        if 0 < cut < len(whole.token_ids) - 4 and len(stop) == 5 \
                and text.find(stop) == shown - 2:
            break
    else:
        pytest.fail(f"no stop string spans a cut of {text!r}")
    for options in ({}, {"stop": [stop]}):
        asked = dataclasses.replace(job, **options)
        chunks, whole = _run(asked, target)
        for cut in _cuts(chunks)[:-1:3]:
            before = chunks[: _cuts(chunks).index(cut) + 1]
            rest, resumed = _run(dataclasses.replace(asked, generated=whole.token_ids[:cut]),
                                 target)
            streamed = [t for c in before + rest for t in c.token_ids]
            assert streamed == whole.token_ids, (options, cut)
            assert "".join(c.text for c in before + rest) == \
                "".join(c.text for c in chunks), (options, cut)
            got = [lp for c in rest for lp in c.logprobs]
            want = [lp for c in chunks for lp in c.logprobs][cut:]
            assert [lp.token_id for lp in got] == [lp.token_id for lp in want]
            assert [lp.logprob for lp in got] == pytest.approx([lp.logprob for lp in want],
                                                               abs=1e-4)
            assert (resumed.token_ids, resumed.text, resumed.finish_reason) == \
                (whole.token_ids, whole.text, whole.finish_reason)
            stats = resumed.stats
            assert stats["resumed_tokens"] == cut
            assert stats["generation_tokens"] == whole.stats["generation_tokens"]
            assert stats["prompt_tokens"] == whole.stats["prompt_tokens"]
    assert (whole.finish_reason, whole.text) == ("stop", text[: shown - 2])
    # lost after its last chunk, before Finished: it ends at once, sending nothing more
    for asked in (job, dataclasses.replace(job, stop=[stop])):
        _, whole = _run(asked, target)
        rest, again = _run(dataclasses.replace(asked, generated=whole.token_ids), target)
        assert (rest, again.finish_reason, again.token_ids, again.text) == \
            ([], whole.finish_reason, whole.token_ids, whole.text)
    # sampled: the emitted tokens stay, the rest is drawn afresh, the budget holds
    sampled = dataclasses.replace(job, sampling=Sampling(temp=1.0), seed=3, top_logprobs=None)
    _, first = _run(sampled, target)
    rest, resumed = _run(dataclasses.replace(sampled, generated=first.token_ids[:20]), target)
    assert resumed.token_ids[:20] == first.token_ids[:20]
    assert [t for c in rest for t in c.token_ids] == resumed.token_ids[20:]
    assert len(resumed.token_ids) <= job.max_tokens


# -- a cluster of three workers ------------------------------------------------------


def _worker(tmp: Path, node_id: str, *args: str) -> Background:
    """A worker on 127.0.0.1 that may load the tests' checkpoints."""
    return Background(tmp / f"{node_id}-{time.monotonic_ns()}.log", "worker", "--host",
                      "127.0.0.1", "--port", "0", "--node-id", node_id,
                      "--model-dir", os.environ[MODEL_DIR], *args)


def _wait_until(condition, timeout: float, poll: float = 0.05) -> float:
    """Seconds until ``condition()`` held."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, "timed out waiting"
        time.sleep(poll)
    return time.monotonic() - start


class Trio:
    """w0 and w1 are the roomiest, so a two-node placement goes on them; w2 is ready
    to take over."""

    def __init__(self, tmp: Path):
        self.workers = {}
        for node_id, gb in (("w0", "8"), ("w1", "8"), ("w2", "4")):
            w = _worker(tmp, node_id, "--no-mdns", "--memory-gb", gb)
            self.workers[node_id] = w, int(w.wait_for(WORKER_LINE).group(2))
        self.coordinator = Background(
            tmp / "coordinator.log", "coordinator", "--host", "127.0.0.1", "--port", "0",
            "--no-mdns", *(f"--peer=127.0.0.1:{port}" for _, port in self.workers.values()))
        port = self.coordinator.wait_for(COORDINATOR_LINE).group(1)
        self.client = Client(f"127.0.0.1:{port}")
        _wait_until(lambda: self.states() == {"w0": READY, "w1": READY, "w2": READY}, 30)

    def states(self) -> dict[str, int]:
        return {n.id: n.state for n in self.client.nodes()}

    def log(self) -> str:
        return self.coordinator.log.read_text()

    def stop(self) -> None:
        self.client.close()
        self.coordinator.stop()
        for w, _ in self.workers.values():
            w.stop()


@pytest.fixture(scope="module")
def trio(tmp_path_factory):
    t = Trio(tmp_path_factory.mktemp("trio"))
    yield t
    t.stop()


def test_a_worker_decoding_answers_its_heartbeats(trio, checkpoints):
    """A long job on w0 and w1 under the default heartbeats: GetInfo stays quick on
    both (the worker holds no weights; its runner decodes) and no node is lost."""
    events = trio.client.generate(str(checkpoints.llama), PROMPT, max_tokens=4000, nodes=2)
    channels = {n: admin_channel(f"127.0.0.1:{trio.workers[n][1]}")
                for n in ("w0", "w1")}
    slowest = 0.0
    try:
        next(e for e in events if e.HasField("tokens"))
        until = time.monotonic() + 3 * LOST_AFTER_S
        while time.monotonic() < until:
            for channel in channels.values():
                asked = time.monotonic()
                worker_pb2_grpc.WorkerControlStub(channel).GetInfo(worker_pb2.GetInfoRequest(),
                                                                   timeout=10)
                slowest = max(slowest, time.monotonic() - asked)
            assert trio.states() == {"w0": READY, "w1": READY, "w2": READY}
            time.sleep(0.1)
        assert next(events).HasField("tokens")  # still decoding
    finally:
        events.close()  # cancels the job
        for channel in channels.values():
            channel.close()
    print(f"\nslowest GetInfo of a worker decoding: {1000 * slowest:.0f} ms "
          f"(a node is lost after {LOST_AFTER_S} s without an answer)")
    assert slowest < LOST_AFTER_S / 2
    assert " lost at " not in trio.log()


def test_a_hung_worker_is_lost_within_3_seconds(trio):
    worker, _ = trio.workers["w2"]
    worker.proc.send_signal(signal.SIGSTOP)
    try:
        took = _wait_until(lambda: trio.states()["w2"] == LOST, 10, poll=0.02)
    finally:
        worker.proc.send_signal(signal.SIGCONT)
    print(f"\na SIGSTOPped worker was lost after {took:.2f} s")
    assert took <= 3.0
    assert re.search(r"node w2 lost at \S+: no heartbeat answered for 2\.\d+s", trio.log())
    _wait_until(lambda: trio.states()["w2"] == READY, 10)
    assert "node w2 ready again" in trio.log()


def test_a_job_resumes_when_a_node_of_its_placement_dies(trio, checkpoints):
    """The failover test: kill -9 rank 0's worker of a two-node job once tokens stream;
    the job is placed on the two nodes left and the stream goes on with the greedy
    tokens of an uninterrupted decode."""
    model = loaded(checkpoints.llama)
    reference = greedy_reference(model.model, encode_prompt(model.tokenizer, PROMPT),
                                 FAILOVER_TOKENS)
    streamed, texts, finished, killed, job_id = [], [], None, None, None
    marks: dict[str, float] = {}
    for event in trio.client.generate(str(checkpoints.llama), PROMPT, nodes=2,
                                      max_tokens=FAILOVER_TOKENS):
        kind = event.WhichOneof("event")
        if kind == "accepted":
            job_id = event.accepted.id
        elif kind == "tokens":
            streamed.extend(event.tokens.token_ids)
            texts.append(event.tokens.text)
            if killed is None and len(streamed) >= KILL_AFTER:
                killed = trio.client.get_job(job_id).node_ids[0]
                trio.workers[killed][0].proc.kill()
                marks["kill"] = time.monotonic()
            elif "kill" in marks:
                marks.setdefault("resumed", time.monotonic())
        elif kind == "progress" and "kill" in marks:
            marks.setdefault(event.progress.stage, time.monotonic())
        elif kind == "finished":
            finished = event.finished
    assert streamed == reference and list(finished.token_ids) == reference
    assert finished.text == model.tokenizer.decode(reference)
    detok = model.tokenizer.detokenizer  # the text as an uninterrupted job streams it
    detok.reset()
    for t in reference:
        detok.add_token(t)
    detok.finalize()
    assert "".join(texts) == detok.text
    assert KILL_AFTER <= finished.stats.resumed_tokens < FAILOVER_TOKENS
    assert finished.stats.generation_tokens == FAILOVER_TOKENS
    job = trio.client.get_job(job_id)
    assert job.state == inference_pb2.JOB_STATE_SUCCEEDED
    left = sorted({"w0", "w1", "w2"} - {killed})
    assert sorted(job.node_ids) == left and trio.states()[killed] == LOST
    load = marks["running"] - marks["loading"]
    resumed = marks["resumed"] - marks["kill"]
    print(f"\nkilled {killed} after {finished.stats.resumed_tokens} tokens; resumed on "
          f"{', '.join(job.node_ids)} {resumed:.2f} s later, of which loading the model "
          f"took {load:.2f} s")
    assert resumed <= 10 + load


# -- two workers, one node id ----------------------------------------------------------


def test_two_workers_with_one_node_id_are_told_apart(tmp_path, caplog):
    """Started together (their mDNS probes race), both advertise, and a registry
    finding them by mDNS or by --peer lists one as "twin" and the other as
    "twin (2)", whichever answered first; one worker at two addresses is one node."""
    started = [_worker(tmp_path, "twin") for _ in range(2)]
    try:
        ports = sorted(int(w.wait_for(WORKER_LINE).group(2)) for w in started)

        async def found(peers: bool) -> dict[str, int]:
            registry = Registry(key=load_key())
            discovery = None if peers else MdnsDiscovery(registry, "127.0.0.1")
            if discovery:
                await discovery.start()
            addresses = [f"127.0.0.1:{ports[0]}", f"localhost:{ports[0]}",
                         f"127.0.0.1:{ports[1]}"] if peers else []
            records = [registry.add(a, "peer") for a in addresses]

            def unused() -> list[NodeRecord]:
                return [r for r in records if r.error.startswith("the same worker as node")]

            def twins() -> dict[str, int]:  # other tests' workers may advertise too
                found = {n.node_id: int(n.address.rsplit(":", 1)[1]) for n in registry.ready()}
                return {n: p for n, p in found.items() if p in ports}

            try:
                deadline = time.monotonic() + 20
                while len(twins()) < 2 or (peers and not unused()):
                    assert time.monotonic() < deadline, "the twins were not both found"
                    await asyncio.sleep(0.05)
                if peers:
                    (one,) = unused()  # the first of the first worker's addresses to answer
                    assert one in records[:2] and one.state == NodeState.PENDING
                return twins()
            finally:
                if discovery:
                    await discovery.stop()
                await registry.close()

        with caplog.at_level(logging.WARNING, logger="exo_spec.coordinator.registry"):
            for peers in (False, True):
                nodes = asyncio.run(found(peers))
                assert sorted(nodes) == ["twin", "twin (2)"] and sorted(nodes.values()) == ports
        assert "calls itself twin, as another ready worker does: it is node twin (2)" \
            in caplog.text
    finally:
        for w in started:
            w.stop()
