"""A worker serves one coordinator at a time, a coordinator's restart loses nothing, and
a killed worker leaves nothing behind: real ``exo-spec`` processes on 127.0.0.1,
killed with SIGKILL where the story says so."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from conftest import admin_channel
from test_cluster import LONG, MAX_TOKENS, PROMPT, exo_spec, ready_ids, start_worker, wait_until

from exo_spec.client import Client
from exo_spec.local_cluster import COORDINATOR_LINE, Background
from exo_spec.status import StatusError
from exo_spec.v1 import common_pb2, inference_pb2, worker_pb2, worker_pb2_grpc
from exo_spec.worker.placements import DIR_PREFIX

LEASE_S = 10  # the worker's --lease-timeout: a coordinator restarts well within it


def start_coordinator(tmp: Path, state_dir: Path,
                      worker_port: int) -> tuple[Background, Client, str]:
    """The process, a client, and its address, once it sees the worker."""
    c = Background(tmp / f"coordinator-{time.monotonic_ns()}.log", "coordinator", "--host",
                   "127.0.0.1", "--port", "0", "--no-mdns", "--peer", f"127.0.0.1:{worker_port}",
                   "--heartbeat", "0.5", "--state-dir", str(state_dir))
    address = f"127.0.0.1:{c.wait_for(COORDINATOR_LINE).group(1)}"
    client = Client(address)
    wait_until(lambda: ready_ids(client) == ["w"], 30)
    return c, client, address


def runners(worker: Background) -> list[int]:
    """The worker's runner processes."""
    pid = worker.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children
            if b"exo_spec.worker.runner" in Path(f"/proc/{c}/cmdline").read_bytes()]


def alive(pid: int) -> bool:
    """Running, not a zombie its parent has yet to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def kill(process: Background) -> None:
    process.proc.kill()
    process.proc.wait()


def refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def test_one_coordinator_holds_a_worker_and_a_restart_keeps_it(tmp_path, checkpoints):
    model = str(checkpoints.llama)
    worker, port = start_worker(tmp_path, "w", 0, "--lease-timeout", str(LEASE_S),
                                "--model-dir", str(checkpoints.llama.parent))
    channel = admin_channel(f"127.0.0.1:{port}")
    stub = worker_pb2_grpc.WorkerControlStub(channel)
    a, a_client, _ = start_coordinator(tmp_path, tmp_path / "a", port)
    b = None
    try:
        twin = exo_spec("coordinator", "--no-mdns", "--port", "0", "--state-dir",
                        str(tmp_path / "a"))  # one coordinator per state directory
        assert twin.returncode == 2 and twin.stderr.splitlines()[-1] == (
            f"exo-spec coordinator: error: the state directory {tmp_path / 'a'} is in use by "
            f"another coordinator (pid {a.proc.pid}); one coordinator per --state-dir")
        a_client.complete(model, PROMPT, max_tokens=MAX_TOKENS)
        (placement,) = a_client.placements()
        (runner,) = runners(worker)
        a_id = a_client.status().coordinator_id
        assert [n.lease_holder for n in a_client.nodes()] == [a_id]

        # B, on the same worker: it sees the lease and may load, run or release nothing
        b, b_client, b_address = start_coordinator(tmp_path, tmp_path / "b", port)
        b_id = b_client.status().coordinator_id
        assert b_id not in ("", a_id)
        nodes = exo_spec("nodes", "--coordinator", b_address)  # its LEASE column
        assert nodes.returncode == 0 and nodes.stdout.splitlines()[1].split()[3] == a_id
        with pytest.raises(StatusError) as info:
            b_client.complete(model, PROMPT, max_tokens=MAX_TOKENS)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert f"node w is held by coordinator {a_id} until " in info.value.message
        decode = common_pb2.Decode(prompt=PROMPT, max_tokens=MAX_TOKENS)
        for call in (
            lambda: list(stub.LoadPlacement(worker_pb2.LoadPlacementRequest(
                placement_id="p-b", model=model, hosts=["127.0.0.1:0"], coordinator_id=b_id))),
            lambda: list(stub.RunJob(worker_pb2.RunJobRequest(
                placement_id=placement.id, decode=decode, coordinator_id=b_id))),
            lambda: stub.ReleasePlacement(worker_pb2.ReleasePlacementRequest(
                placement_id=placement.id, coordinator_id=b_id)),
            lambda: stub.EndLease(worker_pb2.EndLeaseRequest(coordinator_id=b_id)),
        ):
            e = refusal(call)
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert f"node w is held by coordinator {a_id} until " in e.details()
            assert f"not coordinator {b_id}" in e.details()
        info = stub.GetInfo(worker_pb2.GetInfoRequest(coordinator_id=b_id))  # reading is fine
        assert list(info.placement_ids) == [placement.id] and info.lease.holder == a_id
        b_client.close()
        b.stop()  # a clean stop releases nothing of A's
        assert list(stub.GetInfo(worker_pb2.GetInfoRequest()).placement_ids) == [placement.id]

        # A is killed mid-job and started again on its state directory
        events = a_client.generate(model, PROMPT, max_tokens=LONG)
        running = next(events).accepted.id
        next(e for e in events if e.HasField("tokens"))
        before = a_client.list_jobs([inference_pb2.JOB_STATE_SUCCEEDED])
        kill(a)
        a_client.close()
        a, a_client, a_address = start_coordinator(tmp_path, tmp_path / "a", port)
        assert a_client.status().coordinator_id == a_id
        jobs = a_client.list_jobs()
        assert [j for j in jobs if j.id in {k.id for k in before}] == list(before)
        assert before[0].result.stats.generation_tokens == MAX_TOKENS
        crashed = a_client.get_job(running)
        assert crashed.state == inference_pb2.JOB_STATE_FAILED
        assert "the coordinator stopped while the job was running" in crashed.error

        # the warm placement is adopted: the next job runs on it, nothing loads
        wait_until(lambda: [(p.id, p.state) for p in a_client.placements()] ==
                   [(placement.id, inference_pb2.PLACEMENT_STATE_READY)], 20)
        events = list(a_client.generate(model, PROMPT, max_tokens=MAX_TOKENS))
        stages = [e.progress.stage for e in events if e.HasField("progress")]
        assert "loading" not in stages and "placing" not in stages, stages
        job = a_client.get_job(events[0].accepted.id)
        assert job.placement_id == placement.id
        assert list(job.result.token_ids) == list(before[0].result.token_ids)
        assert runners(worker) == [runner] and worker.log.read_text().count(": starting (") == 1
        nodes = exo_spec("nodes", "--coordinator", a_address)
        assert nodes.stdout.splitlines()[1].split()[3] == "ours"

        # A gone for good: once its lease lapses, its placement's runner exits
        kill(a)
        gone = time.monotonic()
        wait_until(lambda: not alive(runner), LEASE_S + 15)
        assert time.monotonic() - gone > LEASE_S - 2
        info = stub.GetInfo(worker_pb2.GetInfoRequest())
        assert not info.placement_ids and not info.HasField("lease")
        assert "its lease lapsed" in worker.log.read_text()
    finally:
        a_client.close()
        for p in (a, b, worker):
            if p is not None:
                p.stop()
        channel.close()


def test_a_worker_killed_with_sigkill_leaves_nothing_behind(tmp_path, checkpoints):
    tmp = Path(tempfile.gettempdir())
    doomed, port = start_worker(tmp_path, "doomed", 0, "--model-dir",
                                str(checkpoints.llama.parent))
    with admin_channel(f"127.0.0.1:{port}") as channel:
        list(worker_pb2_grpc.WorkerControlStub(channel).LoadPlacement(
            worker_pb2.LoadPlacementRequest(placement_id="p", model=str(checkpoints.llama),
                                            hosts=["127.0.0.1:0"])))
    (left,) = tmp.glob(f"{DIR_PREFIX}{doomed.proc.pid}-*")
    (runner,) = runners(doomed)
    kill(doomed)
    wait_until(lambda: not alive(runner), 10)  # its stdin closed with the worker
    assert left.is_dir()
    live = Path(tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-"))  # a live process's
    try:
        following, _ = start_worker(tmp_path, "following")
        following.stop()
        assert not left.exists() and live.is_dir()
        assert f"removed {left}, left by a worker that is gone" in following.log.read_text()
    finally:
        shutil.rmtree(live)
