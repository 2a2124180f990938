"""One job decoded in this process and printed: ``exo-spec generate`` on one machine
and rank 0 of ``--local-ranks`` both end here."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import mlx.core as mx
from mlx_lm.tokenizer_utils import TokenizerWrapper

from .engine import SpecDecoder
from .prompt import encode_prompt


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
