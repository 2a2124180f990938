"""Who may use a cluster, on real processes and ports: a coordinator (gRPC and HTTP)
that makes the cluster key on its first start, in a config directory of its own, and a
worker that joins with that file. Without the key every gRPC call is UNAUTHENTICATED
(nothing loaded or run), a signature is taken once and only within its window, HTTP
wants one of the coordinator's API keys (``/health`` excepted), each API key's caller
sees only its own jobs while the admin sees all, and the key is in no log or command
line."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_cluster import exo_spec, ready_ids, wait_until, with_model_dir
from test_http_api import HTTP_LINE, job_id

from exo_spec.auth.grpc_client import channel
from exo_spec.auth.key_file import ClusterKey, load_key
from exo_spec.auth.signature import METADATA, sign
from exo_spec.client import Client
from exo_spec.local_cluster import COORDINATOR_LINE, Background
from exo_spec.status import StatusError
from exo_spec.v1 import common_pb2, inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc

ALICE, BOB = "alice-key", "bob-key"  # --api-key and --api-key-file
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
GET_INFO = "/exo_spec.v1.WorkerControl/GetInfo"
PROMPT = "def heappush(heap, item):"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Guarded:
    def __init__(self, tmp: Path):
        self.key_file = tmp / "config" / "exo-spec" / "cluster.key"
        (tmp / "api-keys").write_text(f"\n{BOB}\n")
        worker_port = _free_port()  # the coordinator's --peer, before the worker is up
        with pytest.MonkeyPatch.context() as env:  # a first start: no key anywhere yet
            env.setenv("XDG_CONFIG_HOME", str(tmp / "config"))
            self.coordinator = Background(
                tmp / "coordinator.log", "coordinator", "--host", "127.0.0.1", "--port", "0",
                "--no-mdns", "--peer", f"127.0.0.1:{worker_port}", "--http-port", "0",
                "--api-key", ALICE, "--api-key-file", str(tmp / "api-keys"),
                "--state-dir", str(tmp / "state"))
            self.address = f"127.0.0.1:{self.coordinator.wait_for(COORDINATOR_LINE).group(1)}"
            self.url = self.coordinator.wait_for(HTTP_LINE).group(1)
            self.worker = Background(tmp / "worker.log", "worker", "--host", "127.0.0.1",
                                     "--port", str(worker_port), "--node-id", "w",
                                     "--no-mdns", *with_model_dir(()))
        self.worker_address = f"127.0.0.1:{worker_port}"
        self.key = load_key(self.key_file)
        self.admin = Client(self.address, key=self.key)
        wait_until(lambda: ready_ids(self.admin) == ["w"], 30)

    def logs(self) -> str:
        return self.coordinator.log.read_text() + self.worker.log.read_text()

    def stop(self) -> None:
        self.admin.close()
        self.coordinator.stop()
        self.worker.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    g = Guarded(tmp_path_factory.mktemp("auth"))
    yield g
    g.stop()


def _code(call) -> grpc.StatusCode:
    try:
        result = call()
        if isinstance(result, grpc.Call):
            list(result)  # a stream: read it to its status
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def test_the_coordinator_makes_the_key_and_the_worker_joins_with_it(guarded):
    assert stat.S_IMODE(guarded.key_file.stat().st_mode) == 0o600
    log = guarded.coordinator.log.read_text()
    assert f"made a new cluster key in {guarded.key_file} (mode 0600)" in log
    assert "exo-spec key --join TOKEN" in log


def _every_kind_of_call(coordinator: grpc.Channel, worker: grpc.Channel, model: str) -> dict:
    inference = inference_pb2_grpc.InferenceStub(coordinator)
    control = worker_pb2_grpc.WorkerControlStub(worker)
    generate = inference_pb2.GenerateRequest(model=model,
                                             decode=common_pb2.Decode(prompt=PROMPT))
    load = worker_pb2.LoadPlacementRequest(placement_id="p", model=model,
                                           hosts=["127.0.0.1:0"])
    return {
        "Generate": lambda: inference.Generate(generate, timeout=10),
        "ListJobs": lambda: inference.ListJobs(inference_pb2.ListJobsRequest()),
        "CancelJob": lambda: inference.CancelJob(inference_pb2.CancelJobRequest(job_id="x")),
        "ListNodes": lambda: inference.ListNodes(inference_pb2.ListNodesRequest()),
        "reflection": lambda: reflection_pb2_grpc.ServerReflectionStub(
            coordinator).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])),
        "LoadPlacement": lambda: control.LoadPlacement(load, timeout=10),
        "RunJob": lambda: control.RunJob(worker_pb2.RunJobRequest(placement_id="p")),
        "GetInfo": lambda: control.GetInfo(worker_pb2.GetInfoRequest()),
    }


def test_without_the_key_nothing_is_served_or_loaded(guarded, checkpoints):
    outsiders = {"no key": lambda target: grpc.insecure_channel(target),
                 "another key": lambda target: channel(target, ClusterKey.generate())}
    for who, make in outsiders.items():
        with make(guarded.address) as coordinator, make(guarded.worker_address) as worker:
            calls = _every_kind_of_call(coordinator, worker, str(checkpoints.llama))
            for name, call in calls.items():
                assert _code(call) == UNAUTHENTICATED, (who, name)
            for open_to_all in (coordinator, worker):  # health answers anyone
                check = health_pb2_grpc.HealthStub(open_to_all).Check(
                    health_pb2.HealthCheckRequest())
                assert check.status == health_pb2.HealthCheckResponse.SERVING
    # An API key is the coordinator's: a worker takes only the cluster key.
    with channel(guarded.worker_address, ALICE) as worker:
        with pytest.raises(grpc.RpcError) as refused:
            list(_every_kind_of_call(worker, worker, str(checkpoints.llama))["LoadPlacement"]())
    assert refused.value.code() == UNAUTHENTICATED
    assert "an API key this server does not take" in refused.value.details()
    assert guarded.admin.list_jobs() == [] and guarded.admin.placements() == []
    with channel(guarded.worker_address, guarded.key) as worker:
        info = worker_pb2_grpc.WorkerControlStub(worker).GetInfo(worker_pb2.GetInfoRequest())
    assert list(info.placement_ids) == []


def test_a_signature_is_taken_once_and_only_in_its_window(guarded):
    def get_info(signature: str) -> tuple[grpc.StatusCode, str]:
        with grpc.insecure_channel(guarded.worker_address) as c:
            try:
                worker_pb2_grpc.WorkerControlStub(c).GetInfo(worker_pb2.GetInfoRequest(),
                                                             metadata=[(METADATA, signature)])
            except grpc.RpcError as e:
                return e.code(), e.details()
            return grpc.StatusCode.OK, ""

    once = sign(guarded.key, GET_INFO)
    assert get_info(once) == (grpc.StatusCode.OK, "")
    code, why = get_info(once)
    assert code == UNAUTHENTICATED and "replayed" in why
    for skew in (-60, 60):
        code, why = get_info(sign(guarded.key, GET_INFO, now=time.time() + skew))
        assert code == UNAUTHENTICATED and "expired" in why, why
    code, why = get_info(sign(guarded.key, "/exo_spec.v1.WorkerControl/ListModels"))
    assert code == UNAUTHENTICATED and "wrong cluster key signature" in why  # another method's
    code, why = get_info(once[:-1] + ("0" if once[-1] != "0" else "1"))
    assert code == UNAUTHENTICATED and "wrong cluster key signature" in why


def test_http_wants_an_api_key(guarded, checkpoints):
    health = httpx.get(guarded.url.removesuffix("/v1") + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    for headers in ({}, {"authorization": "Bearer wrong"},
                    {"authorization": f"Bearer {guarded.key.token()}"},  # not an API key
                    {"authorization": f"Basic {ALICE}"}):
        for method, path in (("GET", "/models"), ("POST", "/chat/completions")):
            r = httpx.request(method, guarded.url + path, headers=headers, json={})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["type"] == "authentication_error"
    with openai.OpenAI(base_url=guarded.url, api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError) as refused:
            client.models.list()
    assert refused.value.status_code == 401 and "a wrong API key" in str(refused.value)
    for api_key in (ALICE, BOB):
        with openai.OpenAI(base_url=guarded.url, api_key=api_key, max_retries=0) as client:
            r = client.completions.create(model=str(checkpoints.llama), prompt=PROMPT,
                                          max_tokens=2, temperature=0)
        assert r.usage.completion_tokens == 2


def test_jobs_belong_to_their_caller(guarded, checkpoints):
    model = str(checkpoints.llama)
    with openai.OpenAI(base_url=guarded.url, api_key=ALICE, max_retries=0) as http:
        by_http = job_id(http.completions.create(model=model, prompt=PROMPT, max_tokens=2).id)
    with Client(guarded.address, api_key=ALICE) as alice, \
            Client(guarded.address, api_key=BOB) as bob:
        by_grpc, by_admin = (list(c.generate(model, PROMPT, max_tokens=2))[0].accepted.id
                             for c in (bob, guarded.admin))
        mine = {c: {j.id for j in c.list_jobs()} for c in (alice, bob, guarded.admin)}
        assert by_http in mine[alice] and mine[alice].isdisjoint({by_grpc, by_admin})
        assert by_grpc in mine[bob] and mine[bob].isdisjoint({by_http, by_admin})
        assert {by_http, by_grpc, by_admin} <= mine[guarded.admin]
        owners = {j: guarded.admin.get_job(j).owner for j in (by_http, by_grpc, by_admin)}
        assert owners[by_admin] == "admin" and owners[by_http] == alice.get_job(by_http).owner
        assert len(set(owners.values())) == 3 and owners[by_grpc].startswith("key-")
        for call in (alice.get_job, alice.cancel_job):  # as if it did not exist
            with pytest.raises(StatusError) as hidden:
                call(by_grpc)
            assert (hidden.value.code, hidden.value.message) == \
                (grpc.StatusCode.NOT_FOUND, f"no job {by_grpc}")
        assert bob.get_job(by_grpc).state == inference_pb2.JOB_STATE_SUCCEEDED
    done = exo_spec("jobs", "--coordinator", guarded.address, "--json",
                    "--key-file", str(guarded.key_file))
    assert done.returncode == 0, done.stderr
    assert {by_http, by_grpc, by_admin} <= {j["id"] for j in json.loads(done.stdout)["jobs"]}


def test_a_machine_joins_with_the_token(guarded, tmp_path):
    token = exo_spec("key", "--join-token", "--key-file", str(guarded.key_file))
    assert token.returncode == 0 and token.stdout.strip() == guarded.key.token()
    joined = tmp_path / "joined" / "cluster.key"
    for _ in range(2):  # once more with the same token: nothing to do
        done = exo_spec("key", "--join", token.stdout.strip(), "--key-file", str(joined))
        assert done.returncode == 0, done.stderr
    assert load_key(joined) == guarded.key and stat.S_IMODE(joined.stat().st_mode) == 0o600
    for other, why in ((ClusterKey.generate().token(), "exists already"),
                       ("abc", "not a join token")):
        done = exo_spec("key", "--join", other, "--key-file", str(joined))
        assert done.returncode == 2 and why in done.stderr and other not in done.stderr
    assert load_key(joined) == guarded.key


def test_no_key_no_start(tmp_path):
    missing = exo_spec("worker", "--no-mdns", "--key-file", str(tmp_path / "none"))
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        f"exo-spec worker: error: no cluster key at {tmp_path / 'none'}: copy the "
        "coordinator's key file there (mode 0600), or run `exo-spec key --join TOKEN` with "
        "the token `exo-spec key --join-token` prints on the coordinator's machine"]
    shared = tmp_path / "shared.key"
    shared.write_text(ClusterKey.generate().token())
    shared.chmod(0o644)
    for command in (("worker", "--no-mdns"), ("nodes",), ("jobs",)):
        done = exo_spec(*command, "--key-file", str(shared))
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
        assert f"is open to other users: chmod 600 {shared}" in done.stderr


def test_the_key_is_in_no_log_and_no_command_line(guarded):
    secret = guarded.key.token()
    pids = [guarded.coordinator.proc.pid, guarded.worker.proc.pid]
    pids += [int(p) for p in os.listdir("/proc") if p.isdigit()
             and _parent(int(p)) == guarded.worker.proc.pid]  # its runners
    for pid in pids:
        assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    guarded.coordinator.stop()
    guarded.worker.stop()
    logs = guarded.logs()
    assert "job" in logs and secret not in logs and secret.upper() not in logs


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
