"""Regenerate the Python stubs in exo_spec/v1/ from proto/exo_spec/v1/*.proto.

    python proto/generate.py          # rewrite the checked-in stubs
    python proto/generate.py --check  # exit 1 if they differ from the protos

The stubs are checked in so that installing exo-spec needs no protoc;
grpcio-tools is pinned in the dev extra so the output is reproducible.
"""

from __future__ import annotations

import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted((ROOT / "proto" / "exo_spec" / "v1").glob("*.proto"))
STUBS = ROOT / "exo_spec" / "v1"
KEEP = {"__init__.py"}


def generate(out: Path) -> None:
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}",
            f"--pyi_out={out}", f"--grpc_python_out={out}", *map(str, PROTOS)]
    if protoc.main(args) != 0:
        raise SystemExit("proto/generate.py: protoc failed")


def stale() -> list[str]:
    """Stub files that are missing, extra or different from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        fresh = Path(tmp) / "exo_spec" / "v1"
        want = {p.name for p in fresh.iterdir()}
        have = {p.name for p in STUBS.iterdir() if p.is_file()} - KEEP
        differ = [n for n in want & have if not filecmp.cmp(fresh / n, STUBS / n, shallow=False)]
        return sorted((want ^ have) | set(differ))


def main() -> int:
    if "--check" in sys.argv[1:]:
        names = stale()
        if names:
            print(f"stubs out of date: {', '.join(names)}; run python proto/generate.py",
                  file=sys.stderr)
        return 1 if names else 0
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for p in STUBS.iterdir():
            if p.is_file() and p.name not in KEEP:
                p.unlink()
        for p in (Path(tmp) / "exo_spec" / "v1").iterdir():
            shutil.copy(p, STUBS / p.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
