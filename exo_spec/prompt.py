"""A request's text as the token ids the target reads."""

from __future__ import annotations

from mlx_lm.tokenizer_utils import TokenizerWrapper


def encode_prompt(
    tokenizer: TokenizerWrapper, prompt: str, chat_template: bool = True
) -> list[int]:
    """mlx-lm's convention: the chat template when the tokenizer has one."""
    if chat_template and tokenizer.has_chat_template:
        messages = [{"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    return tokenizer.encode(prompt)
