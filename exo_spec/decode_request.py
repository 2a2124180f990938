"""What a ``common_pb2.Decode`` asks beyond its sampling settings, read and checked in
one place: the coordinator's ``job_request`` and the worker's ``Job.from_proto`` both
read a request through these. Each raises ValueError (the caller's
INVALID_ARGUMENT); nothing here imports MLX.
"""

from __future__ import annotations

from .stop_strings import check_stop

ROLES = ("system", "user", "assistant", "tool")
MAX_TOP_LOGPROBS = 20  # OpenAI's bound


def prompt_or_messages(decode) -> tuple[str, list[dict[str, str]] | None]:
    """The raw prompt, or the conversation to render with the chat template (then the
    prompt is empty): exactly one of them."""
    if not decode.messages:
        if not decode.prompt:
            raise ValueError("the prompt is empty")
        return decode.prompt, None
    if decode.prompt:
        raise ValueError("give a prompt or messages, not both")
    if decode.ignore_chat_template:
        raise ValueError("messages are rendered with the chat template: "
                         "ignore_chat_template applies to a prompt")
    for i, m in enumerate(decode.messages):
        if m.role not in ROLES:
            raise ValueError(f"message {i} has role {m.role!r}: roles are "
                             f"{', '.join(ROLES)}")
    return "", [{"role": m.role, "content": m.content} for m in decode.messages]


def stop_strings(decode) -> list[str]:
    return check_stop(decode.stop)


def top_logprobs(decode) -> int | None:
    """How many alternatives to report with each token's logprob; None without logprobs."""
    if decode.top_logprobs > MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs must be <= {MAX_TOP_LOGPROBS}, got "
                         f"{decode.top_logprobs}")
    return decode.top_logprobs if decode.logprobs else None
