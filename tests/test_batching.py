"""Continuous batching on a placement, through a real local cluster (a coordinator and
one worker): concurrent greedy jobs decode together with a drafter, each emitting
exactly mlx-lm's greedy tokens for its prompt; a job with penalties goes on in the batch and is
exact; a cancel and a stop string end their own rows and leave the others intact; a
job joins a running batch; a lone job moves into a batch when another comes; the
limits a batch is admitted by. And a measurement: 20 concurrent 64-token jobs against
20 times one job alone."""

from __future__ import annotations

import asyncio
import copy
import os
import time
from pathlib import Path

import pytest
from conftest import MODEL_DIR
from mlx_lm.sample_utils import make_logits_processors

from exo_spec.client import AsyncClient
from exo_spec.local_cluster import LocalCluster
from exo_spec.prompt import encode_prompt
from exo_spec.sampling import Penalties
from exo_spec.status import StatusError
from exo_spec.v1 import inference_pb2
from exo_spec.worker.batching import MAX_BATCH
from exo_spec.worker.runner.batch import (
    HOLES_SHARE,
    ROUND_SLOTS,
    BatchLimits,
    kv_bytes_per_token,
)

from decoders import loaded
from reference import greedy_reference

PROMPTS = ["def heappush(heap, item):", "class Queue:\n    def __init__(self", "import os\n",
           "for i in range(", "# Read the file\n", "return self.", "def main(argv):\n",
           "while True:\n    line = ", "x = [", "try:\n    import json\nexcept"]
LENGTHS = [16, 40, 24, 56, 32, 48, 20, 64]
PENALTY = {"repetition_penalty": 1.3}


@pytest.fixture(scope="module")
def cluster():
    local = LocalCluster(1, model_dirs=[Path(os.environ[MODEL_DIR])])
    address = local.__enter__()
    yield local, address
    local.__exit__()


@pytest.fixture(scope="module")
def greedy(checkpoints):
    model = loaded(checkpoints.llama)
    eos = set(model.tokenizer.eos_token_ids)

    def reference(prompt: str, max_tokens: int, **penalties) -> list[int]:
        """mlx-lm's greedy tokens, up to the end-of-sequence token the decoder stops at."""
        processors = make_logits_processors(**penalties) if penalties else None
        tokens = greedy_reference(model.model, encode_prompt(model.tokenizer, prompt),
                                  max_tokens, logits_processors=processors)
        return next((tokens[:i] for i, t in enumerate(tokens) if t in eos), tokens)

    return reference


def shown(checkpoints, tokens: list[int]) -> str:
    """The text a job streams for ``tokens`` (mlx-lm's streaming detokenizer)."""
    detokenizer = copy.copy(loaded(checkpoints.llama).tokenizer.detokenizer)
    detokenizer.reset()
    for t in tokens:
        detokenizer.add_token(t)
    detokenizer.finalize()
    return detokenizer.text


class Run:
    """One job through the cluster: its id, tokens as streamed, and its result (or
    the status its stream ended with)."""

    def __init__(self, client: AsyncClient, checkpoints, prompt: str, max_tokens: int,
                 **options):
        self.prompt, self.max_tokens = prompt, max_tokens
        self.id, self.tokens, self.result, self.error = "", [], None, None
        self.started = asyncio.Event()  # its first tokens came
        self.task = asyncio.create_task(self._run(client, checkpoints, options))

    async def _run(self, client, checkpoints, options) -> Run:
        try:
            async for event in client.generate(str(checkpoints.llama), self.prompt,
                                               max_tokens=self.max_tokens,
                                               draft_model=str(checkpoints.drafter), **options):
                if event.HasField("accepted"):
                    self.id = event.accepted.id
                elif event.HasField("tokens"):
                    self.tokens += event.tokens.token_ids
                    self.started.set()
                elif event.HasField("finished"):
                    self.result = event.finished
        except StatusError as e:
            self.error = e
        self.started.set()
        return self

    async def once(self, tokens: int) -> None:
        """Until it has streamed at least ``tokens`` tokens (or ended)."""
        while len(self.tokens) < tokens and not self.task.done():
            await asyncio.sleep(0.002)


def test_jobs_decode_together_and_each_is_exact(cluster, checkpoints, greedy):
    local, address = cluster

    async def main():
        async with AsyncClient(address, key=local.key) as client:
            await Run(client, checkpoints, PROMPTS[0], 4).task  # loads the placement
            (placement,) = await client.placements()
            assert placement.batch_capacity == MAX_BATCH

            # A job with penalties starts alone on the idle placement and goes on in the
            # batch the others start, its penalties applied there as alone.
            penalized = Run(client, checkpoints, PROMPTS[1], 300,
                            penalties=Penalties(repetition_penalty=PENALTY["repetition_penalty"]))
            await penalized.started.wait()
            batched = [Run(client, checkpoints, p, n)
                       for p, n in zip(PROMPTS[:8], LENGTHS, strict=True)]
            cancelled = Run(client, checkpoints, PROMPTS[8], 400)
            text = shown(checkpoints, greedy(PROMPTS[9], 48))
            stop = text[len(text) // 2: len(text) // 2 + 3]
            stopped = Run(client, checkpoints, PROMPTS[9], 48, stop=[stop])
            await cancelled.once(3)
            status = await client.status()
            await client.cancel_job(cancelled.id)
            late = Run(client, checkpoints, PROMPTS[2], 24)  # joins the running batch
            runs = await asyncio.gather(penalized.task, *(r.task for r in batched),
                                        cancelled.task, stopped.task, late.task)
            assert all(r.error is None for r in runs if r is not cancelled)
            return runs, status, text, stop

    (penalized, *batched, cancelled, stopped, late), status, text, stop = asyncio.run(main())
    assert penalized.tokens == greedy(PROMPTS[1], 300, **PENALTY)
    assert penalized.result.stats.batch_size > 1
    for run in [*batched, late]:
        assert run.tokens == greedy(run.prompt, run.max_tokens), run.prompt
        assert run.result.token_ids == run.tokens
        assert run.result.stats.batch_size > 1, run.prompt
    assert status.batch_size > 1
    assert cancelled.error.code.name == "CANCELLED"
    assert 3 <= len(cancelled.tokens) < 400
    assert cancelled.tokens == greedy(PROMPTS[8], 400)[:len(cancelled.tokens)]
    assert (stopped.result.finish_reason, stopped.result.text) == ("stop",
                                                                   text[:text.index(stop)])
    assert stopped.tokens == greedy(PROMPTS[9], 48)[:len(stopped.tokens)]
    assert stopped.result.stats.batch_size > 1


def test_a_lone_job_moves_into_a_batch(cluster, checkpoints, greedy):
    """A job alone on an idle placement decodes as a lone job does; when another comes
    it goes on in a batch with it, its stream unbroken and still exact."""
    local, address = cluster

    async def main():
        async with AsyncClient(address, key=local.key) as client:
            first = Run(client, checkpoints, PROMPTS[3], 200)
            await first.once(8)
            second = Run(client, checkpoints, PROMPTS[4], 24)
            return await asyncio.gather(first.task, second.task)

    first, second = asyncio.run(main())
    for run in (first, second):
        assert run.tokens == greedy(run.prompt, run.max_tokens), run.prompt
        assert run.result.stats.batch_size == 2
        assert run.result.stats.generation_tokens == len(run.tokens)
    assert first.result.stats.prompt_tokens == len(
        encode_prompt(loaded(checkpoints.llama).tokenizer, PROMPTS[3]))


def test_a_hybrid_target_batches_with_its_mtp_head(cluster, checkpoints):
    """A GatedDeltaNet hybrid drafting with its MTP head batches too, each job exact."""
    local, address = cluster
    model = loaded(checkpoints.qwen3_5)

    async def one(client, prompt: str, max_tokens: int):
        finished = await client.complete(str(checkpoints.qwen3_5), prompt,
                                         max_tokens=max_tokens, spec="mtp")
        return prompt, max_tokens, finished

    async def main():
        async with AsyncClient(address, key=local.key) as client:
            return await asyncio.gather(*(one(client, p, n)
                                          for p, n in zip(PROMPTS[:4], LENGTHS, strict=False)))

    results = asyncio.run(main())
    eos = set(model.tokenizer.eos_token_ids)
    for prompt, max_tokens, finished in results:
        want = greedy_reference(model.model, encode_prompt(model.tokenizer, prompt), max_tokens)
        want = next((want[:i] for i, t in enumerate(want) if t in eos), want)
        assert list(finished.token_ids) == want, prompt
        assert finished.stats.mode == "mtp"
    assert max(f.stats.batch_size for *_, f in results) > 1


def test_twenty_concurrent_jobs_against_one_at_a_time(cluster, checkpoints):
    """Printed, with -s: the total time of 20 concurrent 64-token greedy jobs over 20
    times one such job alone (a job alone is timed three times, the fastest kept)."""
    local, address = cluster

    async def timed(client, prompts: list[str]) -> tuple[float, list[Run]]:
        start = time.perf_counter()
        runs = await asyncio.gather(*(Run(client, checkpoints, p, 64).task for p in prompts))
        return time.perf_counter() - start, runs

    async def main():
        async with AsyncClient(address, key=local.key) as client:
            one = min([(await timed(client, [p]))[0] for p in PROMPTS[:3]])
            total, runs = await timed(client, [PROMPTS[i % len(PROMPTS)] + " " * (i // 10)
                                               for i in range(20)])
            return one, total, runs

    one, total, runs = asyncio.run(main())
    assert all(r.error is None and len(r.tokens) == 64 for r in runs)
    sizes = sorted(r.result.stats.batch_size for r in runs)
    ratio = total / (20 * one)
    print(f"\n20 concurrent 64-token jobs: {total:.2f}s; one alone: {one:.3f}s; "
          f"20 x one: {20 * one:.2f}s; ratio {ratio:.2f} (batch sizes {sizes[0]}-{sizes[-1]})")
    assert sizes[-1] > 1 and ratio < 1
    (placement,) = [p for p in (asyncio.run(_placements(address, local.key)))
                    if p.state == inference_pb2.PLACEMENT_STATE_READY
                    and p.model == str(checkpoints.llama)]
    assert placement.batch_size == 0  # nothing left on it


async def _placements(address: str, key) -> list[inference_pb2.Placement]:
    async with AsyncClient(address, key=key) as client:
        return await client.placements()


def test_limits_count_every_row_as_wide_as_the_longest(checkpoints):
    """A token's KV bytes are read from the model's cache shapes; a batch fits while
    its rows, each planned as wide as the longest, stay within the budget and count."""
    model = loaded(checkpoints.llama).model
    args = model.args
    head_dim = args.head_dim or args.hidden_size // args.num_attention_heads
    itemsize = model.layers[0].self_attn.k_proj.weight.dtype.size
    per_token = 2 * args.num_hidden_layers * args.num_key_value_heads * head_dim * itemsize
    assert kv_bytes_per_token(model) == per_token
    one_row = (100 * HOLES_SHARE + ROUND_SLOTS) * per_token
    limits = BatchLimits(max_batch=3, kv_budget_bytes=int(2 * one_row),
                         kv_bytes_per_token=per_token)
    assert limits.fit([100]) and limits.fit([100, 10])
    assert not limits.fit([100, 10, 10])  # three rows as wide as the longest
    assert not limits.fit([101, 10])
    assert not BatchLimits(3, 0, per_token).fit([1] * 4)  # no byte bound, still the count
    assert BatchLimits(3, 0, per_token).fit([10**6] * 3)
