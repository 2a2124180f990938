"""Fixed-width passes: every decoding pass of the target, plain step or verify round, at
one width, the padding taken back, and the output still mlx-lm's own greedy decode."""

from __future__ import annotations

import mlx.core as mx
import pytest

from exo_spec.decoder_factory import make_decoder
from exo_spec.engine import CachedModel, DraftModel, Mtp, Sampling, SpecDecoder
from exo_spec.model_set import load_models
from exo_spec.models.mtp import load_mtp

from decoders import PROMPTS, always_pipelined, draft_length, loaded, prompt_ids, run
from reference import greedy_reference

WIDTH = 6


class CountedWidths(CachedModel):
    """The target as decoding uses it, noting the rows of every pass it runs."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.widths: list[int] = []

    def _forward(self, tokens: mx.array, hidden: bool = False):
        self.widths.append(tokens.shape[0])
        return super()._forward(tokens, hidden)


def decoder(path, proposer: str, k: int | None) -> SpecDecoder:
    model = loaded(path).model
    target = CountedWidths(model, pass_width=WIDTH)
    if proposer == "drafter":
        chosen = DraftModel(loaded(path.parent / "drafter").model)
    elif proposer == "mtp":
        chosen = Mtp(load_mtp(path, model), model)
    else:
        chosen = None
    return SpecDecoder(target, chosen, draft_length=draft_length(k),
                       pipelining=always_pipelined())


@pytest.mark.parametrize("name, proposer, k", [
    ("llama", None, None),
    ("llama", "drafter", 1),
    ("llama", "drafter", 3),
    ("llama", "drafter", None),
    ("qwen3_5", None, None),
    ("qwen3_5", "mtp", 2),
    ("qwen3_5", "mtp", 4),
    ("qwen3_5", "mtp", None),
])
def test_every_pass_has_one_width_and_the_output_is_unchanged(checkpoints, name, proposer, k):
    path = getattr(checkpoints, name)
    prompt = prompt_ids(path, PROMPTS[0])
    spec = decoder(path, proposer, k)
    assert run(spec, prompt, 40) == greedy_reference(loaded(path).model, prompt, 40)
    widths = spec.target.widths
    prefill = 1 + (len(prompt) - 1) // 512
    assert widths[prefill:] and set(widths[prefill:]) == {WIDTH}, widths
    # The caches hold the prompt and the kept tokens, never the padding.
    kv = next(c for c in spec.target.cache if hasattr(c, "offset"))
    assert kv.offset == len(prompt) + 40 - 1


@pytest.mark.parametrize("k, fixed_width, width", [(None, None, None), (None, True, 5),
                                                    (3, True, 4), (3, False, None)])
def test_the_decoder_factory_pads_to_the_widest_round(checkpoints, k, fixed_width, width):
    """Off by default on the CPU, where a row does not depend on its pass's width."""
    models = load_models(str(checkpoints.llama), str(checkpoints.drafter))
    decoder = make_decoder(models, sampling=Sampling(), num_draft=k, fixed_width=fixed_width)
    assert decoder.target.pass_width == width
