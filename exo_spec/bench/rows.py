"""The rows of a bench: one way of decoding each, run over the same prompts.

On one machine, all on the same target: mlx-lm ``generate_step`` (the baseline),
mlx-lm ``speculative_generate_step`` with the drafter (k=1..4), exo-spec plain,
with the drafter (k=1..4 and adaptive), with the target's MTP head (k=1..4 and
adaptive), with prompt lookup (k=1..4 and adaptive, then adaptive beside the MTP
head), and adaptive with the untrained drafter (drafts that never fit, so
adaptive k must fall back to plain decoding). An adaptive row keeps one policy
through its warm-up, prompts and repeats, as a worker does across its jobs. With
``--local-ranks N``: the same target pipelined over N local processes, plain
beside speculative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..job_series import JobSeries
from ..model_set import ModelSet
from ..spec_mode import ProposerKind
from . import runners
from .inputs import Inputs
from .timing import PromptRun, Run

SINGLE = "single"
PLAIN = "mlx-lm plain"  # what every single-machine row is compared with
GROUP_PLAIN = "group plain"


@dataclass
class Row:
    group: str  # SINGLE, or "N ranks"
    name: str
    k: str  # the fixed draft length, "auto" when adaptive, "-" without a proposer
    decode: Callable[[int, int], PromptRun]  # (prompt index, max tokens) -> one generation
    prompts: list[int]  # the prompt indices this row runs
    runs: list[Run] = field(default_factory=list)
    error: str | None = None

    def run(self, max_tokens: int, prompts: list[int] | None = None) -> Run | None:
        """Every prompt once, or None once the row has failed (``error`` says why)."""
        if self.error:
            return None
        run = Run()
        try:
            for i in self.prompts if prompts is None else prompts:
                run.prompts.append(self.decode(i, max_tokens))
        except (ValueError, RuntimeError, OSError) as e:
            self.error = str(e).splitlines()[0] if str(e) else type(e).__name__
            return None
        return run


def single_rows(inputs: Inputs, ks: list[int]) -> list[Row]:
    target = inputs.target
    ids = inputs.prompt_ids
    everyone = list(range(len(ids)))

    def row(name: str, k: str, decode: Callable[[int, int], PromptRun]) -> Row:
        return Row(SINGLE, name, k, decode, everyone)

    def exo(models: ModelSet, num_draft: int | None):
        jobs = JobSeries()
        return lambda i, n: runners.exo(jobs, models, num_draft, ids[i], n)

    rows = [row(PLAIN, "-", lambda i, n: runners.mlx_plain(target.model, ids[i], n))]
    if inputs.drafter:
        drafter = inputs.drafter.model
        rows += [row("mlx-lm speculative", str(k),
                     lambda i, n, k=k: runners.mlx_spec(target.model, drafter, k, ids[i], n))
                 for k in ks]
    rows.append(row("exo-spec plain", "-", exo(ModelSet(target, None, ProposerKind.NONE), None)))
    if inputs.drafter:
        models = ModelSet(target, inputs.drafter, ProposerKind.DRAFT)
        rows += [row("exo-spec drafter", str(k), exo(models, k)) for k in ks]
        rows.append(row("exo-spec drafter", "auto", exo(models, None)))
    if inputs.has_mtp:
        models = ModelSet(target, None, ProposerKind.MTP, inputs.mtp)
        rows += [row("exo-spec mtp", str(k), exo(models, k)) for k in ks]
        rows.append(row("exo-spec mtp", "auto", exo(models, None)))
    lookup = ModelSet(target, None, ProposerKind.NONE, lookup=True)
    rows += [row("exo-spec lookup", str(k), exo(lookup, k)) for k in ks]
    rows.append(row("exo-spec lookup", "auto", exo(lookup, None)))
    if inputs.has_mtp:
        rows.append(row("exo-spec lookup+mtp", "auto",
                        exo(ModelSet(target, None, ProposerKind.MTP, inputs.mtp, lookup=True),
                            None)))
    if inputs.untrained:
        rows.append(row("exo-spec untrained drafter", "auto",
                        exo(ModelSet(target, inputs.untrained, ProposerKind.DRAFT), None)))
    return rows


def group_rows(inputs: Inputs, ranks: int, num_prompts: int, ks: list[str],
               parallel: str = "pipeline", proposers: tuple[str, ...] = ("mtp", "drafter"),
               warmup_tokens: int = 0) -> list[Row]:
    """The target over ``ranks`` local processes (``parallel``: pipeline or tensor):
    plain, then MTP (pipeline only) and the drafter (of ``proposers``) with each draft
    length in ``ks`` ("auto" or a number). Each launch first decodes ``warmup_tokens``
    untimed (``exo-spec generate --warmup-tokens``)."""
    group = f"{ranks} ranks {parallel}"
    target = str(inputs.target.path)
    chosen = list(range(min(num_prompts, len(inputs.prompts))))

    def row(name: str, k: str, flags: list[str]) -> Row:
        if k != "auto" and flags != ["--no-spec"]:
            flags = [*flags, "--num-draft", k]
        flags = [*flags, "--parallel", parallel, "--warmup-tokens", str(warmup_tokens)]
        if inputs.bits:
            flags = [*flags, "--quantize", str(inputs.bits)]
        return Row(group, name, k, lambda i, n: runners.group(
            target, flags, inputs.prompts[i], n, ranks), chosen)

    rows = [row(GROUP_PLAIN, "-", ["--no-spec"])]
    if inputs.has_mtp and parallel == "pipeline" and "mtp" in proposers:
        rows += [row("group mtp", k, ["--mtp"]) for k in ks]
    if inputs.drafter and "drafter" in proposers:
        rows += [row("group drafter", k, ["--draft-model", str(inputs.drafter.path)])
                 for k in ks]
    return rows
