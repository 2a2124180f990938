"""Build a decoder for one request from model paths and flags: the single-node job."""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.tokenizer_utils import TokenizerWrapper

from .models import gemma4_assistant
from .models.cards import default_drafter
from .models.load import (
    LoadedModel,
    ModelLoadError,
    check_same_vocabulary,
    load,
    parameter_count,
    quantize,
    read_config,
    resolve,
)
from .models.mtp import load_mtp, mtp_layer_count
from .spec import (
    AdaptiveDraftLength,
    CachedModel,
    DraftModel,
    FixedDraftLength,
    Mtp,
    Sampling,
    SpecDecoder,
)
from .spec.assistant import Gemma4Assistant


@dataclass
class Models:
    target: LoadedModel
    drafter: LoadedModel | None
    mode: str  # "mtp", "draft", "assistant" or "none"
    mtp: nn.Module | None = None  # mode "mtp": the target's MTP head, read once for every job

    @classmethod
    def of(cls, target: LoadedModel, drafter: LoadedModel | None, mode: str,
           bits: int | None = None) -> Models:
        """``Models`` for ``mode``, reading the target's MTP head (quantized to ``bits``,
        as the target was loaded) when it is "mtp"."""
        return cls(target, drafter, mode,
                   load_mtp(target.path, target.model, bits) if mode == "mtp" else None)


def choose_mode(target_path, draft_model: str | None, mtp: bool | None, has_mtp: bool) -> str:
    """--mtp forces MTP and --no-spec (mtp=False) turns speculation off; a drafter the
    user names is used; otherwise the checkpoint's MTP heads when it has them, else plain."""
    if mtp is True:
        if draft_model:
            raise ModelLoadError("--mtp and --draft-model are exclusive: pick one proposer")
        if not has_mtp:
            raise ModelLoadError(f"--mtp: {target_path} has no MTP weights")
        return "mtp"
    if mtp is False:
        return "none"
    if draft_model:
        return "draft"
    return "mtp" if has_mtp else "none"


def plan(model: str, path, draft_model: str | None, mtp: bool | None) -> tuple[str, str | None]:
    """``(mode, drafter)`` before anything heavy loads: mode is "mtp", "draft",
    "assistant" or "none", drafter the draft model to load (the model card's when
    the user names none and the checkpoint has no MTP heads)."""
    has_mtp = mtp_layer_count(path) > 0
    if draft_model is None and mtp is None and not has_mtp:
        draft_model = default_drafter(model, path)
    mode = choose_mode(path, draft_model, mtp, has_mtp)
    if mode != "draft":
        return mode, None
    if gemma4_assistant.is_assistant(read_config(resolve(draft_model))):
        return "assistant", draft_model
    return mode, draft_model


def load_models(model: str, draft_model: str | None = None, mtp: bool | None = None,
                bits: int | None = None) -> Models:
    """``bits``: quantize every model read here (see ``models.load.quantize``)."""
    target = load(model, bits=bits)
    mode, drafter_id = plan(model, target.path, draft_model, mtp)
    if mode == "assistant":
        assistant = gemma4_assistant.load_for(resolve(drafter_id), target)
        if bits:
            mx.eval(quantize(assistant.model, bits).parameters())
        return Models(target, assistant, mode)
    drafter = None
    if mode == "draft":
        drafter = load(drafter_id, bits=bits)
        check_same_vocabulary(target, drafter)
    return Models.of(target, drafter, mode, bits)


def make_decoder(
    models: Models,
    *,
    sampling: Sampling,
    num_draft: int | None = None,
    max_kv_size: int | None = None,
    cached: CachedModel | None = None,
    draft_length: AdaptiveDraftLength | None = None,
) -> SpecDecoder:
    """``cached``: the target to verify with (a group's), by default ``models.target`` here;
    ``draft_length``: the adaptive policy of an earlier job on these models, to go on
    with (unless ``num_draft`` fixes the length)."""
    target = models.target
    cached = cached or CachedModel(target.model, max_kv_size=max_kv_size)
    proposer = None
    cost_prior = 0.1  # an MTP layer costs a small fraction of the target's pass
    if models.mode == "mtp":
        proposer = Mtp(models.mtp, target.model)
    elif models.mode == "draft":
        proposer = DraftModel(models.drafter.model, max_kv_size=max_kv_size)
        cost_prior = _parameter_ratio(models.drafter, target)
    elif models.mode == "assistant":
        proposer = Gemma4Assistant(models.drafter.model, cached)
        cost_prior = _parameter_ratio(models.drafter, target)
    if num_draft:
        draft_length = FixedDraftLength(num_draft)
    elif draft_length:
        draft_length.start_job()
    else:
        draft_length = AdaptiveDraftLength(cost_prior=cost_prior)
    return SpecDecoder(
        cached,
        proposer,
        sampling=sampling,
        draft_length=draft_length,
        eos_token_ids=set(target.tokenizer.eos_token_ids),
    )


class Jobs:
    """Decoders for one job after another on the same models, each going on with the
    adaptive policy of the jobs before: its round costs are this machine's, its kernels
    stay built (see ``AdaptiveDraftLength.start_job``). A worker's placement decodes
    this way, and so do ``generate``'s timed job after its warm-up and a bench row."""

    policy: AdaptiveDraftLength | None = None

    def new_decoder(self, models: Models, **kwargs) -> SpecDecoder:
        """``make_decoder(models, **kwargs)``, with the policy of the jobs before."""
        decoder = make_decoder(models, draft_length=self.policy, **kwargs)
        if decoder.draft_length.adaptive:
            self.policy = decoder.draft_length
        return decoder


def _parameter_ratio(drafter: LoadedModel, target: LoadedModel) -> float:
    return max(parameter_count(drafter.model) / parameter_count(target.model), 0.05)


def encode_prompt(
    tokenizer: TokenizerWrapper, prompt: str, chat_template: bool = True
) -> list[int]:
    """mlx-lm's convention: the chat template when the tokenizer has one."""
    if chat_template and tokenizer.has_chat_template:
        messages = [{"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    return tokenizer.encode(prompt)
