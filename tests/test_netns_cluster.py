"""The cluster across real network hosts: three Linux network namespaces on a bridge
(deploy/netns-cluster.sh), a coordinator on one and a worker on each of the others.
The coordinator finds the workers by zeroconf multicast alone (no --peer), jobs go
over gRPC, and a two-node placement's ranks talk over the ring backend between the
namespaces. Both workers have one node id, as Macs sharing a host name do. The
coordinator, the workers and the CLI share the test run's cluster key (its default
path, ``conftest.cluster_key``); a fourth namespace without it is refused by every
service: the coordinator's gRPC and HTTP, and each worker's WorkerControl."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_cluster import with_model_dir

from exo_spec.models import synthetic
from exo_spec.models.load import load
from exo_spec.prompt import encode_prompt

from reference import greedy_reference

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "netns-cluster.sh"
PROMPT = "def heappush(heap, item):"
MAX_TOKENS = 16
PORT = 50151
HTTP_PORT = 52415
API_KEY = "netns-api-key"
# What an outsider on the network tries, with no key and with a key of its own: run in
# its own namespace, with a config directory that holds no key.
OUTSIDER = """
import json, sys, grpc, httpx
from exo_spec.auth.grpc_client import channel
from exo_spec.auth.key_file import ClusterKey
from exo_spec.v1 import inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc

coordinator, url, workers = sys.argv[1], sys.argv[2], sys.argv[3:]
answers = {}

def code(name, call):
    try:
        result = call()
        if isinstance(result, grpc.Call):
            list(result)
        answers[name] = "OK"
    except grpc.RpcError as e:
        answers[name] = e.code().name

for who, make in (("no key", grpc.insecure_channel),
                  ("its own key", lambda t: channel(t, ClusterKey.generate()))):
    with make(coordinator) as c:
        s = inference_pb2_grpc.InferenceStub(c)
        code(f"ListNodes, {who}", lambda: s.ListNodes(inference_pb2.ListNodesRequest()))
        code(f"ListJobs, {who}", lambda: s.ListJobs(inference_pb2.ListJobsRequest()))
    for w in workers:
        with make(w) as c:
            s = worker_pb2_grpc.WorkerControlStub(c)
            code(f"{w} GetInfo, {who}", lambda: s.GetInfo(worker_pb2.GetInfoRequest()))
            code(f"{w} LoadPlacement, {who}", lambda: s.LoadPlacement(
                worker_pb2.LoadPlacementRequest(placement_id="outsider", model="m",
                                                hosts=[w])))
for who, headers in (("no key", {}), ("a wrong key", {"authorization": "Bearer wrong"})):
    answers[f"HTTP, {who}"] = httpx.get(url + "/models", headers=headers).status_code
print(json.dumps(answers))
"""


def _why_no_namespaces() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 ('ip') is not installed"
    probe = f"exo-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], check=True)
    return None


@pytest.fixture(scope="module")
def hosts():
    if sys.platform != "linux":
        pytest.skip("network namespaces are Linux-only (deploy/netns-cluster.sh)")
    why = _why_no_namespaces()
    if why:  # CI runs as root on Linux: losing these tests must not pass quietly
        pytest.fail(f"the multi-host tests need network namespaces: {why}")
    env = {**os.environ, "EXO_NETNS_PREFIX": f"exo{os.getpid() % 100000}-",
           "EXO_NETNS_SUBNET": f"10.{100 + os.getpid() % 100}.{os.getpid() % 250}"}
    subprocess.run([str(SCRIPT), "up", "4"], env=env, check=True, capture_output=True)
    try:
        yield env["EXO_NETNS_PREFIX"], env["EXO_NETNS_SUBNET"]
    finally:
        subprocess.run([str(SCRIPT), "down"], env=env, capture_output=True)


def _exo(ns: str, *args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "exo_spec.cli",
                             *args], stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def cluster(hosts, tmp_path_factory):
    prefix, subnet = hosts
    logs = tmp_path_factory.mktemp("netns-logs")
    procs = [_exo(f"{prefix}0", "coordinator", "--host", f"{subnet}.1", "--port", str(PORT),
                  "--http-port", str(HTTP_PORT), "--api-key", API_KEY,
                  log=logs / "coordinator.log")]
    procs += [_exo(f"{prefix}{i}", "worker", "--host", f"{subnet}.{i + 1}",
                   "--node-id", "mac", *with_model_dir(()), log=logs / f"worker{i}.log")
              for i in (1, 2)]
    address = f"{subnet}.1:{PORT}"
    try:
        _wait_for_workers(address, 2, procs, logs)
        yield address
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "exo_spec.cli", *args], capture_output=True,
                          text=True, timeout=180)


def _ready_nodes(address: str) -> list[dict]:
    done = _cli("nodes", "--coordinator", address, "--json")
    if done.returncode:
        return []
    return [n for n in json.loads(done.stdout)["nodes"] if n["state"] == "ready"]


def _wait_for_workers(address: str, count: int, procs, logs: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        if len(_ready_nodes(address)) >= count:
            return
        time.sleep(1)
    dump = "\n".join(f"--- {f.name}\n{f.read_text()[-2000:]}" for f in sorted(logs.iterdir()))
    pytest.fail(f"the coordinator did not discover {count} workers by mDNS:\n{dump}")


@pytest.fixture(scope="module")
def pair(checkpoints, tmp_path_factory) -> tuple[Path, Path]:
    """A 4-layer target (2 per node) and a noisy copy as its drafter: partial acceptance."""
    root = tmp_path_factory.mktemp("netns-models")
    target = synthetic.write_llama(root / "target", checkpoints.tokenizer, num_hidden_layers=4,
                                   seed=5)
    return target, synthetic.write_perturbed(target, root / "drafter", 0.02, seed=8)


def test_nodes_lists_both_workers_apart(cluster):
    """Two hosts advertising one node id are two nodes: the later "mac (2)"."""
    done = _cli("nodes", "--coordinator", cluster, "--json")
    assert done.returncode == 0, done.stderr
    nodes = {n["id"]: n for n in json.loads(done.stdout)["nodes"]}
    assert set(nodes) == {"mac", "mac (2)"}
    assert all(n["state"] == "ready" for n in nodes.values())
    assert len({n["host"] for n in nodes.values()}) == 2


@pytest.mark.parametrize("nodes", [1, 2])
def test_job_matches_single_node_greedy_decode(cluster, pair, nodes):
    target, drafter = pair
    done = _cli("generate", "--coordinator", cluster, "--nodes", str(nodes), "--model",
                str(target), "--draft-model", str(drafter), "--num-draft", "3", "--prompt",
                PROMPT, "--max-tokens", str(MAX_TOKENS), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    model = load(str(target))
    prompt = encode_prompt(model.tokenizer, PROMPT)
    assert out["tokens"] == greedy_reference(model.model, prompt, MAX_TOKENS)
    stats = out["stats"]
    assert stats["mode"] == "draft" and stats.get("ranks", 1) == nodes
    assert stats["drafted"] > 0 and 0 < stats["accepted"] <= stats["drafted"]
    assert stats["generation_tokens"] == MAX_TOKENS


def test_an_outsider_without_the_key_is_refused_everywhere(cluster, hosts, tmp_path):
    prefix, subnet = hosts
    url = f"http://{subnet}.1:{HTTP_PORT}/v1"
    workers = [f"{n['host']}:{n['port']}" for n in _ready_nodes(cluster)]
    assert len(workers) == 2
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}  # no key there
    env.pop("EXO_SPEC_KEY_FILE", None)
    done = subprocess.run(["ip", "netns", "exec", f"{prefix}3", sys.executable, "-c", OUTSIDER,
                           cluster, url, *workers], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert len(answers) == 2 * (2 + 2 * len(workers)) + 2
    assert all(a in ("UNAUTHENTICATED", 401) for a in answers.values()), answers
    assert all("outsider" not in n["placements"] for n in _ready_nodes(cluster))
    # the cluster itself still answers its own callers
    assert httpx.get(f"{url}/models", headers={"authorization": f"Bearer {API_KEY}"},
                     timeout=30).status_code == 200
