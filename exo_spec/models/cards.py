"""Model cards: what exo-spec knows about a model beyond its checkpoint.

``drafter_model_ids`` (exo's ModelCard field of the same name) lists, in
preference order, the drafters a target pairs with when the user names none.
A checkpoint directory may carry its own card as ``exo_spec_card.json``;
relative drafter paths in it are resolved against that directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .load import ModelLoadError

CARD_FILE = "exo_spec_card.json"


@dataclass(frozen=True)
class ModelCard:
    model_id: str
    drafter_model_ids: tuple[str, ...] = ()


# Google publishes an MTP assistant beside each Gemma 4 instruct model.
KNOWN_CARDS = {
    card.model_id: card
    for card in (
        ModelCard(model_id, (f"{model_id}-assistant",))
        for model_id in ("google/gemma-4-E2B-it", "google/gemma-4-E4B-it",
                         "google/gemma-4-26B-A4B-it", "google/gemma-4-31B-it")
    )
}


def card_for(model_id: str, path: Path) -> ModelCard:
    file = path / CARD_FILE
    if not file.is_file():
        return KNOWN_CARDS.get(model_id, ModelCard(model_id))
    try:
        data = json.loads(file.read_text())
        drafters = tuple(str(d) for d in data.get("drafter_model_ids", ()))
    except (OSError, json.JSONDecodeError, AttributeError, TypeError) as e:
        raise ModelLoadError(f"unreadable model card {file}: {e}") from e
    local = tuple(str(path / d) if d.startswith(".") else d for d in drafters)
    return ModelCard(data.get("model_id", model_id), local)


def default_drafter(model_id: str, path: Path) -> str | None:
    drafters = card_for(model_id, path).drafter_model_ids
    return drafters[0] if drafters else None
