"""Which proposer rank 0 of a group runs, decided before any rank starts.

The same choice as on one machine (``session.choose_mode``), made by the
launcher so that a refused combination fails before any rank starts.
"""

from __future__ import annotations

from pathlib import Path

from ..models import gemma4_assistant
from ..models.cards import default_drafter
from ..models.load import ModelLoadError, read_config, resolve
from ..models.mtp import mtp_layer_count
from ..session import choose_mode


def group_mode(model: str, path: Path, draft_model: str | None,
               mtp: bool | None) -> tuple[str, str | None]:
    """``(mode, drafter)``: mode is "mtp", "draft" or "none"; drafter names the draft model."""
    has_mtp = mtp_layer_count(path) > 0
    if draft_model is None and mtp is None and not has_mtp:
        draft_model = default_drafter(model, path)
    mode = choose_mode(path, draft_model, mtp, has_mtp)
    if mode != "draft":
        return mode, None
    if gemma4_assistant.is_assistant(read_config(resolve(draft_model))):
        raise ModelLoadError("Gemma 4 assistants read the target's K/V: "
                             "not supported with --local-ranks yet")
    return mode, draft_model
