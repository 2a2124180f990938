"""The checked-in gRPC stubs match the protos, ruff lints every other Python file,
and coordinator/ and worker/ install as exo_spec.coordinator and exo_spec.worker,
editable and from a wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"exo_spec": ROOT / "exo_spec", "exo_spec/coordinator": ROOT / "coordinator",
          "exo_spec/worker": ROOT / "worker"}


def test_stubs_match_protos():
    done = subprocess.run([sys.executable, "proto/generate.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_ruff_lints_every_python_file_but_the_generated_stubs():
    """ruff's default excludes skip folders with common names (dist/, build/, ...):
    a package named so would silently go unlinted."""
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    ruff = Path(sys.executable).with_name("ruff")
    linted = subprocess.run([str(ruff), "check", "--show-files", "."], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    linted = {Path(p).resolve().relative_to(ROOT).as_posix() for p in linted}
    generated = {p for p in tracked if p.startswith("exo_spec/v1/")}
    assert generated and set(tracked) - generated - linted == set()


def test_editable_install_maps_roles():
    import exo_spec.coordinator
    import exo_spec.worker

    assert Path(exo_spec.coordinator.__file__).parent == ROOT / "coordinator"
    assert Path(exo_spec.worker.__file__).parent == ROOT / "worker"


def _sources() -> set[str]:
    names = set()
    for prefix, root in MAPPED.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root)
            if "__pycache__" not in rel.parts and not (
                prefix == "exo_spec" and rel.parts[0] in ("coordinator", "worker")
            ):
                names.add(f"{prefix}/{rel.as_posix()}")
    return names


def test_wheel_holds_every_module_and_installs(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path), str(ROOT)], check=True)
    (wheel,) = tmp_path.glob("exo_spec-*.whl")
    held = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    assert _sources() - held == set()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True)
    where = subprocess.run(
        [str(python), "-c", "import importlib.util as u; "
         "print(u.find_spec('exo_spec.coordinator').origin); "
         "print(u.find_spec('exo_spec.worker').origin)"],
        cwd=tmp_path, capture_output=True, text=True, check=True).stdout.split()
    assert all(str(venv) in w for w in where), where
