"""Which mx.distributed send/recv patterns hang across 2 local processes (ring backend).

    python benchmarks/cuda_sendrecv.py [--timeout S] [--json OUT]

Every pattern runs as two fresh processes (MLX_RANK 0 and 1, a loopback
hostfile) under a time limit; a process that is still running when the limit
is reached dumps its Python stack (faulthandler) and is killed. The patterns go
from the plainest to what exo_spec.group.forward.PipelineForward does:

  all_sum        an all_sum of a GPU array (reported to work)
  cpu_stream     send/recv on arrays made on the CPU stream
  gpu_send       rank 0 sends an evaluated GPU array, rank 1 receives and reads it
  gpu_lazy       rank 0 sends an unevaluated GPU result; rank 1 adds 1 on the GPU
  roundtrip      PipelineForward: rank 0 sends, receives back (mx.depends on the
                 send, async_eval), applies a GPU op; rank 1 receives, runs a GPU
                 op, sends back; with an all_sum command first, 20 times
  rt_*           the same with one thing changed (see ROUNDTRIPS)
  roundtrip_sync every send/recv result evaluated on its own before the GPU
                 touches it (mx.eval between the streams)
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# roundtrip variants: (h left lazy, how rank 0 evaluates what comes back, mx.depends)
ROUNDTRIPS = {
    "roundtrip": (True, "async", True),  # what PipelineForward.lead does
    "rt_eval": (True, "eval", True),  # mx.eval instead of mx.async_eval
    "rt_h_evaluated": (False, "async", True),  # h evaluated before the send
    "rt_no_depends": (True, "async", False),  # send evaluated, then a plain recv
    "rt_lazy_back": (True, "none", True),  # back only evaluated through its GPU consumer
    "roundtrip_sync": (False, "eval", True),  # everything evaluated step by step
}
PATTERNS = ["all_sum", "cpu_stream", "gpu_send", "gpu_lazy", *ROUNDTRIPS]


def child(pattern: str, limit: float) -> None:
    faulthandler.dump_traceback_later(limit - 2, exit=True)
    import mlx.core as mx

    g = mx.distributed.init(backend="ring", strict=True)
    rank = g.rank()
    shape = (1, 5, 1024)

    def received(expected: float, plus: float = 0) -> None:
        """Rank 1: receive rank 0's rows (``plus`` added lazily) and check them."""
        r = mx.distributed.recv(shape, mx.float32, 0, group=g)
        if plus:
            r = r + plus
        mx.eval(r)
        assert r[0, 0, 0].item() == expected

    if pattern == "all_sum":
        x = mx.ones(shape) * (rank + 1)
        out = mx.distributed.all_sum(x, group=g)
        mx.eval(out)
        assert out[0, 0, 0].item() == 3.0
    elif pattern == "cpu_stream":
        if rank == 0:
            x = mx.ones(shape, stream=mx.cpu) * 2
            mx.eval(mx.distributed.send(x, 1, group=g))
        else:
            received(2.0)
    elif pattern == "gpu_send":
        if rank == 0:
            x = mx.ones(shape) * 2
            mx.eval(x)
            mx.eval(mx.distributed.send(x, 1, group=g))
        else:
            received(2.0)
    elif pattern == "gpu_lazy":
        if rank == 0:
            mx.eval(mx.distributed.send(mx.ones(shape) * 2, 1, group=g))
        else:
            received(3.0, plus=1)
    elif pattern in ROUNDTRIPS:
        lazy_h, how, depends = ROUNDTRIPS[pattern]
        for i in range(20):
            cmd = mx.distributed.all_sum(mx.array([i if rank == 0 else 0]), group=g)
            assert cmd.item() == i
            print(f"rank {rank} iteration {i}", file=sys.stderr, flush=True)
            if rank == 0:
                h = mx.ones(shape) * i
                if not lazy_h:
                    mx.eval(h)
                sent = mx.distributed.send(h, 1, group=g)
                if depends:
                    back = mx.depends(mx.distributed.recv_like(h, 1, group=g), sent)
                else:
                    mx.eval(sent)
                    back = mx.distributed.recv_like(h, 1, group=g)
                if how == "async":
                    mx.async_eval(back)
                elif how == "eval":
                    mx.eval(back)
                out = back * 2
                assert out[0, 0, 0].item() == 2 * (i + 1)
            else:
                x = mx.distributed.recv(shape, mx.float32, 0, group=g)
                if not lazy_h:
                    mx.eval(x)
                mx.eval(mx.distributed.send(x + 1, 0, group=g))
    print(f"rank {rank} ok", flush=True)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run(pattern: str, limit: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        hostfile = Path(tmp) / "hosts.json"
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in free_ports(2)]))
        start = time.monotonic()
        procs = [subprocess.Popen(
            [sys.executable, __file__, "--child", pattern, "--timeout", str(limit)],
            env={**os.environ, "MLX_RANK": str(r), "MLX_HOSTFILE": str(hostfile)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
        outs = []
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(limit + 5 - (time.monotonic() - start), 1))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
            outs.append((p.returncode, out))
        seconds = time.monotonic() - start
    ok = all(code == 0 and "ok" in out for code, out in outs)
    hung = any("Timeout" in out or code in (-9,) for code, out in outs)
    return {"pattern": pattern, "result": "ok" if ok else ("HANG" if hung else "error"),
            "seconds": round(seconds, 1),
            "ranks": [{"code": code, "tail": out[-1500:]} for code, out in outs]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--json")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("patterns", nargs="*", default=PATTERNS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.timeout)
        return
    results = []
    for pattern in args.patterns:
        r = run(pattern, args.timeout)
        results.append(r)
        print(f"{pattern:<16} {r['result']:<6} {r['seconds']:>6.1f}s", flush=True)
        if r["result"] != "ok":
            for rank, info in enumerate(r["ranks"]):
                print(f"  rank {rank} exit {info['code']}:\n    "
                      + info["tail"].replace("\n", "\n    "), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
