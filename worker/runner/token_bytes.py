"""A token's own bytes, as logprobs report it: the raw bytes of a byte-level BPE token
or of an SPM piece (so a character split over several tokens shows as its parts, and
the tokens of a text join to its bytes), else the token decoded alone."""

from __future__ import annotations

from functools import lru_cache

from mlx_lm.tokenizer_utils import (
    BPEStreamingDetokenizer,
    SPMStreamingDetokenizer,
    TokenizerWrapper,
)

SPM_SPACE = "\u2581"


@lru_cache(maxsize=1)
def _byte_of_char() -> dict[str, int]:
    """GPT-2's byte-to-unicode table, inverted: the character each byte is written as."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


class TokenBytes:
    """``token_bytes(token_id)``, looked up once per id."""

    def __init__(self, tokenizer: TokenizerWrapper):
        self._tokenizer = tokenizer
        detok = tokenizer.detokenizer
        self._kind = ("bpe" if isinstance(detok, BPEStreamingDetokenizer)
                      else "spm" if isinstance(detok, SPMStreamingDetokenizer) else "")
        self._cache: dict[int, bytes] = {}

    def __call__(self, token_id: int) -> bytes:
        found = self._cache.get(token_id)
        if found is None:
            found = self._cache[token_id] = self._bytes(token_id)
        return found

    def _bytes(self, token_id: int) -> bytes:
        piece = self._tokenizer.convert_ids_to_tokens(token_id) if self._kind else None
        if piece is None:  # another tokenizer, or an id past the vocabulary
            return self._tokenizer.decode([token_id]).encode()
        if self._kind == "bpe":
            table = _byte_of_char()
            return b"".join(bytes([table[c]]) if c in table else c.encode() for c in piece)
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace(SPM_SPACE, " ").encode()
