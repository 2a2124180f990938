"""Which proposer rank 0 of a group runs, decided before any rank starts.

The same choice as on one machine (``session.plan``), made by the
launcher so that a refused combination fails before any rank starts.
"""

from __future__ import annotations

from pathlib import Path

from ..models.load import ModelLoadError
from ..session import plan


def group_mode(model: str, path: Path, draft_model: str | None,
               mtp: bool | None) -> tuple[str, str | None]:
    """``(mode, drafter)``: mode is "mtp", "draft" or "none"; drafter names the draft model."""
    mode, drafter = plan(model, path, draft_model, mtp)
    if mode == "assistant":
        raise ModelLoadError("Gemma 4 assistants read the target's K/V: "
                             "not supported with --local-ranks yet")
    return mode, drafter
