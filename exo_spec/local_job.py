"""One job decoded in this process and printed: ``exo-spec generate`` on one machine
and rank 0 of ``--local-ranks`` both end here."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from contextlib import closing

import mlx.core as mx
from mlx_lm.tokenizer_utils import TokenizerWrapper

from .engine import SpecDecoder
from .prompt import encode_prompt
from .sampling import mlx_seed
from .stop_strings import OutputText


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
        mx.random.seed(mlx_seed(args.seed))
    prompt = encode_prompt(tokenizer, args.prompt, not args.ignore_chat_template)
    tokens: list[int] = []
    # --stop: the text ends before the first stop string; the tokens run up to and
    # including the one that completed it, and the job ends inside that round.
    output = OutputText(tokenizer.detokenizer, getattr(args, "stop", None) or ())
    with closing(decoder.generate(prompt, args.max_tokens)) as rounds:
        for chunk in rounds:
            kept, text = output.add(chunk)
            tokens.extend(kept)
            if not args.json:
                sys.stdout.write(text)
                sys.stdout.flush()
            if output.stopped:
                break
    tail = output.finish()
    finish_reason = "stop" if output.stopped else decoder.finish.reason
    stats = decoder.stats
    if args.json:
        result = {
            "text": output.text if output.stopped else tokenizer.decode(tokens),
            "tokens": tokens,
            "finish_reason": finish_reason,
            "stats": {**stats.to_dict(), **(extra_stats() if extra_stats else {})},
        }
        if output.stopped:  # the tokens printed; the rates stay the decoder's
            result["stats"]["generation_tokens"] = len(tokens)
        if getattr(args, "logprobs", None) is not None:  # one per token printed
            result["logprobs"] = [t.to_dict() for t in decoder.logprobs[: len(tokens)]]
        print(json.dumps(result))
    else:
        sys.stdout.write(tail + "\n")
        print(stats.summary(), file=sys.stderr)
    return 0
