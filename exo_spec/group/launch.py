"""``--local-ranks N``: run one job as N local processes joined by the ring backend,
the target pipelined over them (``--parallel pipeline``, with ``--split``) or
sharded across them (``--parallel tensor``).

Each rank is ``python -m exo_spec.group.local_rank`` with MLX_RANK and a hostfile of
loopback ports. On a machine with several CUDA GPUs the ranks take them in turn
(CUDA_VISIBLE_DEVICES, as ``mlx.launch`` pins its ranks); otherwise they share
the one device. Rank 0 prints what the single-node path prints. If any rank
exits non-zero, or the group outlives its time limit, every rank is killed and
the command fails with one line, so a dead rank never leaves the others waiting
on a receive forever.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx

from ..engine.cuda import on_cuda
from ..models.load import check_checkpoint, read_config, resolve, text_config, tokenizer_of
from ..proposer_choice import choose_group_proposer
from .pipeline import layer_ranges, parse_split, split_refusal
from .tensor import check_quantizable, check_shardable

TIME_LIMIT_S = 3600.0
EXIT_GRACE_S = 10.0  # how long followers may take to leave once rank 0 is done


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cuda_devices() -> list[str]:
    """The CUDA GPUs this process may use, as CUDA_VISIBLE_DEVICES names them; none
    where MLX does not run on CUDA."""
    if not on_cuda():
        return []
    if named := os.environ.get("CUDA_VISIBLE_DEVICES"):
        return named.split(",")
    return [str(i) for i in range(mx.device_count(mx.gpu))]


def gpu_pin(rank: int, devices: list[str]) -> dict[str, str]:
    """The environment that gives ``rank`` a GPU of its own while there are enough."""
    return {"CUDA_VISIBLE_DEVICES": devices[rank % len(devices)]} if len(devices) > 1 else {}


def check_local(args) -> None:
    """What can be refused before any rank starts, one line rather than one per rank:
    the flags, the checkpoint's files, a proposer or split the group cannot run, and
    the prompt (empty, or too long for the context with ``--max-tokens``). ValueError
    or ModelLoadError; OUT_OF_RANGE as a StatusError."""
    from ..commands.generate import check_prompt

    if args.local_ranks is None or args.local_ranks < 2:
        raise ValueError("--local-ranks must be >= 2 (and --split needs it)")
    path = resolve(args.model)
    config = check_checkpoint(path)
    check_prompt(args, tokenizer_of(path, config), config)
    choose_group_proposer(args.model, path, args.draft_model, args.spec)  # refuse it here
    if args.parallel == "tensor":
        if args.split:
            raise ValueError("--split is for --parallel pipeline")
        check_shardable(read_config(path), args.local_ranks)
        if args.quantize:
            check_quantizable(read_config(path), args.local_ranks)
    else:
        config = read_config(path)
        if refusal := split_refusal(config):
            raise ValueError(refusal)
        if args.split:
            layers = text_config(config)["num_hidden_layers"]
            layer_ranges(layers, args.local_ranks, parse_split(args.split))


def launch_local(args) -> int:
    check_local(args)
    job = json.dumps({k: v for k, v in vars(args).items() if k != "run"})
    with tempfile.TemporaryDirectory(prefix="exo-spec-ring-") as tmp:
        hostfile = Path(tmp) / "hosts.json"
        ports = _free_ports(args.local_ranks)
        hostfile.write_text(json.dumps([[f"127.0.0.1:{p}"] for p in ports]))
        gpus = cuda_devices()
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "exo_spec.group.local_rank", job],
                env={**os.environ, "MLX_RANK": str(rank), "MLX_HOSTFILE": str(hostfile),
                     **gpu_pin(rank, gpus)},
                stdout=None if rank == 0 else subprocess.DEVNULL,
            )
            for rank in range(args.local_ranks)
        ]
        try:
            return _watch(procs)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()


def _watch(procs: list[subprocess.Popen]) -> int:
    deadline = time.monotonic() + TIME_LIMIT_S
    while True:
        codes = [p.poll() for p in procs]
        for rank, code in enumerate(codes):
            if code:
                print(f"exo-spec generate: error: rank {rank} exited with status {code}; "
                      "stopped the group", file=sys.stderr)
                return code if code > 0 else 1
        if all(code == 0 for code in codes):
            return 0
        if codes[0] == 0:
            deadline = min(deadline, time.monotonic() + EXIT_GRACE_S)
        if time.monotonic() > deadline:
            print("exo-spec generate: error: the group did not finish in time; stopped it",
                  file=sys.stderr)
            return 1
        time.sleep(0.05)
