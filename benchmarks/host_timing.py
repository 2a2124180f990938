"""Where a lazy graph's time goes on the host: building it, launching it
(``mx.async_eval``) and waiting for the device (``mx.eval`` after the launch)."""

from __future__ import annotations

import statistics
import time

import mlx.core as mx


def host_ms(build, undo=lambda: None, *, repeats: int = 60, warmup: int = 10) -> dict:
    """Medians over ``repeats`` runs of ``build()`` (the first ``warmup`` dropped),
    ``undo()`` after each, in ms; ``host_ms`` is build + launch."""
    samples = []
    for i in range(repeats):
        t0 = time.perf_counter()
        arrays = build()
        t1 = time.perf_counter()
        mx.async_eval(arrays)
        t2 = time.perf_counter()
        mx.eval(arrays)
        t3 = time.perf_counter()
        undo()
        if i >= warmup:
            samples.append((t1 - t0, t2 - t1, t3 - t2))
    build_ms, launch_ms, wait_ms = (1e3 * statistics.median(s[j] for s in samples)
                                    for j in range(3))
    return {"build_ms": round(build_ms, 3), "launch_ms": round(launch_ms, 3),
            "wait_ms": round(wait_ms, 3), "host_ms": round(build_ms + launch_ms, 3)}
