"""A ``SpecDecoder`` for one job on a ``ModelSet``: the proposer its mode names (and a
prompt lookup where the set asks for one), the draft-length policy, and the target to
verify with."""

from __future__ import annotations

import mlx.core as mx

from .engine import (
    AdaptiveDraftLength,
    CachedModel,
    DraftModel,
    FixedDraftLength,
    Mtp,
    Sampling,
    SpecDecoder,
)
from .engine.assistant import Gemma4Assistant
from .engine.batch import BatchDecoder
from .engine.dflash import DFlash
from .engine.prefix_cache import PrefixCache
from .engine.prompt_lookup import PromptLookup
from .engine.target import Target
from .group.prefix_cache import GroupPrefixCache
from .model_set import ModelSet
from .models.load import LoadedModel, parameter_count, text_config
from .proposer_choice import dflash_across_ranks
from .sampling import Penalties
from .spec_mode import ProposerKind

MTP_COST_PRIOR = 0.1  # an MTP layer costs a small fraction of the target's pass
# A copied draft costs nothing to make; what a longer round adds is the verify's width.
LOOKUP_COST_PRIOR = 0.05


def make_decoder(
    models: ModelSet,
    *,
    sampling: Sampling,
    penalties: Penalties | None = None,
    logprobs: int | None = None,
    num_draft: int | None = None,
    max_kv_size: int | None = None,
    target: Target | None = None,
    draft_length: AdaptiveDraftLength | None = None,
    prefix_cache: PrefixCache | GroupPrefixCache | None = None,
    fixed_width: bool | None = None,
) -> SpecDecoder:
    """``target``: what to verify with (a group's), by default ``models.target`` on this
    machine; ``draft_length``: the adaptive policy of an earlier job on these models, to
    go on with (unless ``num_draft`` fixes the length); ``penalties`` and ``logprobs``:
    as ``SpecDecoder`` takes them (ValueError for a logit bias outside the vocabulary);
    ``prefix_cache``: the caches of earlier prompts on these models (``SpecDecoder``),
    with this machine's own target, or with a group's target a
    ``group.prefix_cache.GroupPrefixCache`` (its ranks hold their own stages' caches);
    ``fixed_width``: run every decoding pass of a target on this machine at the
    widest round's width (``CachedModel.pass_width``); None: where the target runs on
    a GPU (on the CPU a row's logits do not depend on the pass's width)."""
    if isinstance(prefix_cache, PrefixCache) and target is not None:
        raise ValueError("a prefix cache serves only a target on this machine")
    penalties = penalties or Penalties()
    check_penalties(models, penalties)
    local = target is None
    dflash = models.mode == ProposerKind.DFLASH
    if dflash and not local:
        raise ValueError(dflash_across_ranks(str(models.drafter.path)))
    target = target or CachedModel(models.target.model, max_kv_size=max_kv_size,
                                   taps=models.drafter.model.target_layer_ids if dflash
                                   else None)
    proposer = None
    cost_prior = LOOKUP_COST_PRIOR if models.mode == ProposerKind.NONE else MTP_COST_PRIOR
    if models.mode == ProposerKind.MTP:
        proposer = Mtp(models.mtp, models.target.model)
    elif models.mode == ProposerKind.DRAFT:
        proposer = DraftModel(models.drafter.model, max_kv_size=max_kv_size)
        cost_prior = _parameter_ratio(models.drafter, models.target)
    elif models.mode == ProposerKind.ASSISTANT:
        proposer = Gemma4Assistant(models.drafter.model, target)
        cost_prior = _parameter_ratio(models.drafter, models.target)
    elif dflash:
        proposer = DFlash(models.drafter.model, models.target.model)
        # One drafter pass drafts the whole block: its cost is shared by the block's drafts.
        cost_prior = _parameter_ratio(models.drafter, models.target) / proposer.max_drafts
    if dflash and num_draft and num_draft > proposer.max_drafts:
        raise ValueError(f"--num-draft {num_draft} is more than DFlash drafter "
                         f"{models.drafter.path} drafts ({proposer.max_drafts}: its block "
                         "less the newest token)")
    if num_draft:
        draft_length = FixedDraftLength(num_draft)
    elif draft_length:
        draft_length.start_job()
    elif dflash:  # draft lengths up to the whole block: drafting them costs one pass
        draft_length = AdaptiveDraftLength(max_k=proposer.max_drafts, cost_prior=cost_prior)
    else:
        draft_length = AdaptiveDraftLength(cost_prior=cost_prior)
    if local and (mx.default_device() == mx.gpu if fixed_width is None else fixed_width):
        target.pass_width = widest_round(draft_length)
        # The assistant drafts from the target's own K/V up to its end, and a round's
        # padding stays there until the round is read: no round may start before that.
        target.chains_rounds = models.mode != ProposerKind.ASSISTANT
    return SpecDecoder(
        target,
        proposer,
        sampling=sampling,
        draft_length=draft_length,
        eos_token_ids=set(models.target.tokenizer.eos_token_ids),
        penalties=penalties,
        logprobs=logprobs,
        prefix_cache=prefix_cache,
        lookup=PromptLookup() if models.lookup else None,
    )


def make_batch_decoder(models: ModelSet) -> BatchDecoder:
    """A ``BatchDecoder`` on ``models``, drafting with their drafter model or MTP head
    (or plain); ValueError or TypeError where a batch cannot hold them: another
    proposer, prompt lookup, or layers whose caches ``engine.batch`` cannot rewind row
    by row."""
    batchable = (ProposerKind.NONE, ProposerKind.DRAFT, ProposerKind.MTP)
    if models.lookup or models.mode not in batchable:
        raise ValueError("batched decoding drafts with a drafter model, an MTP head or not "
                         f"at all, not with {'prompt lookup' if models.lookup else models.mode}")
    eos = set(models.target.tokenizer.eos_token_ids)
    if models.mode == ProposerKind.NONE:
        return BatchDecoder(models.target.model, eos_token_ids=eos)
    if models.mode == ProposerKind.MTP:
        return BatchDecoder(models.target.model, Mtp(models.mtp, models.target.model),
                            eos_token_ids=eos, cost_prior=MTP_COST_PRIOR)
    return BatchDecoder(models.target.model, models.drafter.model, eos_token_ids=eos,
                        cost_prior=_parameter_ratio(models.drafter, models.target))


def widest_round(draft_length: FixedDraftLength | AdaptiveDraftLength) -> int:
    """Rows of the widest verify pass ``draft_length`` may ask for: its longest draft
    and the token before it."""
    return (draft_length.max_k if draft_length.adaptive else draft_length.k) + 1


def check_penalties(models: ModelSet, penalties: Penalties) -> None:
    """ValueError for a logit bias on a token id the target has no logit for (where its
    config names the vocabulary size; the decoder checks again against its logits)."""
    vocab = text_config(models.target.config).get("vocab_size")
    bad = [t for t in penalties.logit_bias if vocab and not 0 <= t < vocab]
    if bad:
        raise ValueError(f"logit_bias token id {bad[0]} is outside the vocabulary "
                         f"(0..{vocab - 1})")


def _parameter_ratio(drafter: LoadedModel, target: LoadedModel) -> float:
    return max(parameter_count(drafter.model) / parameter_count(target.model), 0.05)
