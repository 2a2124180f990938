"""Length-prefixed msgpack frames, over a real pipe and an asyncio stream, and the
worker's messages they carry."""

from __future__ import annotations

import asyncio
import io
import os

import grpc
import pytest

from exo_spec import frames
from exo_spec.sampling import Penalties, Sampling
from exo_spec.spec_mode import ProposerKind, SpecMode
from exo_spec.status import StatusError
from exo_spec.worker.messages import (
    Cancel,
    Error,
    Finished,
    Job,
    LoadConfig,
    Logprob,
    Progress,
    Ready,
    Tokens,
    from_frame,
    to_frame,
)

MESSAGES = [
    {"type": "job", "job_id": "j1", "prompt": "héllo\n" * 3, "seed": None, "max_tokens": 8},
    {"type": "tokens", "job_id": "j1", "token_ids": [1, 2, 300, 70000], "text": ""},
    {"type": "finished", "stats": {"acceptance_rate": 0.5, "mode": "draft"}},
]


def test_round_trip_over_a_pipe():
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as w:
        for m in MESSAGES:
            frames.write(w, m)
    with os.fdopen(read_fd, "rb") as r:
        assert [frames.read(r) for _ in MESSAGES] == MESSAGES
        assert frames.read(r) is None  # a clean end of stream


def test_round_trip_over_an_asyncio_stream():
    async def main():
        reader = asyncio.StreamReader()
        for m in MESSAGES:
            data = frames.encode(m)
            reader.feed_data(data[:3])  # a header split across reads
            reader.feed_data(data[3:])
        reader.feed_eof()
        got = [await frames.read_async(reader) for _ in MESSAGES]
        return got, await frames.read_async(reader)

    got, end = asyncio.run(main())
    assert got == MESSAGES and end is None


@pytest.mark.parametrize("cut", [2, 7])  # inside the header, inside the payload
def test_a_stream_cut_inside_a_frame_is_an_error(cut):
    data = frames.encode(MESSAGES[0])[:cut]
    with pytest.raises(frames.FrameError):
        frames.read(io.BytesIO(data))

    async def read_cut():
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await frames.read_async(reader)

    with pytest.raises(frames.FrameError):
        asyncio.run(read_cut())


def test_an_oversized_header_is_refused_before_reading_the_payload():
    header = frames.HEADER.pack(frames.MAX_FRAME + 1)
    with pytest.raises(frames.FrameError, match="announces"):
        frames.read(io.BytesIO(header + b"x"))


def test_an_error_frame_past_its_bound_is_cut_to_fit_not_refused():
    message = "a rank failed: " + "é" * 2**20
    sent = Error(grpc.StatusCode.INTERNAL, message, "j1")
    data = frames.encode(to_frame(sent))
    assert len(data) <= frames.HEADER.size + frames.MAX_ERROR_FRAME
    got = from_frame(frames.read(io.BytesIO(data)))
    assert (got.code, got.job_id) == (sent.code, "j1")
    assert got.message.endswith("...") and message.startswith(got.message[:-3])
    assert len(got.message) > frames.MAX_ERROR_FRAME // 3  # cut to fit, no shorter
    with pytest.raises(frames.FrameError, match="exceeds"):  # other frames are refused
        frames.encode(to_frame(Progress("x" * (frames.MAX_FRAME + 1))))


def test_every_message_comes_back_as_it_was_sent():
    sent = [
        Job(job_id="j1", prompt="héllo", max_tokens=8, sampling=Sampling(temp=0.5, top_k=3),
            seed=7, num_draft=None, ignore_chat_template=True),
        Job(job_id="j2", prompt="", max_tokens=0, sampling=Sampling(), seed=None, num_draft=3,
            ignore_chat_template=False,
            messages=[{"role": "system", "content": "be brief"},
                      {"role": "user", "content": "héllo"}],
            stop=["\n\n", "END"], top_logprobs=2, default_max_tokens=100,
            penalties=Penalties(frequency_penalty=0.5, repetition_context_size=64,
                                logit_bias={3: -100.0, 70000: 2.5})),
        Cancel(job_id="j1"),
        Progress("loading target"),
        Ready(ProposerKind.DRAFT),
        Tokens("j1", [1, 300, 70000], "hé"),
        Tokens("j1", [1, 300], "a", [
            Logprob(1, -0.25, b"a", [Logprob(1, -0.25, b"a"), Logprob(9, -2.0, b"\xc3")]),
            Logprob(300, -1.5, b"\xa9", [])]),
        Finished("j1", "length", "héllo", [1, 300], {"mode": "draft", "acceptance_rate": 0.5}),
        Error.of(StatusError(grpc.StatusCode.INVALID_ARGUMENT, "the prompt is empty"), "j1"),
        Error.of(StatusError("UNAVAILABLE", "rank 0 is gone")),
    ]
    read_fd, write_fd = os.pipe()
    with os.fdopen(write_fd, "wb") as w:
        for m in sent:
            frames.write(w, to_frame(m))
    with os.fdopen(read_fd, "rb") as r:
        assert [from_frame(frames.read(r)) for _ in sent] == sent
    assert to_frame(sent[-1]) == {"type": "error", "code": "UNAVAILABLE",
                                  "message": "rank 0 is gone", "job_id": None}
    config = LoadConfig(model="m", draft_model=None, spec=SpecMode.MTP, split=[1, 3], ranks=2,
                        group_timeout_s=5.0)
    assert LoadConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("frame", [
    {"type": "bogus"},
    {"job_id": "j1"},
    {"type": "cancel", "job": "j1"},
    {"type": "ready", "mode": "NOT_A_MODE"},
    [1, 2],
])
def test_a_frame_that_is_no_message_is_a_frame_error(frame):
    with pytest.raises(frames.FrameError):
        from_frame(frame)


def test_tokens_carry_their_logprobs_into_the_chunk():
    chunk = Tokens("j1", [1, 300], "a", [
        Logprob(1, -0.25, b"a", [Logprob(1, -0.25, b"a"), Logprob(9, -2.0, b"\xc3")]),
        Logprob(300, -1.5, b"\xa9")]).to_proto().tokens
    assert list(chunk.token_ids) == [lp.token_id for lp in chunk.logprobs] == [1, 300]
    assert [(t.token_id, t.logprob, t.token) for t in chunk.logprobs[0].top] == \
        [(1, -0.25, b"a"), (9, -2.0, b"\xc3")]
    assert (chunk.logprobs[1].token, list(chunk.logprobs[1].top)) == (b"\xa9", [])
