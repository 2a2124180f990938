"""A request's text as the token ids the target reads: a prompt, or a conversation."""

from __future__ import annotations

from collections.abc import Sequence

from grpc import StatusCode
from jinja2 import TemplateError
from mlx_lm.tokenizer_utils import TokenizerWrapper

from .status import StatusError


def encode_prompt(
    tokenizer: TokenizerWrapper, prompt: str, chat_template: bool = True
) -> list[int]:
    """mlx-lm's convention: the chat template when the tokenizer has one."""
    if chat_template and tokenizer.has_chat_template:
        messages = [{"role": "user", "content": prompt}]
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    return tokenizer.encode(prompt)


def encode_messages(tokenizer: TokenizerWrapper, messages: Sequence[dict[str, str]]) -> list[int]:
    """``messages`` (role and content each) rendered with the chat template, ending with
    the prompt for the assistant's turn. INVALID_ARGUMENT when the model has no chat
    template (a raw prompt is what it takes) or its template refuses the conversation
    (some insist that roles alternate, say)."""
    if not tokenizer.has_chat_template:
        raise StatusError(StatusCode.INVALID_ARGUMENT,
                          "the model has no chat template: send a raw prompt, not messages")
    try:
        return list(tokenizer.apply_chat_template(list(messages), add_generation_prompt=True))
    except (TemplateError, ValueError) as e:
        raise StatusError(StatusCode.INVALID_ARGUMENT,
                          f"the model's chat template refused the messages: {e}") from None
