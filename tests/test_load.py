"""The load benchmark, small: concurrent clients, cancels and queue refusals on a
local cluster, every job ending SUCCEEDED or CANCELLED and none left behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LOAD = Path(__file__).parent.parent / "benchmarks" / "load.py"


def test_many_clients_lose_no_job():
    proc = subprocess.run(
        [sys.executable, str(LOAD), "--clients", "24", "--jobs", "120", "--workers", "1",
         "--cancel-share", "0.3", "--max-queue", "8", "--job-timeout", "60"],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "120 jobs from 24 clients" in proc.stdout
    assert "retried" in proc.stdout and " 0 submissions refused" not in proc.stdout
    assert "jobs still queued or running at the end: 0" in proc.stdout
    print(proc.stdout)
