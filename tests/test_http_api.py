"""The OpenAI-compatible HTTP API on a real cluster on 127.0.0.1: an ``exo-spec
coordinator --http-port`` process and two ``exo-spec worker`` processes, driven with
the ``openai`` client (and httpx for what a client library would not send); and
``exo-spec serve``. Greedy output is compared with mlx-lm's own decode."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import httpx
import mlx_lm
import openai
import pytest
from mlx_lm.sample_utils import make_logits_processors
from test_cluster import ready_ids, start_worker, wait_until, with_model_dir

from exo_spec.client import Client
from exo_spec.local_cluster import COORDINATOR_LINE, Background
from exo_spec.v1 import inference_pb2

from reference import greedy_reference

HTTP_LINE = re.compile(r"OpenAI API on (http://127\.0\.0\.1:\d+/v1)")
SERVE_LINE = re.compile(r"exo-spec serve: (http://127\.0\.0\.1:\d+/v1)")
API_KEY_LINE = re.compile(r"API key \(made now[^)]*\): (\S+)")  # when none is given
MAX_TOKENS = 12
LONG = 3000  # a job that runs until it is stopped (within the context of 4096)
PROMPT = "def heappush(heap, item):"
CHAT = [{"role": "system", "content": "You write Python."},
        {"role": "user", "content": "A heap push."},
        {"role": "assistant", "content": "def heappush(heap, item):"},
        {"role": "user", "content": [{"type": "text", "text": "Now "},
                                     {"type": "text", "text": "a heap pop."}]}]
CANCELLED = inference_pb2.JOB_STATE_CANCELLED


class HttpCluster:
    def __init__(self, tmp: Path, models: Path):
        # One job at a time per placement, so that a second job waits: the queue bound
        # (--max-queue 1) is what these tests reach.
        (self.w0, p0), (self.w1, p1) = (start_worker(tmp, "w0", 0, "--max-batch", "1"),
                                        start_worker(tmp, "w1", 0, "--memory-gb", "3",
                                                     "--max-batch", "1",
                                                     "--model-dir", str(models),
                                                     *with_model_dir(())))
        self.coordinator = Background(
            tmp / "coordinator.log", "coordinator", "--host", "127.0.0.1", "--port", "0",
            "--no-mdns", "--peer", f"127.0.0.1:{p0}", "--peer", f"127.0.0.1:{p1}",
            "--http-port", "0", "--max-queue", "1")
        grpc_port = self.coordinator.wait_for(COORDINATOR_LINE).group(1)
        self.url = self.coordinator.wait_for(HTTP_LINE).group(1)
        self.api_key = self.coordinator.wait_for(API_KEY_LINE).group(1)
        self.headers = {"authorization": f"Bearer {self.api_key}"}
        self.client = Client(f"127.0.0.1:{grpc_port}")
        wait_until(lambda: ready_ids(self.client) == ["w0", "w1"], 30)
        self.openai = openai.OpenAI(base_url=self.url, api_key=self.api_key, max_retries=0)
        self.http = httpx.Client(base_url=self.url, timeout=120, headers=self.headers)

    def stop(self) -> None:
        self.http.close()
        self.openai.close()
        self.client.close()
        for p in (self.coordinator, self.w0, self.w1):
            p.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, checkpoints):
    c = HttpCluster(tmp_path_factory.mktemp("http"), checkpoints.llama.parent)
    yield c
    c.stop()


@cache
def mlx_lm_model(path: Path):
    return mlx_lm.load(str(path))


def reference_text(path: Path, prompt: list[int]) -> tuple[str, str]:
    """mlx-lm's greedy MAX_TOKENS tokens after ``prompt``: the whole text, and the
    text as its streaming detokenizer writes it."""
    model, tokenizer = mlx_lm_model(path)
    tokens = greedy_reference(model, prompt, MAX_TOKENS)
    assert tokenizer.eos_token_id not in tokens  # the fixture's seeds make it run to length
    detok = tokenizer.detokenizer
    detok.reset()
    for t in tokens:
        detok.add_token(t)
    detok.finalize()
    return tokenizer.decode(tokens), detok.text


def chat_reference(path: Path, messages: list[dict]) -> tuple[str, str]:
    _, tokenizer = mlx_lm_model(path)
    flat = [{**m, "content": m["content"] if isinstance(m["content"], str) else
             "".join(p["text"] for p in m["content"])} for m in messages]
    return reference_text(path, list(tokenizer.apply_chat_template(
        flat, add_generation_prompt=True)))


def job_id(response_id: str) -> str:
    return response_id.split("-", 1)[1]


def speculation(checkpoints) -> dict:
    return {"speculation": {"draft_model": str(checkpoints.drafter), "num_draft": 2}}


# -- chat and completions ------------------------------------------------------------------


def test_chat_matches_mlx_lm_greedy(cluster, checkpoints):
    whole, streamed = chat_reference(checkpoints.llama, CHAT)
    model = str(checkpoints.llama)
    r = cluster.openai.chat.completions.create(
        model=model, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0,
        extra_body=speculation(checkpoints))
    assert r.object == "chat.completion" and r.model == model
    choice = r.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == \
        ("assistant", whole, "length")
    usage = r.usage.model_dump()
    assert usage["completion_tokens"] == MAX_TOKENS
    assert usage["total_tokens"] == usage["prompt_tokens"] + MAX_TOKENS
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0
    spec = usage["speculation"]
    assert spec["mode"] == "draft" and spec["num_draft"] == 2 and spec["drafted"] > 0
    assert 0 <= spec["accepted"] <= spec["drafted"] and spec["decode_tps"] > 0
    job = cluster.client.get_job(job_id(r.id))
    assert job.state == inference_pb2.JOB_STATE_SUCCEEDED and len(job.node_ids) == 1

    chunks = list(cluster.openai.chat.completions.create(
        model=model, messages=CHAT, max_tokens=MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=speculation(checkpoints)))
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(deltas) == streamed and len([d for d in deltas if d]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == MAX_TOKENS
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and chunks[0].object == "chat.completion.chunk"


def test_prompt_lookup_through_the_api(cluster, checkpoints):
    """speculation.mode "lookup" reaches the worker's decoder: mlx-lm's greedy text, in
    the lookup's stats mode."""
    whole, _ = chat_reference(checkpoints.llama, CHAT)
    r = cluster.openai.chat.completions.create(
        model=str(checkpoints.llama), messages=CHAT, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"speculation": {"mode": "lookup", "num_draft": 2}})
    assert r.choices[0].message.content == whole
    assert r.usage.model_dump()["speculation"]["mode"] == "lookup"


def test_stop_strings_penalties_and_logit_bias_match_mlx_lm(cluster, checkpoints):
    """Penalized greedy decoding through the API is mlx-lm's with the same logits
    processors; the stop string completes inside a speculative round (the target
    drafts for itself, so every round keeps its 3 drafts) and the output ends before it,
    streamed or not."""
    model, tokenizer = mlx_lm_model(checkpoints.llama)
    prompt = list(tokenizer.apply_chat_template(CHAT[:2], add_generation_prompt=True))
    processors = make_logits_processors(presence_penalty=1.0, presence_context_size=8,
                                        logit_bias={74: 0.5})
    tokens = greedy_reference(model, prompt, MAX_TOKENS, logits_processors=processors)
    full = tokenizer.decode(tokens)
    cut = len(tokenizer.decode(tokens[:6]))  # the stop string ends inside the 2nd round
    stop = full[cut - 3:cut]
    assert stop not in full[:cut - 1] and tokens[:6] != greedy_reference(model, prompt, 6)
    body = dict(model=str(checkpoints.llama), messages=CHAT[:2], max_tokens=MAX_TOKENS,
                temperature=0, stop=[stop, "never in the output"], presence_penalty=1.0,
                logit_bias={"74": 0.5},
                extra_body={"presence_context_size": 8, "speculation": {
                    "draft_model": str(checkpoints.llama), "num_draft": 3}})
    r = cluster.openai.chat.completions.create(**body)
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == (
        full[:cut - 3], "stop")
    assert r.usage.model_dump()["speculation"]["accepted"] > 0
    chunks = list(cluster.openai.chat.completions.create(**body, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == full[:cut - 3]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_completions_with_logprobs_and_stream(cluster, checkpoints):
    _, tokenizer = mlx_lm_model(checkpoints.llama)
    whole, streamed = reference_text(checkpoints.llama, tokenizer.encode(PROMPT))
    model = str(checkpoints.llama)
    r = cluster.openai.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS,
                                          temperature=0, logprobs=3,
                                          extra_body=speculation(checkpoints))
    assert r.object == "text_completion" and r.choices[0].text == whole
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT))  # no chat template
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == MAX_TOKENS
    assert all(len(top) <= 3 and all(v <= 0 for v in top.values()) for top in lp.top_logprobs)
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    chunks = list(cluster.openai.completions.create(
        model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body=speculation(checkpoints)))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == streamed
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage.completion_tokens == MAX_TOKENS


def test_across_two_workers(cluster, checkpoints):
    whole, _ = chat_reference(checkpoints.llama, CHAT)
    r = cluster.openai.chat.completions.create(
        model=str(checkpoints.llama), messages=CHAT, max_tokens=MAX_TOKENS, temperature=0,
        extra_body={"nodes": 2})
    assert r.choices[0].message.content == whole
    assert r.usage.model_dump()["speculation"]["ranks"] == 2
    assert sorted(cluster.client.get_job(job_id(r.id)).node_ids) == ["w0", "w1"]


def test_models_and_health(cluster, checkpoints):
    models = {m.id: m for m in cluster.openai.models.list()}
    llama = models[str(checkpoints.llama)]  # placed by the tests before
    assert (llama.object, llama.owned_by, llama.model_dump()["loaded"]) == \
        ("model", "exo-spec", True)
    qwen = models[str(checkpoints.qwen3_5)]  # only in w1's --model-dir
    assert qwen.model_dump()["loaded"] is False
    assert list(models).index(str(checkpoints.llama)) < list(models).index(qwen.id)
    health = httpx.get(cluster.url.removesuffix("/v1") + "/health")  # needs no API key
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["ready_nodes"] == 2


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path, body, status, message", [
    ("/chat/completions", "{not json", 400, "not valid JSON"),
    ("/chat/completions", [], 400, "the request body must be a JSON object"),
    ("/chat/completions", {"messages": CHAT[:2], "n": 2}, 400, "n must be 1"),
    ("/chat/completions", {"messages": CHAT[:2], "temperature": -1}, 400,
     "temperature must be >= 0"),
    ("/chat/completions", {"messages": CHAT[:2], "temperature": "hot"}, 400,
     "temperature must be a number, got a string"),
    ("/chat/completions", {"messages": []}, 400, "messages must be a non-empty array"),
    ("/chat/completions", {"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "only text parts"),
    ("/chat/completions", {"messages": CHAT[:2], "speculation": {"mode": "fast"}}, 400,
     "speculation.mode must be one of auto, mtp, none"),
    ("/chat/completions", {"messages": CHAT[:2], "model": ""}, 400, "no model given"),
    ("/chat/completions", {"messages": CHAT[:2], "model": "nobody/no-such-model"}, 404,
     "no node can find nobody/no-such-model"),
    ("/chat/completions", {"messages": CHAT[:2], "model": "/no/such/model"}, 400,
     "model /no/such/model is not inside node"),
    ("/completions", {"prompt": PROMPT * 600}, 413, "longer than the model's context"),
    ("/completions", {"prompt": PROMPT, "logprobs": 50}, 400, "logprobs must be an integer"),
    ("/embeddings", {}, 404, "Not Found"),
])
def test_errors_are_openai_errors(cluster, checkpoints, path, body, status, message):
    if isinstance(body, dict):
        body = {"model": str(checkpoints.llama), "max_tokens": MAX_TOKENS,
                **speculation(checkpoints), **body}
    r = cluster.http.post(path, content=body if isinstance(body, str) else json.dumps(body),
                          headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and set(error) == {"message", "type", "param", "code"}
    if "temperature must be a number" in message:
        assert error["param"] == "temperature"


def test_a_full_queue_and_clients_that_leave(cluster, checkpoints):
    """--max-queue 1: with one job running and one waiting, the next is refused (429).
    The waiting client and the streaming one disconnect: both jobs end CANCELLED."""
    body = {"model": str(checkpoints.llama), "prompt": PROMPT, "max_tokens": LONG,
            "temperature": 0, **speculation(checkpoints)}

    def jobs(state) -> list[str]:
        return [j.id for j in cluster.client.list_jobs([state])]

    async def go():
        async with httpx.AsyncClient(base_url=cluster.url, timeout=60,
                                     headers=cluster.headers) as http:
            async with http.stream("POST", "/completions", json={**body, "stream": True}) as a:
                assert a.status_code == 200  # headers come with the first token: it runs
                running = a.headers["x-exo-spec-job"]
                waiting = asyncio.create_task(http.post("/completions", json=body))
                while not await asyncio.to_thread(jobs, inference_pb2.JOB_STATE_QUEUED):
                    await asyncio.sleep(0.05)
                (queued,) = await asyncio.to_thread(jobs, inference_pb2.JOB_STATE_QUEUED)
                refused = await http.post("/completions", json=body)
                waiting.cancel()  # its connection closes
                await asyncio.gather(waiting, return_exceptions=True)
            return running, queued, refused  # and the stream's closes

    running, queued, refused = asyncio.run(go())
    assert refused.status_code == 429
    assert refused.json()["error"]["message"] == \
        f"1 job is already waiting for {checkpoints.llama}"
    for job in (running, queued):
        wait_until(lambda job=job: cluster.client.get_job(job).state == CANCELLED, 20)
        assert cluster.client.get_job(job).error == "the HTTP client disconnected"


def test_the_coordinator_stops_cleanly(cluster):
    cluster.coordinator.stop()
    log = cluster.coordinator.log.read_text()
    assert cluster.coordinator.proc.returncode == 0 and "stopping" in log
    assert "Traceback" not in log and "ERROR" not in log, log


def test_no_ready_node_is_503(tmp_path):
    alone = Background(tmp_path / "alone.log", "coordinator", "--host", "127.0.0.1",
                       "--port", "0", "--no-mdns", "--http-port", "0", "--api-key", "k",
                       "--state-dir", str(tmp_path / "state"))
    try:
        url = alone.wait_for(HTTP_LINE).group(1)
        assert "API key (made now" not in alone.log.read_text()  # it was given one
        auth = {"authorization": "Bearer k"}
        r = httpx.post(f"{url}/chat/completions", json={"model": "m", "messages": CHAT[:2]},
                       headers=auth)
        assert (r.status_code, r.json()["error"]["message"]) == (503, "no worker node is ready")
        assert httpx.get(f"{url}/models", headers=auth).json() == {"object": "list", "data": []}
    finally:
        alone.stop()


# -- exo-spec serve ----------------------------------------------------------------------


def test_serve_answers_a_chat_completion(tmp_path, checkpoints):
    serve = Background(tmp_path / "serve.log", "serve", "--model", str(checkpoints.llama),
                       "--port", "0")
    try:
        url = serve.wait_for(SERVE_LINE, 90).group(1)
        api_key = serve.wait_for(API_KEY_LINE).group(1)
        log = serve.log.read_text()
        assert "loading" in log and log.index("loading") < log.index(url)
        whole, _ = chat_reference(checkpoints.llama, CHAT)
        with openai.OpenAI(base_url=url, api_key=api_key, max_retries=0) as client:
            r = client.chat.completions.create(model=str(checkpoints.llama), messages=CHAT,
                                               max_tokens=MAX_TOKENS, temperature=0)
        assert r.choices[0].message.content == whole
        # a request that names no model gets --model
        r = httpx.post(f"{url}/chat/completions", timeout=60,
                       headers={"authorization": f"Bearer {api_key}"},
                       json={"messages": CHAT, "max_tokens": MAX_TOKENS, "temperature": 0})
        assert r.json()["choices"][0]["message"]["content"] == whole
    finally:
        serve.stop()
    assert serve.proc.returncode == 0, serve.log.read_text()


def test_serve_help_imports_no_server():
    probe = ("import sys; from exo_spec.cli import build_parser; build_parser('serve'); "
             "print(sorted(m for m in ('mlx_lm', 'starlette', 'uvicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
