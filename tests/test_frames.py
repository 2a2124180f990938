"""Length-prefixed msgpack frames, over a real pipe and an asyncio stream."""

from __future__ import annotations

import asyncio
import io
import os

import pytest

from exo_spec import frames

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
