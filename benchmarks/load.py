"""A bounded load test of a local cluster: many clients, many jobs, random cancels.

Starts a coordinator and ``--workers`` workers on 127.0.0.1 (``LocalCluster``) and a
synthetic llama, then ``--clients`` asyncio clients submit ``--jobs`` jobs between
them over the gRPC API, each job a short greedy decode. A ``--cancel-share`` of the
jobs is cancelled at a random point: half by leaving the stream, half by
``CancelJob``. A submission refused with RESOURCE_EXHAUSTED (the queue bound) is
retried after a short back-off, as a client should; every job must end SUCCEEDED or
CANCELLED, and anything else, or a job still unfinished ``--job-timeout`` seconds
after it was submitted, is a failure. Prints the counts, the
jobs' latency, the cluster's resident memory (coordinator, workers and their runners)
after the warm-up and at the end, and exits 1 on any failure:

    python benchmarks/load.py                              # 100 clients, 2000 jobs
    python benchmarks/load.py --clients 10 --jobs 60       # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from exo_spec.auth.key_file import ClusterKey
from exo_spec.client import AsyncClient
from exo_spec.local_cluster import LocalCluster
from exo_spec.models import synthetic
from exo_spec.status import StatusError
from exo_spec.v1 import inference_pb2

PROMPTS = ["def main():", "import os\n", "class Queue:\n    def", "for i in range(",
           "# Read the file\n", "return self."]


def cluster_mb() -> float:
    """Resident memory of this process's descendants (the coordinator, the workers and
    their runners), in MB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    total, todo = 0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        with contextlib.suppress(OSError):
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return total * os.sysconf("SC_PAGE_SIZE") / 1e6


async def one_job(client: AsyncClient, model: str, rng: random.Random, cancel: str | None,
                  max_tokens: int) -> tuple[str, float]:
    """``(outcome, seconds)``: outcome a job state's name or a status code's."""
    start = time.perf_counter()
    job_id = ""
    stop_after = rng.randint(1, max_tokens) if cancel else None
    seen = 0
    stream = client.generate(model, rng.choice(PROMPTS), max_tokens=max_tokens,
                             seed=rng.randrange(2**31))
    try:
        async with contextlib.aclosing(stream):
            async for event in stream:
                if event.HasField("accepted"):
                    job_id = event.accepted.id
                elif event.HasField("tokens"):
                    seen += len(event.tokens.token_ids)
                    if stop_after is not None and seen >= stop_after:
                        if cancel == "call":
                            await client.cancel_job(job_id)
                            continue  # the stream ends with CANCELLED
                        break  # leaving the stream cancels the job
                elif event.HasField("finished"):
                    return "SUCCEEDED", time.perf_counter() - start
    except StatusError as e:
        return e.code.name, time.perf_counter() - start
    if stop_after is not None:
        return "CANCELLED", time.perf_counter() - start
    return "NO_RESULT", time.perf_counter() - start


async def load(address: str, key: ClusterKey, model: str, args) -> int:
    rng = random.Random(args.seed)
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    for _ in range(args.jobs):
        draw = rng.random()
        queue.put_nowait(None if draw >= args.cancel_share
                         else ("call" if draw < args.cancel_share / 2 else "leave"))
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    warm_mb: list[float] = []
    refusals = 0

    async def client_loop(seed: int) -> None:
        nonlocal refusals
        job_rng = random.Random(seed)
        async with AsyncClient(address, key=key) as client:
            while not queue.empty():
                cancel = queue.get_nowait()
                outcome, seconds = await asyncio.wait_for(
                    one_job(client, model, job_rng, cancel, args.max_tokens), args.job_timeout)
                if outcome == "RESOURCE_EXHAUSTED":  # the queue is full: back off, retry
                    refusals += 1
                    queue.put_nowait(cancel)
                    await asyncio.sleep(job_rng.uniform(0.1, 0.5))
                    continue
                outcomes[outcome] += 1
                latencies.append(seconds)
                if sum(outcomes.values()) == args.clients:
                    warm_mb.append(cluster_mb())

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client_loop(args.seed + i) for i in range(args.clients)))
    except TimeoutError:
        print(f"a job did not finish within {args.job_timeout} s", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - start
    async with AsyncClient(address, key=key) as client:
        unfinished = [j for j in await client.list_jobs()
                      if j.state in (inference_pb2.JOB_STATE_QUEUED,
                                     inference_pb2.JOB_STATE_RUNNING)]
    end_mb = cluster_mb()
    bad = {k: v for k, v in outcomes.items()
           if k not in ("SUCCEEDED", "CANCELLED")}
    latencies.sort()
    print(f"{args.jobs} jobs from {args.clients} clients in {seconds:.1f} s "
          f"({args.jobs / seconds:.1f} jobs/s): " + ", ".join(
              f"{k} {v}" for k, v in sorted(outcomes.items()))
          + f"; {refusals} submissions refused with RESOURCE_EXHAUSTED and retried")
    print(f"latency median {statistics.median(latencies) * 1e3:.0f} ms, "
          f"p99 {latencies[int(0.99 * (len(latencies) - 1))] * 1e3:.0f} ms")
    print(f"cluster resident memory: {warm_mb[0] if warm_mb else float('nan'):.0f} MB after "
          f"the first {args.clients} jobs, {end_mb:.0f} MB at the end")
    print(f"jobs still queued or running at the end: {len(unfinished)}")
    if bad or unfinished:
        print(f"FAILED: {bad or ''} {len(unfinished) or ''}", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--cancel-share", type=float, default=0.2)
    parser.add_argument("--job-timeout", type=float, default=120.0, metavar="S")
    parser.add_argument("--max-queue", type=int, help="the coordinator's (default: its own)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="exo-spec-load-") as tmp:
        tokenizer = Path(tmp) / "tokenizer"
        synthetic.write_tokenizer(tokenizer)
        model = synthetic.write_llama(Path(tmp) / "llama", tokenizer, seed=0)
        queue = ("--max-queue", str(args.max_queue)) if args.max_queue else ()
        cluster = LocalCluster(args.workers, queue, model_dirs=[tmp])
        with cluster as address:
            return asyncio.run(load(address, cluster.key, str(model), args))


if __name__ == "__main__":
    sys.exit(main())
