"""`exo-spec demo` on models made by `exo-spec make-models --size test`: a real
coordinator and two real workers, a speculative and a plain job across both."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_across_two_workers(trained):
    proc = subprocess.run([sys.executable, "-m", "exo_spec.cli", "demo", "--models",
                           str(trained.path), "--max-tokens", "24"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("decode across 2"))
    table = lines[start:]
    assert table[1].startswith("speculative (MTP)") and table[2].startswith("plain")
    assert table[3] == "outputs: identical token for token (speculation is lossless)"
    assert "coordinator at 127.0.0.1:" in proc.stderr and "local-0" in proc.stderr


def test_demo_refuses_a_folder_without_models(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "exo_spec.cli", "demo", "--models",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(f"{tmp_path} holds no target/: make it with "
                                        "exo-spec make-models")
