"""The commands that talk to a coordinator: ``exo-spec generate --coordinator``,
``exo-spec nodes`` and ``exo-spec jobs``.

An error from the coordinator prints one line, ``exo-spec CMD: error: STATUS:
message``, and exits 2 when the request was refused as asked (INVALID_ARGUMENT,
NOT_FOUND, FAILED_PRECONDITION, RESOURCE_EXHAUSTED, ...) or 1 when it was not
carried through (UNAVAILABLE: the coordinator or a node is unreachable or was
lost; CANCELLED; DEADLINE_EXCEEDED): trying again later may work.

Each proves the cluster key (``--key-file``; ``exo_spec.auth.key_file``); without one
it prints one line and exits 2.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

import grpc

from ..auth.key_file import KeyFileError, add_key_file_flag, load_key
from ..client import Client, address, generate_request, no_result, stats_dict
from ..coordinator.states import JobState, NodeState
from ..engine.stats import summary
from ..sampling import Penalties
from ..status import StatusError
from ..v1 import common_pb2, inference_pb2

TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
             grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)
DEFAULT_COORDINATOR = "127.0.0.1:50151"


def _fail(command: str, e: StatusError) -> int:
    print(f"exo-spec {command}: error: {e.line()}", file=sys.stderr)
    return 1 if e.code in TRANSIENT else 2


def _client(command: str, args) -> Client | None:
    """A client of ``args.coordinator`` with the cluster key; None, having said why,
    when there is no key to use."""
    try:
        return Client(args.coordinator, key=load_key(args.key_file))
    except KeyFileError as e:
        print(f"exo-spec {command}: error: {e}", file=sys.stderr)
        return None


def check_coordinator(target: str) -> None:
    """ValueError for a ``--coordinator`` that is no address at all (retrying will not
    help: gRPC would say UNAVAILABLE); "host" alone gets the default port."""
    host, _, port = address(target).rpartition(":")
    if not host.strip("[]") or not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"--coordinator takes HOST:PORT, got {target!r}")


# -- generate ----------------------------------------------------------------------------


def generate(args, penalties: Penalties) -> int:
    """``exo-spec generate --coordinator``: ValueError for flags that do not apply."""
    for flag, given in (("--local-ranks", args.local_ranks is not None),
                        ("--split", bool(args.split)),
                        ("--parallel", args.parallel != "pipeline"),
                        ("--max-kv-size", args.max_kv_size is not None),
                        ("--quantize", args.quantize is not None)):
        if given:
            raise ValueError(f"{flag} does not apply with --coordinator "
                             "(the coordinator places the model; --nodes N asks for N nodes)")
    check_coordinator(args.coordinator)
    if args.nodes is not None and args.nodes < 0:
        raise ValueError(f"--nodes must be >= 0, got {args.nodes}")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError(f"--timeout must be > 0, got {args.timeout}")
    request = generate_request(
        args.model, args.prompt, draft_model=args.draft_model or "",
        spec=args.spec, max_tokens=args.max_tokens,
        temperature=args.temp, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
        seed=args.seed, num_draft=args.num_draft or 0,
        ignore_chat_template=args.ignore_chat_template, nodes=args.nodes or 0,
        stop=args.stop, penalties=penalties, logprobs=args.logprobs)
    streamed = False
    finished = None
    logprobs = []
    if (client := _client("generate", args)) is None:
        return 2
    try:
        with client:
            for event in client.stream(request, timeout=args.timeout):
                if event.HasField("tokens"):
                    logprobs.extend(_logprob(t) for t in event.tokens.logprobs)
                    if not args.json:
                        sys.stdout.write(event.tokens.text)
                        sys.stdout.flush()
                        streamed = True
                elif event.HasField("finished"):
                    finished = event.finished
    except StatusError as e:
        if streamed:
            sys.stdout.write("\n")
        return _fail("generate", e)
    except KeyboardInterrupt:  # leaving the stream cancelled the job
        if streamed:
            sys.stdout.write("\n")
        print("exo-spec generate: cancelled", file=sys.stderr)
        return 130
    if finished is None:
        return _fail("generate", no_result())
    stats = stats_dict(finished.stats)
    if args.json:
        result = {"text": finished.text, "tokens": list(finished.token_ids),
                  "finish_reason": finished.finish_reason, "stats": stats}
        if args.logprobs is not None:  # as a local run prints them
            result["logprobs"] = logprobs
        print(json.dumps(result))
    else:
        sys.stdout.write("\n")
        print(summary(stats), file=sys.stderr)
    return 0


def _logprob(t: common_pb2.TokenLogprob) -> dict:
    return {"token_id": t.token_id, "logprob": t.logprob,
            "top": [[a.token_id, a.logprob] for a in t.top]}


# -- nodes and jobs ------------------------------------------------------------------------


def _coordinator_flag(p) -> None:
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   default=os.environ.get("EXO_SPEC_COORDINATOR", DEFAULT_COORDINATOR),
                   help="the coordinator (default: $EXO_SPEC_COORDINATOR or "
                        f"{DEFAULT_COORDINATOR})")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_key_file_flag(p)


def add_parser(sub) -> None:
    p = sub.add_parser("nodes", help="list a cluster's nodes")
    _coordinator_flag(p)
    p.set_defaults(run=nodes)
    p = sub.add_parser("jobs", help="list, show or cancel a cluster's jobs",
                       description="exo-spec jobs [list | show ID | cancel ID]")
    p.add_argument("action", nargs="?", choices=("list", "show", "cancel"), default="list")
    p.add_argument("job_id", nargs="?", metavar="ID")
    p.add_argument("--state", action="append", default=[],
                   choices=[str(s) for s in JobState],
                   help="with list: only jobs in this state (repeatable)")
    _coordinator_flag(p)
    p.set_defaults(run=jobs)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f}"


def _time(ts) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.datetime.fromtimestamp(ts.ToNanoseconds() / 1e9).isoformat(
        timespec="seconds")


def node_dict(n: inference_pb2.Node) -> dict:
    return {"id": n.id, "host": n.host, "port": n.port,
            "state": NodeState.from_proto(n.state), "lease_holder": n.lease_holder or None,
            "backend": n.backend, "chip": n.chip, "version": n.version,
            "memory_bytes": n.memory_bytes, "used_bytes": n.used_bytes,
            "placements": list(n.placement_ids), "last_seen": _time(n.last_seen)}


def job_dict(j: inference_pb2.Job) -> dict:
    d = {"id": j.id, "state": JobState.from_proto(j.state), "model": j.model,
         "draft_model": j.draft_model, "placement": j.placement_id, "nodes": list(j.node_ids),
         "created": _time(j.created), "finished": _time(j.finished_at),
         "generated_tokens": j.generated_tokens, "error": j.error, "owner": j.owner}
    if j.HasField("result"):
        d["result"] = {"text": j.result.text, "tokens": list(j.result.token_ids),
                       "finish_reason": j.result.finish_reason,
                       "stats": stats_dict(j.result.stats)}
    return d


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
                     .rstrip() for row in [header, *rows])


def _bad_coordinator(command: str, target: str) -> bool:
    try:
        check_coordinator(target)
    except ValueError as e:
        print(f"exo-spec {command}: error: {e}", file=sys.stderr)
        return True
    return False


def nodes(args) -> int:
    if _bad_coordinator("nodes", args.coordinator) or (client := _client("nodes", args)) is None:
        return 2
    try:
        with client:
            found = client.nodes()
            coordinator_id = client.status().coordinator_id
    except StatusError as e:
        return _fail("nodes", e)
    if args.json:
        print(json.dumps({"coordinator_id": coordinator_id,
                          "nodes": [node_dict(n) for n in found]}))
        return 0

    def lease(holder: str | None) -> str:  # whose the worker is: ours, free, or another's id
        return "free" if holder is None else "ours" if holder == coordinator_id else holder

    print(table(["ID", "ADDRESS", "STATE", "LEASE", "BACKEND", "CHIP", "MEMORY GiB",
                 "PLACEMENTS"],
                [[n["id"], f"{n['host']}:{n['port']}", n["state"].upper(),
                  lease(n["lease_holder"]), n["backend"], n["chip"],
                  f"{_gib(n['used_bytes'])}/{_gib(n['memory_bytes'])}",
                  ",".join(n["placements"]) or "-"] for n in map(node_dict, found)]))
    return 0


def jobs(args) -> int:
    if args.action in ("show", "cancel") and not args.job_id:
        print(f"exo-spec jobs: error: jobs {args.action} needs a job ID", file=sys.stderr)
        return 2
    if args.action == "list" and args.job_id:
        print(f"exo-spec jobs: error: unexpected {args.job_id!r} (jobs show ID?)",
              file=sys.stderr)
        return 2
    if _bad_coordinator("jobs", args.coordinator) or (client := _client("jobs", args)) is None:
        return 2
    try:
        with client:
            if args.action == "list":
                states = [JobState(s).to_proto() for s in args.state]
                found = [job_dict(j) for j in client.list_jobs(states)]
            elif args.action == "show":
                found = [job_dict(client.get_job(args.job_id))]
            else:
                found = [job_dict(client.cancel_job(args.job_id))]
    except StatusError as e:
        return _fail("jobs", e)
    if args.json:
        print(json.dumps({"jobs": found} if args.action == "list" else found[0]))
        return 0
    if args.action == "show":
        job = found[0]
        for key in ("id", "state", "owner", "model", "draft_model", "placement", "nodes",
                    "created", "finished", "generated_tokens", "error"):
            value = ",".join(job[key]) if isinstance(job[key], list) else job[key]
            if value not in ("", None):
                print(f"{key}: {value}")
        if "result" in job:
            print(f"finish_reason: {job['result']['finish_reason']}")
            print(f"stats: {summary(job['result']['stats'])}")
            print(f"text: {job['result']['text']}")
        return 0
    print(table(["ID", "STATE", "MODEL", "NODES", "TOKENS", "CREATED", "ERROR"],
                [[j["id"], j["state"].upper(), j["model"], ",".join(j["nodes"]) or "-",
                  str(j["generated_tokens"]), j["created"] or "-", j["error"] or ""]
                 for j in found]))
    return 0
