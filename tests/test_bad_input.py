"""Bad input at every front door: the CLI's commands and flags, the gRPC API
(``Inference``, and ``WorkerControl`` as a coordinator drives it) and the HTTP API.

Each bad input gets one clear line (exit 2; 1 where trying again may work) or the
right status (gRPC; HTTP with OpenAI's error body), and after the sweep the same
coordinator, workers and warm placement still serve a normal job. Broken
checkpoints are copies of the llama fixture with one thing wrong: they are refused
as INVALID_ARGUMENT naming the file, before a runner starts where the files say
enough (``InspectModel``), else by the runner's load, once: a bad checkpoint does
not get better by retrying. A negative seed is no error: it seeds as its 64-bit two's
complement (``sampling.mlx_seed``), alike on every front door."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import grpc
import pytest
from conftest import admin_channel
from test_cluster import cli, exo_spec
from test_http_api import CHAT, HttpCluster

from exo_spec.cli import main
from exo_spec.client import generate_request
from exo_spec.local_cluster import COORDINATOR_LINE
from exo_spec.v1 import common_pb2, inference_pb2, inference_pb2_grpc, worker_pb2, worker_pb2_grpc

PROMPT = "def heappush(heap, item):"
MAX_TOKENS = 8
PAST_CONTEXT = 5000  # the fixtures' context is 4096 tokens
INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE


# -- broken checkpoints ----------------------------------------------------------------


def _config(**change):
    def corrupt(path: Path) -> None:
        config = json.loads((path / "config.json").read_text())
        for key, value in change.items():
            if value is None:
                del config[key]
            else:
                config[key] = value
        (path / "config.json").write_text(json.dumps(config))
    return corrupt


def _weights(keep: int | None = None, drop: int | None = None):
    """The weight file cut to its first ``keep`` bytes, or less its last ``drop``."""
    def corrupt(path: Path) -> None:
        data = (path / "model.safetensors").read_bytes()
        (path / "model.safetensors").write_bytes(data[:keep] if keep else data[:-drop])
    return corrupt


def _no_tokenizer(path: Path) -> None:
    for f in path.glob("tokenizer*"):
        f.unlink()


BROKEN = {
    "config-list": lambda p: (p / "config.json").write_text("[1, 2]"),
    "no-model-type": _config(model_type=None),
    "layers-x": _config(num_hidden_layers="x"),
    "unknown-type": _config(model_type="nosuch"),
    "cut-header": _weights(keep=1000),  # less than the safetensors header
    "cut-data": _weights(drop=100),  # the header whole, the last tensor short
    "no-tokenizer": _no_tokenizer,
    "no-hidden-size": _config(hidden_size=None),  # only mlx-lm's model class says so
    "layers-100k": _config(num_hidden_layers=100_000),  # mlx-lm would build them for minutes
    "layers-1": _config(num_hidden_layers=1),  # the weights hold 2
}


@pytest.fixture(scope="module")
def broken(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """Copies of the llama, each with one thing wrong (``BROKEN``), by name; and the
    good ones, for the tests' tables."""
    root = tmp_path_factory.mktemp("broken")
    paths = {"llama": checkpoints.llama, "drafter": checkpoints.drafter}
    for name, corrupt in BROKEN.items():
        shutil.copytree(checkpoints.llama, root / name)
        corrupt(root / name)
        paths[name] = root / name
    return paths


def _fill(args: list[str], paths: dict[str, Path]) -> list[str]:
    return [str(paths[a[1:-1]]) if a.startswith("{") and a.endswith("}") else a for a in args]


def _one_line(code: int, out: str, err: str, status: int, message: str) -> None:
    assert (code, out) == (status, ""), err
    assert err.count("\n") == 1 and err.startswith("exo-spec ") and message in err, err


# -- one cluster for the whole file ------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, checkpoints):
    """A coordinator (gRPC and HTTP) and two workers; no Hugging Face lookups."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("HF_HUB_OFFLINE", "1")
        c = HttpCluster(tmp_path_factory.mktemp("bad-input"), checkpoints.llama.parent)
    c.address = f"127.0.0.1:{c.coordinator.wait_for(COORDINATOR_LINE).group(1)}"
    c.channels = {"coordinator": admin_channel(c.address)}
    c.channels.update({n.id: admin_channel(f"127.0.0.1:{n.port}")
                       for n in c.client.nodes()})
    c.inference = inference_pb2_grpc.InferenceStub(c.channels["coordinator"])
    yield c
    for channel in c.channels.values():
        channel.close()
    c.stop()


@pytest.fixture(scope="module")
def warm(cluster, checkpoints):
    """The llama's placement, warm, and what a normal job on it returns."""
    events = list(cluster.client.generate(str(checkpoints.llama), PROMPT,
                                          max_tokens=MAX_TOKENS))
    job = cluster.client.get_job(events[0].accepted.id)
    (placement,) = [p for p in cluster.client.placements() if p.id == job.placement_id]
    return placement, list(job.result.token_ids)


def _worker(cluster, node_id: str) -> worker_pb2_grpc.WorkerControlStub:
    return worker_pb2_grpc.WorkerControlStub(cluster.channels[node_id])


def _status(call) -> tuple[grpc.StatusCode, str]:
    """How ``call()`` ends (a stream read to its end)."""
    try:
        result = call()
        if isinstance(result, grpc.Call):
            list(result)
    except grpc.RpcError as e:
        return e.code(), e.details()
    return grpc.StatusCode.OK, ""


def _raw(cluster, server: str, method: str, stream: bool = False):
    """``method`` of ``server`` ("coordinator" or a node id), called with bytes as they
    are: for requests no stub would send."""
    channel = cluster.channels[server]
    kind = channel.unary_stream if stream else channel.unary_unary
    return kind(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)


def _bad_utf8(message) -> bytes:
    """``message`` serialized with its placeholder string ("\\x7f\\x7f") made invalid
    UTF-8."""
    data = message.SerializeToString()
    assert data.count(b"\x7f\x7f") == 1
    return data.replace(b"\x7f\x7f", b"\xff\xfe")


# -- the CLI: exo-spec generate on this machine -------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["--model", "{config-list}"], "config.json must hold a JSON object, not list"),
    (["--model", "{no-model-type}"], "config.json has no model_type"),
    (["--model", "{layers-x}"],
     "config.json: num_hidden_layers must be a non-negative integer, got 'x'"),
    (["--model", "{unknown-type}"], "Model type nosuch not supported"),
    (["--model", "{cut-header}"], "model.safetensors is truncated: 1000 bytes"),
    (["--model", "{cut-data}"], "model.safetensors is truncated"),
    (["--model", "{no-tokenizer}"], "has no tokenizer: none of tokenizer.json"),
    (["--model", "{no-hidden-size}"], "missing 1 required positional argument: 'hidden_size'"),
    (["--model", "{layers-100k}"], "num_hidden_layers is 100000, but the weight files hold 2"),
    (["--model", "{llama}", "--draft-model", "{cut-data}"], "cut-data/model.safetensors is "
                                                            "truncated"),
    (["--model", "{llama}", "--max-kv-size", "0"], "--max-kv-size must be >= 1, got 0"),
    (["--model", "{llama}", "--max-kv-size", "-3"], "--max-kv-size must be >= 1, got -3"),
    (["--model", "{llama}", "--seed", str(2**64)], "--seed must be from -9223372036854775808"),
    (["--model", "{llama}", "--penalty-context-size", str(2**32 - 1), "--presence-penalty", "1"],
     "--penalty-context-size must be from 1 to 65536"),
    (["--model", "{llama}", "--prompt", "", "--ignore-chat-template"], "the prompt is empty"),
    (["--model", "{llama}", "--max-tokens", str(PAST_CONTEXT)],
     f"OUT_OF_RANGE: max_tokens {PAST_CONTEXT} and the prompt's"),
    (["--model", "{llama}", "--local-ranks", "2", "--max-tokens", str(PAST_CONTEXT)],
     "exceed the model's context of 4096"),  # refused before any rank starts
    (["--model", "{cut-header}", "--local-ranks", "2"], "model.safetensors is truncated"),
    (["--model", "{llama}", "--local-ranks", "2", "--prompt", "", "--ignore-chat-template"],
     "the prompt is empty"),
])
def test_generate_here(broken, capsys, args, message):
    args = _fill(["generate", "--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS), *args],
                 broken)
    _one_line(*cli(capsys, *args), 2, message)


def test_a_negative_seed_samples_alike_here_and_on_the_cluster(cluster, checkpoints, capsys):
    args = ["generate", "--model", str(checkpoints.llama), "--prompt", PROMPT, "--max-tokens",
            str(MAX_TOKENS), "--temp", "1", "--no-spec", "--json"]
    runs = {}
    for seed in ("-1", "1"):
        for where in ([], ["--coordinator", cluster.address]):
            code, out, err = cli(capsys, *args, "--seed", seed, *where)
            assert code == 0, err
            runs[seed, bool(where)] = json.loads(out)["tokens"]
    assert runs["-1", False] == runs["-1", True] != runs["1", True] == runs["1", False]


# -- the CLI: the cluster's commands, and the servers' flags --------------------------------


@pytest.mark.parametrize("args, status, message", [
    (["generate", "--model", "{cut-data}"], 2, "INVALID_ARGUMENT: "),
    (["generate", "--model", "{llama}", "--draft-model", "/no/such/drafter"], 2,
     "INVALID_ARGUMENT: drafter /no/such/drafter is not inside node w"),
    (["generate", "--model", "{llama}", "--draft-model", "no-such-drafter"], 2,
     "NOT_FOUND: no node can find drafter no-such-drafter: "),
    (["generate", "--model", "{llama}", "--max-tokens", str(PAST_CONTEXT)], 2,
     f"OUT_OF_RANGE: max_tokens {PAST_CONTEXT} and the prompt's"),
    (["generate", "--model", "{llama}", "--prompt", ""], 2,
     "INVALID_ARGUMENT: the prompt is empty"),
    (["generate", "--model", "{llama}", "--max-kv-size", "64"], 2,
     "--max-kv-size does not apply with --coordinator"),
    (["generate", "--model", "{llama}", "--parallel", "tensor"], 2,
     "--parallel does not apply with --coordinator"),
    (["generate", "--model", "{llama}", "--nodes", "-1"], 2, "--nodes must be >= 0"),
    (["generate", "--model", "{llama}", "--timeout", "0"], 2, "--timeout must be > 0"),
    (["generate", "--model", "{llama}", "--coordinator", "127.0.0.1:99999"], 2,
     "--coordinator takes HOST:PORT, got '127.0.0.1:99999'"),
    (["nodes", "--coordinator", ""], 2, "--coordinator takes HOST:PORT, got ''"),
    (["nodes", "--coordinator", "127.0.0.1:1"], 1, "exo-spec nodes: error: UNAVAILABLE: "),
    (["jobs", "--coordinator", ":50151"], 2, "--coordinator takes HOST:PORT"),
    (["jobs", "list", "abc"], 2, "unexpected 'abc' (jobs show ID?)"),
    (["jobs", "cancel", "no-such-job"], 2, "NOT_FOUND: no job no-such-job"),
])
def test_cluster_commands(cluster, broken, capsys, args, status, message):
    command, *args = _fill(args, broken)
    if command == "generate":  # the last of a repeated flag counts
        args = ["--prompt", PROMPT, "--max-tokens", str(MAX_TOKENS), *args]
    _one_line(*cli(capsys, command, "--coordinator", cluster.address, *args), status, message)


@pytest.mark.parametrize("args, message", [
    (["jobs", "--state", "stuck"], "invalid choice: 'stuck' (choose from 'queued', 'loading'"),
    (["generate", "--model", "m"], "the following arguments are required: --prompt"),
    (["generate", "--model", "m", "--prompt", "p", "--seed", "x"], "invalid int value: 'x'"),
])
def test_argument_errors(capsys, args, message):
    with pytest.raises(SystemExit) as e:
        main(args)
    _one_line(e.value.code, *capsys.readouterr(), 2, message)


@pytest.mark.parametrize("args, message", [
    (["worker", "--port", "99999"], "--port must be a port number, got 99999"),
    (["worker", "--memory-gb", "0"], "--memory-gb must be > 0"),
    (["worker", "--group-timeout", "-1"], "--group-timeout must be > 0"),
    (["worker", "--lease-timeout", "0"], "--lease-timeout must be > 0"),
    (["coordinator", "--port", "70000"], "--port must be a port number, got 70000"),
    (["coordinator", "--heartbeat", "nan"], "--heartbeat must be > 0"),
    (["coordinator", "--heartbeat", "1", "--lost-after", "1"],
     "--lost-after more than --heartbeat"),
    (["coordinator", "--peer", "127.0.0.1:0"], "--peer: expected HOST:PORT"),
    (["coordinator", "--http-host", "127.0.0.1"], "--http-host needs --http-port"),
    (["coordinator", "--max-queue", "0"], "--max-queue must be >= 1"),
    (["serve", "--model", "m", "--memory-gb", "nan"], "--memory-gb must be > 0, got nan"),
    (["serve", "--model", "m", "--grpc-port", "-1"], "--grpc-port must be a port number"),
    (["serve", "--model", "m", "--max-tokens-default", "0"], "--max-tokens-default must be"),
    (["bench", "--ks", "0"], "draft lengths must be >= 1"),
    (["bench", "--group-ks", "x"], "--ks and --group-ks take numbers"),
    (["bench", "--warmup-tokens", "-1"], "--warmup-tokens must be >= 0"),
    (["make-models", "--size", "test", "--out", "{out}", "--seed", "-1"],
     "--seed must be from 0 to"),
])
def test_server_and_tool_flags(tmp_path, capsys, args, message):
    args = [str(tmp_path / "m") if a == "{out}" else a for a in args]
    if args[0] in ("worker", "coordinator"):
        args += ["--host", "127.0.0.1", "--no-mdns"]
    _one_line(*cli(capsys, *args), 2, message)


def test_serve_refuses_a_broken_model_with_its_reason(broken):
    proc = exo_spec("serve", "--model", str(broken["cut-header"]), "--port", "0", timeout=60)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("exo-spec serve: error: INVALID_ARGUMENT: ") and \
        "model.safetensors is truncated" in last


# -- the gRPC API: Inference ------------------------------------------------------------------


@pytest.mark.parametrize("model, options, code, message", [
    ("{config-list}", {}, INVALID, "config-list/config.json must hold a JSON object"),
    ("{no-model-type}", {}, INVALID, "no-model-type/config.json has no model_type"),
    ("{layers-x}", {}, INVALID, "num_hidden_layers must be a non-negative integer, got 'x'"),
    ("{unknown-type}", {}, INVALID, "Model type nosuch not supported"),
    ("{cut-header}", {}, INVALID, "cut-header/model.safetensors is truncated"),
    ("{cut-data}", {}, INVALID, "cut-data/model.safetensors is truncated"),
    ("{no-tokenizer}", {}, INVALID, "no-tokenizer has no tokenizer"),
    ("{no-hidden-size}", {}, INVALID, "missing 1 required positional argument"),  # runner's
    ("{llama}", {"draft_model": "{no-tokenizer}"}, INVALID, "no-tokenizer has no tokenizer"),
    ("{layers-100k}", {}, INVALID, "num_hidden_layers is 100000, but the weight files hold 2"),
    ("{layers-1}", {}, INVALID, "num_hidden_layers is 1, but the weight files hold 2"),
    ("{llama}", {"draft_model": "no-such-drafter"}, NOT_FOUND,
     "no node can find drafter no-such-drafter: w0: drafter no-such-drafter not found"),
    ("{llama}", {"draft_model": "/no/such/drafter"}, INVALID,
     "drafter /no/such/drafter is not inside node w"),
    ("no-such-org/no-such-model", {}, NOT_FOUND, "no node can find no-such-org/no-such-model"),
    ("/" + "a" * 5000, {}, INVALID, "the model name is 5001 characters long: at most 1024"),
    ("{llama}", {"max_tokens": PAST_CONTEXT}, OUT_OF_RANGE,
     f"max_tokens {PAST_CONTEXT} and the prompt's"),
    ("{llama}", {"messages": [{"role": "", "content": "hi"}]}, INVALID, "message 0 has role ''"),
    ("{llama}", {"stop": ["x"] * 3 + [""]}, INVALID, "stop string 3 is 0 characters"),
])
def test_generate_refusals(cluster, broken, warm, model, options, code, message):
    options = {k: str(broken[v[1:-1]]) if isinstance(v, str) and v.startswith("{") else v
               for k, v in options.items()}
    options.setdefault("max_tokens", MAX_TOKENS)
    model = _fill([model], broken)[0]
    request = generate_request(model, "" if "messages" in options else PROMPT, **options)
    got, details = _status(lambda: cluster.inference.Generate(request, timeout=60))
    assert (got, message in details) == (code, True), details


def test_a_bad_checkpoint_fails_once_not_three_times(cluster, broken):
    """The runner's refusal is INVALID_ARGUMENT: the job fails, no placement is loaded
    again for it (as for a lost node, which UNAVAILABLE would mean)."""
    log = cluster.coordinator.log.read_text()
    assert log.count(f"failed to load: INVALID_ARGUMENT: loading {broken['no-hidden-size']} "
                     "on node") == 1, log
    assert "placing it again" not in log


def test_raw_inference_requests(cluster, checkpoints):
    bad_prompt = _bad_utf8(inference_pb2.GenerateRequest(
        model=str(checkpoints.llama), decode=common_pb2.Decode(prompt="\x7f\x7f")))
    calls = [
        (_raw(cluster, "coordinator", "/exo_spec.v1.Inference/Generate", stream=True),
         bad_prompt, "GenerateRequest': String field had bad UTF-8"),
        (_raw(cluster, "coordinator", "/exo_spec.v1.Inference/GetJob"),
         _bad_utf8(inference_pb2.GetJobRequest(job_id="\x7f\x7f")), "bad UTF-8"),
        (_raw(cluster, "coordinator", "/exo_spec.v1.Inference/CancelJob"),
         _bad_utf8(inference_pb2.CancelJobRequest(job_id="\x7f\x7f")), "bad UTF-8"),
        (_raw(cluster, "coordinator", "/exo_spec.v1.Inference/ListJobs"),
         b"\x0a\x05\x01", "does not parse"),  # a packed field cut short
    ]
    for call, data, message in calls:
        got, details = _status(lambda call=call, data=data: call(data, timeout=10))
        assert (got, message in details) == (INVALID, True), details
    stub = cluster.inference
    for call, code, message in [
        (lambda: stub.ListJobs(inference_pb2.ListJobsRequest(states=[99])), INVALID,
         "unknown job state 99"),
        (lambda: stub.CancelJob(inference_pb2.CancelJobRequest()), INVALID, "no job_id given"),
        (lambda: stub.GetJob(inference_pb2.GetJobRequest(job_id="x" * 10_000)), NOT_FOUND,
         "no job xxx"),
        (lambda: stub.Generate(inference_pb2.GenerateRequest(
            model=str(checkpoints.llama), spec=7, decode=common_pb2.Decode(prompt=PROMPT))),
         INVALID, "unknown spec mode 7"),
    ]:
        got, details = _status(call)
        assert (got, message in details) == (code, True), details


# -- the gRPC API: WorkerControl, as a coordinator drives it -------------------------------


def test_inspect_model_refusals(cluster, broken):
    w0 = _worker(cluster, "w0")
    raw = _raw(cluster, "w0", "/exo_spec.v1.WorkerControl/InspectModel")
    for call, code, message in [
        (lambda: w0.InspectModel(worker_pb2.InspectModelRequest()), INVALID, "no model given"),
        (lambda: w0.InspectModel(worker_pb2.InspectModelRequest(
            model=str(broken["llama"]), spec=9)), INVALID, "unknown spec mode 9"),
        (lambda: w0.InspectModel(worker_pb2.InspectModelRequest(
            model=str(broken["layers-x"]))), INVALID, "num_hidden_layers must be"),
        (lambda: w0.InspectModel(worker_pb2.InspectModelRequest(
            model=str(broken["llama"]), draft_model=str(broken["config-list"]))), INVALID,
         "config-list/config.json must hold a JSON object"),
        (lambda: w0.InspectModel(worker_pb2.InspectModelRequest(
            model=str(broken["llama"]), draft_model="/no/such")), INVALID,
         "drafter /no/such is not inside node w0's model directories"),
        (lambda: w0.InspectModel(worker_pb2.InspectModelRequest(
            model=str(broken["llama"]), draft_model="no-such")), NOT_FOUND,
         "drafter no-such not found on node w0"),
        (lambda: raw(_bad_utf8(worker_pb2.InspectModelRequest(model="\x7f\x7f"))), INVALID,
         "InspectModelRequest': String field had bad UTF-8"),
    ]:
        got, details = _status(call)
        assert (got, message in details) == (code, True), details


def test_load_placement_refusals_leave_the_warm_placement(cluster, broken, warm):
    placement, _ = warm
    node = placement.ranks[0].node_id
    stub = _worker(cluster, node)

    holder = cluster.client.status().coordinator_id  # the worker serves only its coordinator

    def load(**fields):
        request = {"placement_id": "p-test", "model": str(broken["llama"]),
                   "hosts": ["127.0.0.1:0"], "coordinator_id": holder, **fields}
        return lambda: stub.LoadPlacement(worker_pb2.LoadPlacementRequest(**request),
                                          timeout=60)

    for call, code, message in [
        (load(placement_id=""), INVALID, "no placement_id"),
        (load(hosts=[]), INVALID, "rank 0 of a placement with 0 hosts"),
        (load(rank=3), INVALID, "rank 3 of a placement with 1 hosts"),
        (load(hosts=["127.0.0.1:0", "127.0.0.1:1"], split=[5, 1]), INVALID, "--split"),
        (load(model=str(broken["cut-data"])), INVALID, "cut-data/model.safetensors is truncated"),
        (load(placement_id=placement.id), grpc.StatusCode.ALREADY_EXISTS, "is already here"),
        (lambda: stub.ReleasePlacement(worker_pb2.ReleasePlacementRequest(
            placement_id="p-no-such", coordinator_id=holder)), grpc.StatusCode.OK, ""),
    ]:
        got, details = _status(call)
        assert (got, message in details) == (code, True), details
    held = stub.GetInfo(worker_pb2.GetInfoRequest()).placement_ids
    assert list(held) == [p.id for p in cluster.client.placements()
                          if node in [r.node_id for r in p.ranks]] and placement.id in held


def test_a_config_claiming_100k_layers_is_refused_before_any_runner_starts(cluster, broken,
                                                                           warm):
    placement, _ = warm
    node = placement.ranks[0].node_id
    stub = _worker(cluster, node)
    holder = cluster.client.status().coordinator_id  # the worker serves only its coordinator
    start = time.perf_counter()
    got, details = _status(lambda: stub.LoadPlacement(worker_pb2.LoadPlacementRequest(
        placement_id="p-100k", model=str(broken["layers-100k"]), hosts=["127.0.0.1:0"],
        coordinator_id=holder), timeout=60))
    print(f"100,000-layer config refused in {(time.perf_counter() - start) * 1000:.1f} ms")
    assert got == INVALID, details
    assert details.endswith("layers-100k/config.json: num_hidden_layers is 100000, but the "
                            "weight files hold 2 layers (model.layers.0 to 1)")
    worker_log = {"w0": cluster.w0, "w1": cluster.w1}[node].log.read_text()
    assert "p-100k" not in worker_log  # "placement p-100k rank 0: starting" when a runner starts
    assert "p-100k" not in stub.GetInfo(worker_pb2.GetInfoRequest()).placement_ids


def test_huge_request_fields_are_refused_by_their_size_never_quoted(cluster, checkpoints):
    """A 1 MB model name or stop string is INVALID_ARGUMENT with a short message that
    gives its length: nothing of it goes back in the status."""
    huge = "x" * 2**20
    llama = str(checkpoints.llama)
    for call, message in [
        (lambda: list(cluster.inference.Generate(generate_request(huge, PROMPT), timeout=30)),
         "the model name is 1048576 characters long: at most 1024"),
        (lambda: list(cluster.inference.Generate(generate_request(
            llama, PROMPT, draft_model=huge), timeout=30)),
         "the drafter name is 1048576 characters long"),
        (lambda: list(cluster.inference.Generate(generate_request(
            llama, PROMPT, stop=[huge]), timeout=30)),
         "stop string 0 is 1048576 characters long"),
        (lambda: _worker(cluster, "w0").InspectModel(worker_pb2.InspectModelRequest(
            model=huge), timeout=30), "the model name is 1048576 characters long"),
    ]:
        got, details = _status(call)
        assert (got, message in details) == (INVALID, True), details
        assert len(details) < 200 and "xxxxxxxx" not in details


def test_run_job_refusals_on_the_warm_placement(cluster, checkpoints, warm):
    placement, reference = warm
    stub = _worker(cluster, placement.ranks[0].node_id)

    holder = cluster.client.status().coordinator_id  # the worker serves only its coordinator

    def job(**fields):
        decode = common_pb2.Decode(**{"prompt": PROMPT, "max_tokens": MAX_TOKENS, **fields})
        return lambda: stub.RunJob(worker_pb2.RunJobRequest(
            placement_id=placement.id, job_id="direct", decode=decode, coordinator_id=holder),
            timeout=60)

    raw = _raw(cluster, placement.ranks[0].node_id, "/exo_spec.v1.WorkerControl/RunJob",
               stream=True)
    for call, code, message in [
        (job(prompt=""), INVALID, "the prompt is empty"),
        (job(max_tokens=PAST_CONTEXT), OUT_OF_RANGE, "exceed the model's context of 4096"),
        (job(sampling=common_pb2.Sampling(top_k=-1)), INVALID, "top_k must be >= 0"),
        (job(prompt="", messages=[common_pb2.ChatMessage(role="bot", content="hi")]), INVALID,
         "message 0 has role 'bot'"),
        (job(penalties=common_pb2.Penalties(frequency_penalty=float("nan"))), INVALID,
         "frequency_penalty must be a finite number"),
        (job(penalties=common_pb2.Penalties(repetition_penalty=2,
                                            repetition_context_size=2**32 - 1)), INVALID,
         "repetition_context_size must be from 1 to 65536"),
        (lambda: stub.RunJob(worker_pb2.RunJobRequest(placement_id="", decode=common_pb2.Decode(
            prompt=PROMPT), coordinator_id=holder)), NOT_FOUND, "no placement  on this node"),
        (lambda: raw(_bad_utf8(worker_pb2.RunJobRequest(placement_id=placement.id,
                                                        job_id="\x7f\x7f"))), INVALID,
         "RunJobRequest': String field had bad UTF-8"),
        (job(sampling=common_pb2.Sampling(temperature=1, seed=-1)), grpc.StatusCode.OK, ""),
    ]:
        got, details = _status(call)
        assert (got, message in details) == (code, True), details
    finished = [e.finished for e in job()() if e.HasField("finished")]
    assert list(finished[0].token_ids) == reference  # the same runner, unharmed


# -- the HTTP API -----------------------------------------------------------------------------


HTTP_CASES = [
    # path, body (a dict gets the model and max_tokens unless it names them), status, message
    ("/chat/completions", {"messages": [{"role": "bot", "content": "hi"}]}, 400,
     "message 0 has role 'bot'"),
    ("/chat/completions", {"messages": [{"content": "hi"}]}, 400, "messages[0].role is missing"),
    ("/chat/completions", {"messages": "hi"}, 400, "messages must be an array, got a string"),
    ("/chat/completions", {"messages": [{"role": "user", "content": 7}]}, 400,
     "messages[0].content must be a string or an array of parts"),
    ("/chat/completions", {"max_tokens": 2**40}, 400,
     f"max_tokens must be an integer from 1 to {2**32 - 1}, got {2**40}"),
    ("/chat/completions", {"max_tokens": 2**21}, 400, "max_tokens must be <= 1048576"),
    ("/chat/completions", {"max_tokens": PAST_CONTEXT}, 413,
     f"max_tokens {PAST_CONTEXT} and the prompt's"),
    ("/chat/completions", {"max_tokens": True}, 400, "max_tokens must be an integer, got a "
                                                     "boolean"),
    ("/chat/completions", {"repetition_penalty": -1}, 400, "repetition_penalty must be >= 0"),
    ("/chat/completions", {"presence_context_size": 0}, 400,
     "presence_context_size must be an integer >= 1"),
    ("/chat/completions", {"frequency_penalty": 1, "frequency_context_size": 2**32 - 1}, 400,
     "frequency_context_size must be from 1 to 65536"),  # not 32 GiB in the runner
    ("/chat/completions", {"frequency_penalty": "high"}, 400,
     "frequency_penalty must be a number, got a string"),
    ("/chat/completions", {"logit_bias": {"abc": 1}}, 400, "logit_bias keys must be token ids"),
    ("/chat/completions", {"logit_bias": {"\u00b2": 1}}, 400, "logit_bias keys must be token "
                                                              "ids, got '\u00b2'"),
    ("/chat/completions", {"logit_bias": {"7": "x"}}, 400, "logit_bias[7] must be a finite"),
    ("/chat/completions", {"logit_bias": {"100000": 1}}, 400, "outside the vocabulary"),
    ("/chat/completions", {"stop": ["x"] * 17}, 400, "at most 16 stop strings, got 17"),
    ("/chat/completions", {"stop": ["x", 3]}, 400, "stop must be a string or an array of "
                                                   "strings"),
    ("/chat/completions", {"logprobs": True, "top_logprobs": 50}, 400,
     "top_logprobs must be <= 20, got 50"),
    ("/chat/completions", {"top_logprobs": 2}, 400, "top_logprobs needs logprobs: true"),
    ("/chat/completions", {"seed": 1.5}, 400, "seed must be an integer, got a number"),
    ("/chat/completions", {"tools": [{"type": "function"}]}, 400, "tools is not supported"),
    ("/chat/completions", {"speculation": {"num_drafts": 2}}, 400,
     "speculation has no field 'num_drafts'"),
    ("/chat/completions", {"stream": "yes"}, 400, "stream must be a boolean"),
    ("/chat/completions", {"nodes": 3}, 400, "3 nodes were asked for but only 2 are ready"),
    ("/chat/completions", {"model": "no-such-org/no-such-model"}, 404,
     "no node can find no-such-org/no-such-model"),
    ("/chat/completions", {"model": "{cut-header}"}, 400,
     "cut-header/model.safetensors is truncated"),
    ("/chat/completions", {"speculation": {"draft_model": "no-such-drafter"}}, 404,
     "no node can find drafter no-such-drafter"),
    ("/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}]}', 400,
     "messages[0].content is not valid Unicode text"),
    ("/chat/completions", b'{"messages": [{"role": "user", "content": "\xff"}]}', 400,
     "the request body is not valid JSON"),
    ("/completions", {"prompt": [1, 2, 3]}, 400, "prompt must be a string"),
    ("/completions", {"prompt": PROMPT, "echo": True}, 400, "echo is not supported"),
    ("/completions", {"prompt": ""}, 400, "the prompt is empty"),
]


@pytest.mark.parametrize("path, body, status, message", HTTP_CASES)
def test_http_refusals(cluster, broken, warm, path, body, status, message):
    if isinstance(body, dict):
        if path == "/chat/completions":
            body.setdefault("messages", CHAT[:2])
        body = {"model": str(broken["llama"]), "max_tokens": MAX_TOKENS, "temperature": 0,
                **body}
        body["model"] = _fill([body["model"]], broken)[0]
        body = json.dumps(body)
    if isinstance(body, str) and body.startswith('{"messages"'):
        body = body.replace("{", f'{{"model": "{broken["llama"]}", ', 1)
    if isinstance(body, bytes):
        body = body.replace(b"{", f'{{"model": "{broken["llama"]}", '.encode(), 1)
    r = cluster.http.post(path, content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}


def test_http_wrong_method_unknown_fields_and_a_negative_seed(cluster, checkpoints):
    r = cluster.http.get("/chat/completions")
    assert r.status_code == 405 and "GET /v1/chat/completions" in r.json()["error"]["message"]
    body = {"model": str(checkpoints.llama), "prompt": PROMPT, "max_tokens": MAX_TOKENS,
            "temperature": 1, "seed": -1}
    texts = [cluster.http.post("/completions", json=body).json()["choices"][0]["text"]
             for _ in range(2)]
    assert texts[0] == texts[1]  # -1 is a seed like any other
    # fields OpenAI's API does not define, or exo-spec does not use, are ignored (SERVING.md)
    r = cluster.http.post("/completions", json={**body, "user": "u", "metadata": {"a": "b"},
                                                "no_such_field": [1]})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == texts[0]


# -- and after all of it ----------------------------------------------------------------------


def test_everything_still_serves(cluster, checkpoints, warm):
    placement, reference = warm
    result = cluster.client.complete(str(checkpoints.llama), PROMPT, max_tokens=MAX_TOKENS)
    assert list(result.token_ids) == reference
    after = {p.id: p for p in cluster.client.placements()}[placement.id]
    assert after.state == inference_pb2.PLACEMENT_STATE_READY
    assert after.jobs_served > placement.jobs_served
    r = cluster.openai.chat.completions.create(model=str(checkpoints.llama), messages=CHAT[:2],
                                               max_tokens=MAX_TOKENS, temperature=0)
    assert r.choices[0].finish_reason == "length"
    assert all(p.proc.poll() is None for p in (cluster.coordinator, cluster.w0, cluster.w1))
    for p in (cluster.coordinator, cluster.w0, cluster.w1):
        log = p.log.read_text()
        assert "Traceback" not in log, log
    assert " dropped: " not in cluster.coordinator.log.read_text()  # no warm placement lost
