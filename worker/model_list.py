"""The models a worker can load without fetching anything (``ListModels``).

- Hugging Face ids whose snapshot is in the hub cache: a folder ``models--ORG--NAME``
  with a snapshot holding ``config.json``. The cache is ``HF_HUB_CACHE``, else
  ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``.
- Checkpoint directories (holding ``config.json``) directly under each
  ``--model-dir``, by path: what a LoadPlacement's ``model`` takes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

REPO_PREFIX = "models--"


def hub_cache() -> Path:
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def list_models(model_dirs: Iterable[Path], hub: Path | None = None) -> list[str]:
    """Hugging Face ids from ``hub`` (by default ``hub_cache()``) and the paths of the
    checkpoints under ``model_dirs``, sorted; a folder missing or unreadable adds none."""
    found = set(_hub_ids(hub or hub_cache()))
    for d in model_dirs:
        found.update(str(p) for p in _children(Path(d)) if (p / "config.json").is_file())
    return sorted(found)


def _hub_ids(hub: Path):
    for repo in _children(hub):
        if repo.name.startswith(REPO_PREFIX) and any(
                (s / "config.json").is_file() for s in _children(repo / "snapshots")):
            yield repo.name[len(REPO_PREFIX):].replace("--", "/")


def _children(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_dir()]
    except OSError:
        return []
