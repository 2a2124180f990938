"""``exo-spec generate``: one request on this machine."""

from __future__ import annotations

import sys

from ..auth.key_file import add_key_file_flag
from ..models.quantize import QUANTIZE_BITS
from ..sampling import (
    DEFAULT_CONTEXT_SIZE,
    MAX_CONTEXT_SIZE,
    Penalties,
    Sampling,
    check_seed,
)
from ..spec_mode import SpecMode, check_request
from ..stop_strings import check_stop

FLAG_NAMES = {"mtp": "--mtp", "none": "--no-spec", "draft_model": "--draft-model",
              "num_draft": "--num-draft"}


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("--model", required=True, help="local path or Hugging Face id")
    p.add_argument("--prompt", required=True)
    p.add_argument("--draft-model",
                   help="drafter sharing the target's tokenizer, a Gemma 4 assistant "
                   "or a DFlash block drafter")
    spec = p.add_mutually_exclusive_group()
    spec.add_argument("--mtp", dest="spec", action="store_const", const=SpecMode.MTP,
                      default=SpecMode.AUTO, help="draft with the checkpoint's own MTP heads")
    spec.add_argument("--no-spec", dest="spec", action="store_const", const=SpecMode.NONE,
                      help="plain decoding, no speculation")
    p.add_argument("--prompt-lookup", action="store_true",
                   help="draft by copying what followed the newest tokens' latest earlier "
                        "occurrence in the prompt and output (no weights); with "
                        "--draft-model or --mtp, beside that proposer")
    p.add_argument("--num-draft", type=int, help="fixed draft length (default: adaptive)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temp", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtract this from the logit of every token in the recent context")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtract this from a token's logit once per time it is in the context")
    p.add_argument("--repetition-penalty", type=float, default=0.0,
                   help="divide positive (multiply negative) logits of tokens in the context "
                        "by this (0 or 1: off)")
    p.add_argument("--penalty-context-size", type=int, default=DEFAULT_CONTEXT_SIZE,
                   metavar="N", help="the penalties look at the newest N tokens, prompt "
                                     f"included (default {DEFAULT_CONTEXT_SIZE})")
    p.add_argument("--logit-bias", action="append", metavar="ID=BIAS",
                   help="add BIAS to token ID's logit (repeatable)")
    p.add_argument("--logprobs", type=int, metavar="N",
                   help="with --json: each token's log-probability and the N likeliest "
                        "alternatives (0..20)")
    p.add_argument("--max-kv-size", type=int, help="rotating KV cache of this many tokens")
    p.add_argument("--fixed-width", choices=("auto", "on", "off"), default="auto",
                   help="run every decoding pass at the widest round's width, so that a "
                        "row's logits never depend on the draft length and greedy output "
                        "is the same bit for bit with speculation on or off (auto: on a GPU; "
                        "a target on this machine)")
    p.add_argument("--quantize", type=int, choices=QUANTIZE_BITS, metavar="BITS",
                   help="quantize a float checkpoint as it loads (4 or 8 bits, group size "
                        "64: the layout of mlx-community checkpoints); drafter and MTP "
                        "head too")
    p.add_argument("--warmup-tokens", type=int, default=0, metavar="N",
                   help="first decode N tokens of the prompt, unprinted and uncounted, so "
                        "the stats show steady-state speed (MLX builds kernels on first use; "
                        "adaptive k goes on with what the warm-up measured)")
    p.add_argument("--ignore-chat-template", action="store_true")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="end the output before the first occurrence of STR (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.add_argument("--local-ranks", type=int,
                   help="pipeline the target over this many local processes (ring backend)")
    p.add_argument("--split", help="layers per rank, rank 0 first, e.g. 3,1 (default: even)")
    p.add_argument("--parallel", choices=("pipeline", "tensor"), default="pipeline",
                   help="with --local-ranks: layer ranges per rank, or mlx-lm's tensor sharding")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="run the job on a cluster's coordinator instead of this machine")
    p.add_argument("--nodes", type=int,
                   help="with --coordinator: run across exactly N nodes (default: the fewest)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="with --coordinator: give up (and cancel the job) after this long")
    add_key_file_flag(p, "with --coordinator: ")
    p.set_defaults(run=run)


def _check(args):
    """The job's ``Sampling``; ValueError for flags out of range or contradicting."""
    if args.max_tokens <= 0:
        raise ValueError(f"--max-tokens must be > 0, got {args.max_tokens}")
    if args.warmup_tokens < 0:
        raise ValueError(f"--warmup-tokens must be >= 0, got {args.warmup_tokens}")
    if args.num_draft is not None and args.num_draft < 1:
        raise ValueError(f"--num-draft must be >= 1, got {args.num_draft}")
    if args.max_kv_size is not None and args.max_kv_size < 1:
        raise ValueError(f"--max-kv-size must be >= 1, got {args.max_kv_size}")
    try:
        check_seed(args.seed)  # a negative one is fine: see sampling.mlx_seed
    except ValueError as e:
        raise ValueError(f"--{e}") from None
    check_stop(args.stop)
    if args.prompt_lookup:  # the request's mode from here on, to every rank or a cluster
        if args.spec == SpecMode.NONE:
            raise ValueError("--no-spec and --prompt-lookup contradict each other")
        args.spec = SpecMode.LOOKUP_MTP if args.spec == SpecMode.MTP else SpecMode.LOOKUP
    check_request(args.spec, args.draft_model, args.num_draft, names=FLAG_NAMES)
    return Sampling(temp=args.temp, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p)


def penalties_from_args(args) -> Penalties:
    """The job's ``Penalties`` (and a check of ``--logprobs``); ValueError for flags out
    of range."""
    if args.logprobs is not None and not 0 <= args.logprobs <= 20:
        raise ValueError(f"--logprobs must be in 0..20, got {args.logprobs}")
    if not 1 <= args.penalty_context_size <= MAX_CONTEXT_SIZE:
        raise ValueError(f"--penalty-context-size must be from 1 to {MAX_CONTEXT_SIZE}, got "
                         f"{args.penalty_context_size}")
    bias = {}
    for item in args.logit_bias or []:
        token, _, value = item.partition("=")
        try:
            bias[int(token)] = float(value)
        except ValueError:
            raise ValueError(f"--logit-bias takes ID=BIAS, got {item!r}") from None
    size = args.penalty_context_size
    return Penalties(presence_penalty=args.presence_penalty,
                     frequency_penalty=args.frequency_penalty,
                     repetition_penalty=args.repetition_penalty, presence_context_size=size,
                     frequency_context_size=size, repetition_context_size=size,
                     logit_bias=bias)


def check_prompt(args, tokenizer, config: dict) -> None:
    """That the prompt, as the target (with this tokenizer and config) reads it, is not
    empty and leaves room for ``--max-tokens`` in the model's context: ValueError, or
    OUT_OF_RANGE in the words and by the bound of a worker's runner
    (``Job.token_budget``)."""
    from ..models.load import context_length
    from ..prompt import encode_prompt
    from ..worker.messages import Job

    prompt = encode_prompt(tokenizer, args.prompt, not args.ignore_chat_template)
    if not prompt:
        raise ValueError("the prompt is empty")
    Job(job_id="local", prompt=args.prompt, max_tokens=args.max_tokens, sampling=Sampling(),
        seed=None, num_draft=None, ignore_chat_template=args.ignore_chat_template,
        ).token_budget(len(prompt), context_length(config))


def run(args) -> int:
    from ..models.load import ModelLoadError
    from ..status import StatusError

    try:
        sampling = _check(args)
        penalties = penalties_from_args(args)
        if args.coordinator:
            if args.warmup_tokens:
                raise ValueError("--warmup-tokens runs on this machine; a cluster's workers "
                                 "keep their kernels from job to job")
            from . import cluster

            return cluster.generate(args, penalties)
        if args.nodes is not None or args.timeout is not None or args.key_file is not None:
            raise ValueError("--nodes, --timeout and --key-file need --coordinator")
        if args.local_ranks is not None or args.split or args.parallel != "pipeline":
            from ..group.launch import launch_local

            return launch_local(args)
        from ..model_set import load_models

        models = load_models(args.model, args.draft_model, args.spec, args.quantize)
        from ..decoder_factory import check_penalties

        check_penalties(models, penalties)
        check_prompt(args, models.target.tokenizer, models.target.config)
    except (ValueError, ModelLoadError, OSError) as e:
        print(f"exo-spec generate: error: {e}", file=sys.stderr)
        return 2
    except StatusError as e:  # OUT_OF_RANGE: as a cluster refuses the same request
        print(f"exo-spec generate: error: {e.line()}", file=sys.stderr)
        return 2
    from ..job_series import JobSeries
    from ..local_job import decode, warm_up

    jobs = JobSeries()  # the timed job goes on with what the warm-up measured, as a worker's

    def new_decoder():
        return jobs.new_decoder(models, sampling=sampling, num_draft=args.num_draft,
                                max_kv_size=args.max_kv_size, penalties=penalties,
                                logprobs=args.logprobs,
                                fixed_width={"on": True, "off": False}.get(args.fixed_width))

    warm_up(args, new_decoder, models.target.tokenizer)
    return decode(args, new_decoder(), models.target.tokenizer)
