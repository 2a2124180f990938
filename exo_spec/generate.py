"""``exo-spec generate``: one request on this machine."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import mlx.core as mx
from mlx_lm.tokenizer_utils import TokenizerWrapper

from . import remote
from .dist.launch import launch_local
from .models.load import QUANTIZE_BITS, ModelLoadError
from .session import Jobs, encode_prompt, load_models
from .spec import Sampling, SpecDecoder


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("--model", required=True, help="local path or Hugging Face id")
    p.add_argument("--prompt", required=True)
    p.add_argument("--draft-model",
                   help="drafter sharing the target's tokenizer, or a Gemma 4 assistant")
    spec = p.add_mutually_exclusive_group()
    spec.add_argument("--mtp", dest="mtp", action="store_true", default=None,
                      help="draft with the checkpoint's own MTP heads")
    spec.add_argument("--no-spec", dest="mtp", action="store_false",
                      help="plain decoding, no speculation")
    p.add_argument("--num-draft", type=int, help="fixed draft length (default: adaptive)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--temp", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int)
    p.add_argument("--max-kv-size", type=int, help="rotating KV cache of this many tokens")
    p.add_argument("--quantize", type=int, choices=QUANTIZE_BITS, metavar="BITS",
                   help="quantize a float checkpoint as it loads (4 or 8 bits, group size "
                        "64: the layout of mlx-community checkpoints); drafter and MTP "
                        "head too")
    p.add_argument("--warmup-tokens", type=int, default=0, metavar="N",
                   help="first decode N tokens of the prompt, unprinted and uncounted, so "
                        "the stats show steady-state speed (MLX builds kernels on first use; "
                        "adaptive k goes on with what the warm-up measured)")
    p.add_argument("--ignore-chat-template", action="store_true")
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
    p.set_defaults(run=run)


def _check(args) -> Sampling:
    if args.max_tokens <= 0:
        raise ValueError(f"--max-tokens must be > 0, got {args.max_tokens}")
    if args.warmup_tokens < 0:
        raise ValueError(f"--warmup-tokens must be >= 0, got {args.warmup_tokens}")
    if args.num_draft is not None and args.num_draft < 1:
        raise ValueError(f"--num-draft must be >= 1, got {args.num_draft}")
    if args.mtp is False and args.draft_model:
        raise ValueError("--no-spec and --draft-model contradict each other")
    if args.mtp is False and args.num_draft:
        raise ValueError("--no-spec and --num-draft contradict each other")
    return Sampling(temp=args.temp, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p)


def run(args) -> int:
    try:
        sampling = _check(args)
        if args.coordinator:
            if args.warmup_tokens:
                raise ValueError("--warmup-tokens runs on this machine; a cluster's workers "
                                 "keep their kernels from job to job")
            return remote.generate(args)
        if args.nodes is not None or args.timeout is not None:
            raise ValueError("--nodes and --timeout need --coordinator")
        if args.local_ranks is not None or args.split or args.parallel != "pipeline":
            return launch_local(args)
        models = load_models(args.model, args.draft_model, args.mtp, args.quantize)
    except (ValueError, ModelLoadError, OSError) as e:
        print(f"exo-spec generate: error: {e}", file=sys.stderr)
        return 2

    jobs = Jobs()  # the timed job goes on with what the warm-up measured, as a worker's would

    def new_decoder() -> SpecDecoder:
        return jobs.new_decoder(models, sampling=sampling, num_draft=args.num_draft,
                                max_kv_size=args.max_kv_size)

    warm_up(args, new_decoder, models.target.tokenizer)
    return decode(args, new_decoder(), models.target.tokenizer)


def warm_up(args, new_decoder: Callable[[], SpecDecoder], tokenizer: TokenizerWrapper) -> None:
    """Decode ``--warmup-tokens`` of the prompt with a decoder of its own and drop them."""
    if args.warmup_tokens:
        prompt = encode_prompt(tokenizer, args.prompt, not args.ignore_chat_template)
        for _ in new_decoder().generate(prompt, args.warmup_tokens):
            pass


def decode(args, decoder: SpecDecoder, tokenizer: TokenizerWrapper,
           extra_stats: Callable[[], dict] | None = None) -> int:
    """Run ``decoder`` on the prompt and print text (or JSON) and stats, with
    ``extra_stats()`` asked for once generation is done."""
    if args.seed is not None:
        mx.random.seed(args.seed)
    prompt = encode_prompt(tokenizer, args.prompt, not args.ignore_chat_template)
    tokens: list[int] = []
    detok = tokenizer.detokenizer
    detok.reset()
    for chunk in decoder.generate(prompt, args.max_tokens):
        tokens.extend(chunk)
        if not args.json:
            for t in chunk:
                detok.add_token(t)
            sys.stdout.write(detok.last_segment)
            sys.stdout.flush()
    stats = decoder.stats
    if args.json:
        result = {
            "text": tokenizer.decode(tokens),
            "tokens": tokens,
            "finish_reason": decoder.finish.reason,
            "stats": {**stats.to_dict(), **(extra_stats() if extra_stats else {})},
        }
        print(json.dumps(result))
    else:
        detok.finalize()
        sys.stdout.write(detok.last_segment + "\n")
        print(stats.summary(), file=sys.stderr)
    return 0
