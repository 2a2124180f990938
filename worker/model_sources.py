"""Where a worker loads models from: its model directories (``exo-spec worker
--model-dir``, default ``~/models``), the Hugging Face hub cache, and the Hugging Face
hub itself only with ``--allow-downloads``.

A model or drafter name, a request's or one a model card names, is taken as

- a path relative to a model directory (the first that holds it);
- an absolute path (``~`` expanded) inside a model directory or the hub cache once
  symlinks and ``..`` are resolved;
- a Hugging Face id (ORG/NAME, or NAME) whose snapshot is in the hub cache, or with
  downloads allowed any Hugging Face id, fetched then.

Any other path is INVALID_ARGUMENT, in the same words whether it exists or not, so a
request cannot probe the node's files; a name that would be allowed but is not there
is NOT_FOUND. Nothing here imports MLX: the coordinator checks names with
``check_name`` too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from grpc import StatusCode

from ..status import StatusError
from .model_list import hub_cache

DEFAULT_MODEL_DIR = Path("~/models")
# The longest model name taken (macOS's PATH_MAX): a longer one is refused by its
# length, never quoted back in a status message.
MAX_NAME_CHARS = 1024
# ORG/NAME or NAME, as the hub takes them (no "--" or "..")
HUB_ID = re.compile(r"(?!.*(?:--|\.\.))(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*")


def check_name(name: str, what: str = "model") -> None:
    """INVALID_ARGUMENT for a name longer than ``MAX_NAME_CHARS``, saying only its length."""
    if len(name) > MAX_NAME_CHARS:
        raise StatusError(StatusCode.INVALID_ARGUMENT,
                          f"the {what} name is {len(name)} characters long: at most "
                          f"{MAX_NAME_CHARS}")


@dataclass(frozen=True)
class ModelSources:
    dirs: tuple[Path, ...]  # resolved
    allow_downloads: bool = False
    hub: Path = field(default_factory=hub_cache)

    @classmethod
    def of(cls, dirs: Iterable[Path], allow_downloads: bool = False) -> ModelSources:
        return cls(tuple(Path(d).expanduser().resolve() for d in dirs), allow_downloads)

    def locate(self, name: str, node_id: str, what: str = "model") -> Path:
        """The checkpoint directory ``name`` takes (``what``, "model" or "drafter", and
        ``node_id`` word the refusals); StatusError as the module says."""
        check_name(name, what)
        roots = (*self.dirs, self.hub.resolve())
        path = Path(name).expanduser()
        outside = False
        for candidate in [path] if path.is_absolute() else [d / path for d in self.dirs]:
            try:
                real = candidate.resolve()
                if not any(real.is_relative_to(root) for root in roots):
                    outside = True  # not looked at: whether it exists is not said
                    continue
                if real.exists():
                    return _checkpoint(real, name, what)
            except (OSError, ValueError):  # a name no file system takes
                continue
        if outside:
            raise StatusError(StatusCode.INVALID_ARGUMENT,
                              f"{what} {name} is not inside node {node_id}'s model "
                              "directories (exo-spec worker --model-dir)")
        if not path.is_absolute() and HUB_ID.fullmatch(name):
            return self._from_hub(name, node_id, what)
        raise StatusError(StatusCode.NOT_FOUND,
                          f"{what} {name} not found on node {node_id}: no such checkpoint in its "
                          f"model directories ({', '.join(map(str, self.dirs)) or 'none'})")

    def _from_hub(self, name: str, node_id: str, what: str) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
        from mlx_lm.utils import DEFAULT_ALLOW_PATTERNS

        try:
            return _checkpoint(Path(snapshot_download(
                name, cache_dir=self.hub, allow_patterns=DEFAULT_ALLOW_PATTERNS,
                local_files_only=not self.allow_downloads)), name, what)
        except LocalEntryNotFoundError:
            reason = ("not in its Hugging Face cache, and downloads are off (exo-spec worker "
                      "--allow-downloads)") if not self.allow_downloads \
                else "the Hugging Face hub cannot be reached"
        except StatusError:
            raise
        except Exception as e:  # the hub raises many types, over several lines
            reason = f"cannot fetch it from Hugging Face: {str(e).strip().splitlines()[0]}"
        raise StatusError(StatusCode.NOT_FOUND, f"{what} {name} not found on node {node_id}: "
                                                f"{reason}")


def _checkpoint(path: Path, name: str, what: str) -> Path:
    if not (path / "config.json").is_file():
        raise StatusError(StatusCode.INVALID_ARGUMENT,
                          f"{what} {name} is not a model directory (no config.json)")
    return path
