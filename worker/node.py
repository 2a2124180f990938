"""What a worker says about the machine it runs on: address, memory, chip, backend."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import mlx.core as mx

DEFAULT_MEMORY_FRACTION = 0.75  # leave the rest to macOS and other programs


@dataclass(frozen=True)
class Node:
    node_id: str
    host: str
    memory_bytes: int  # the budget advertised for weights and caches
    chip: str
    backend: str  # "metal", "cuda" or "cpu"


def primary_address() -> str:
    """The address of the interface with the default route (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.254.254.254", 1))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def backend() -> str:
    if mx.metal.is_available():
        return "metal"
    if mx.cuda.is_available():
        return "cuda"
    return "cpu"


def physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def chip() -> str:
    """e.g. "Apple M2 Max" (MLX's device name; the CPU's model on the CPU backend)."""
    return str(mx.device_info().get("device_name", "unknown"))


def this_node(node_id: str | None, host: str | None, memory_gb: float | None) -> Node:
    """Each None takes the machine's own: its host name, its primary address, and
    ``DEFAULT_MEMORY_FRACTION`` of its memory."""
    memory = int(memory_gb * 2**30) if memory_gb else \
        int(physical_memory() * DEFAULT_MEMORY_FRACTION)
    return Node(
        node_id=node_id or socket.gethostname(),
        host=host or primary_address(),
        memory_bytes=memory,
        chip=chip(),
        backend=backend(),
    )
