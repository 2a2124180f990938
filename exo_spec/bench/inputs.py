"""What a bench run decodes: the target, the drafters and the prompts.

``--models DIR`` is what ``exo-spec make-models`` writes: DIR/target (with MTP
heads), DIR/drafter, DIR/untrained-drafter and DIR/prompts.json (a list of
held-out prompt strings, fed raw, without a chat template). ``--model``,
``--draft-model``, ``--untrained-draft-model`` and ``--prompts`` name them one
by one, or override what DIR holds. ``--edit-task`` adds ``EDIT_TASK``, a file to
rewrite with a small change: the output repeats most of its prompt, the case prompt
lookup drafts for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from ..models import synthetic
from ..models.load import (
    LoadedModel,
    ModelLoadError,
    check_same_vocabulary,
    load,
    parameter_count,
)
from ..models.mtp import load_mtp, mtp_layer_count

DEFAULT_PROMPT_CHARS = 400  # without prompts: the start of the synthetic corpus

# A file, then the start of its rewrite with one identifier renamed: raw text that any
# model continues (an instruction-tuned one and a code model trained on sources alike).
_EDIT_FILE = '''def moving_average(values, window):
    """The mean of each run of ``window`` consecutive values."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    total = sum(values[:window])
    averages = [total / window]
    for i in range(window, len(values)):
        total += values[i] - values[i - window]
        averages.append(total / window)
    return averages


def cumulative(values):
    """The running sums of ``values``."""
    total = 0
    out = []
    for value in values:
        total += value
        out.append(total)
    return out
'''
EDIT_TASK = (f"# stats.py\n{_EDIT_FILE}\n\n# stats.py, with `total` renamed to `running_sum`\n"
             f"{_EDIT_FILE.splitlines()[0]}\n")


@dataclass
class Inputs:
    target: LoadedModel
    drafter: LoadedModel | None
    untrained: LoadedModel | None
    mtp: nn.Module | None  # the target's MTP head, quantized as the target is
    prompts: list[str]
    prompt_ids: list[list[int]]
    manifest: dict | None = None
    bits: int | None = None  # --quantize: every row quantizes the models it loads

    @property
    def has_mtp(self) -> bool:
        return self.mtp is not None

    def describe(self) -> dict:
        def weights(model: nn.Module) -> dict:
            floats = {str(v.dtype) for _, v in tree_flatten(model.parameters())
                      if mx.issubdtype(v.dtype, mx.floating)}
            bits = {m.bits for _, m in model.named_modules() if hasattr(m, "bits")}
            return {"parameters": parameter_count(model), "dtype": ",".join(sorted(floats)),
                    "quantized_bits": sorted(bits)}

        def one(m: LoadedModel | None):
            if m is None:
                return None
            return {"path": str(m.path), "model_type": m.config.get("model_type"),
                    **weights(m.model)}

        return {"target": {**one(self.target),
                           "mtp": weights(self.mtp) if self.has_mtp else None},
                "drafter": one(self.drafter), "untrained_drafter": one(self.untrained),
                "prompts": len(self.prompts),
                "prompt_tokens": [len(p) for p in self.prompt_ids],
                "manifest": self.manifest}


def _optional(path: Path) -> str | None:
    return str(path) if (path / "config.json").is_file() else None


def gather(args) -> Inputs:
    paths = {"target": args.model, "drafter": args.draft_model,
             "untrained": args.untrained_draft_model}
    prompts_file = args.prompts
    manifest = None
    if args.models:
        root = Path(args.models).expanduser()
        if not (root / "target" / "config.json").is_file():
            raise ModelLoadError(f"{root} has no target/ (expected what `exo-spec "
                                 "make-models --out DIR` writes)")
        paths["target"] = paths["target"] or str(root / "target")
        paths["drafter"] = paths["drafter"] or _optional(root / "drafter")
        paths["untrained"] = paths["untrained"] or _optional(root / "untrained-drafter")
        if prompts_file is None and (root / "prompts.json").is_file():
            prompts_file = root / "prompts.json"
        if (root / "manifest.json").is_file():
            manifest = json.loads((root / "manifest.json").read_text())
    if not paths["target"]:
        raise ValueError("name the models: --models DIR or --model PATH")
    target = load(paths["target"], bits=args.quantize)
    mtp = load_mtp(target.path, target.model, args.quantize) \
        if mtp_layer_count(target.path) else None
    drafters = []
    for key in ("drafter", "untrained"):
        drafter = load(paths[key], bits=args.quantize) if paths[key] else None
        if drafter:
            check_same_vocabulary(target, drafter)
        drafters.append(drafter)
    prompts = list(args.prompt or [])
    if prompts_file:
        loaded = json.loads(Path(prompts_file).read_text())
        if not (isinstance(loaded, list) and all(isinstance(p, str) for p in loaded)):
            raise ValueError(f"{prompts_file} must hold a JSON list of prompt strings")
        prompts += loaded
    if not prompts:
        prompts = [synthetic.corpus_text()[:DEFAULT_PROMPT_CHARS]]
    prompts = prompts[: args.num_prompts] + ([EDIT_TASK] if args.edit_task else [])
    ids = [target.tokenizer.encode(p) for p in prompts]
    if any(not p for p in ids):
        raise ValueError("a prompt encodes to no tokens")
    return Inputs(target, drafters[0], drafters[1], mtp, prompts, ids, manifest, args.quantize)
