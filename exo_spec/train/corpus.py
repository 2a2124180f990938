"""Training text from the Python standard library's own sources, with a held-out split.

Every machine that runs exo-spec has these files. A file is held out when the
hash of its path (relative to the stdlib directory) says so, so the split is the
same on every machine with the same Python, whatever order the files are found in.
Held-out files give the prompts; nothing from them is trained on.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path

import numpy as np

# Machine-specific packages and data tables rather than code.
SKIPPED_DIRS = {"site-packages", "dist-packages", "encodings", "pydoc_data", "__pycache__"}
# Test suites: left out unless a size needs more text, since the prompts are cut from
# library modules and a small model that saw tests writes assertEqual loops.
TEST_DIRS = {"test", "tests", "idle_test"}
HELD_OUT_PERCENT = 10


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _hash(rel: str) -> int:
    return int.from_bytes(hashlib.sha256(rel.encode()).digest()[:8], "big")


def is_held_out(rel: str) -> bool:
    return _hash(rel) % 100 < HELD_OUT_PERCENT


def source_files(root: Path | None = None, include_tests: bool = False) -> list[str]:
    """Relative paths of the stdlib's ``.py`` files, in hash order: a deterministic
    shuffle, so a prefix of the list samples the whole library, not its first folders."""
    root = root or stdlib_root()
    skipped = SKIPPED_DIRS if include_tests else SKIPPED_DIRS | TEST_DIRS
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in skipped]
        rel = Path(folder).relative_to(root)
        files += [(rel / n).as_posix() for n in names if n.endswith(".py")]
    return sorted(files, key=lambda rel: (_hash(rel), rel))


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def training_documents(max_chars: int, include_tests: bool = False,
                       root: Path | None = None) -> list[str]:
    """Training files' text, in hash order, until ``max_chars`` characters."""
    root = root or stdlib_root()
    docs, total = [], 0
    for rel in source_files(root, include_tests):
        if is_held_out(rel) or (text := _read(root, rel)) is None or not text.strip():
            continue
        docs.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return docs


def held_out_prompts(count: int, min_chars: int = 200, max_chars: int = 400,
                     root: Path | None = None) -> list[str]:
    """``count`` snippets of whole lines from held-out library files, one per file,
    each starting at a ``def`` line past the first third of its file."""
    root = root or stdlib_root()
    prompts = []
    for rel in source_files(root):
        if len(prompts) == count:
            break
        if not is_held_out(rel):
            continue
        if (text := _read(root, rel)) and (snippet := _snippet(text, min_chars, max_chars)):
            prompts.append(snippet)
    return prompts


def _snippet(text: str, min_chars: int, max_chars: int) -> str | None:
    lines = text.splitlines(keepends=True)
    for start in range(len(lines) // 3, len(lines)):
        if not lines[start].lstrip().startswith("def "):
            continue
        snippet = ""
        for line in lines[start:]:
            if len(snippet) + len(line) > max_chars:
                break
            snippet += line
        if len(snippet) >= min_chars:
            return snippet
    return None


def token_stream(documents: list[str], tokenizer_dir: Path, separator: str) -> np.ndarray:
    """The documents as one int32 token array, each followed by ``separator``."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    sep = tokenizer.token_to_id(separator)
    encoded = tokenizer.encode_batch(documents)
    return np.concatenate([np.array(e.ids + [sep], dtype=np.int32) for e in encoded])
