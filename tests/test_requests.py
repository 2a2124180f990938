"""What a request may ask, checked where it enters: the coordinator's ``job_request``
and the worker's ``Job.from_proto`` (one set of validators, ``decode_request``); the
token budget of a job; chat messages on a tokenizer with and without a template;
a token's bytes; the models a worker lists."""

from __future__ import annotations

import json

import grpc
import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer

from exo_spec.auth.callers import ADMIN_ID
from exo_spec.coordinator.api import job_request
from exo_spec.models import synthetic
from exo_spec.prompt import encode_messages
from exo_spec.sampling import Penalties
from exo_spec.status import StatusError
from exo_spec.v1 import common_pb2, inference_pb2
from exo_spec.worker.messages import DEFAULT_MAX_TOKENS, Job
from exo_spec.worker.model_list import hub_cache, list_models
from exo_spec.worker.runner.token_bytes import TokenBytes

INVALID = grpc.StatusCode.INVALID_ARGUMENT
OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE


def chat(*turns: tuple[str, str]) -> list[common_pb2.ChatMessage]:
    return [common_pb2.ChatMessage(role=r, content=c) for r, c in turns]


@pytest.mark.parametrize("fields, message", [
    ({}, "the prompt is empty"),
    ({"prompt": "hi", "messages": chat(("user", "hi"))}, "not both"),
    ({"messages": chat(("user", "hi"), ("bot", "hello"))}, "message 1 has role 'bot'"),
    ({"messages": chat(("user", "hi")), "ignore_chat_template": True},
     "ignore_chat_template applies to a prompt"),
    ({"prompt": "hi", "stop": ["x"] * 17}, "at most 16 stop strings"),
    ({"prompt": "hi", "stop": ["ok", ""]}, "stop string 1 is 0 characters"),
    ({"prompt": "hi", "stop": ["x" * 257]}, "each must be 1 to 256"),
    ({"prompt": "hi", "penalties": common_pb2.Penalties(repetition_penalty=-1)},
     "repetition_penalty must be >= 0"),
    ({"prompt": "hi", "penalties": common_pb2.Penalties(presence_penalty=float("inf"))},
     "presence_penalty must be a finite number"),
    ({"prompt": "hi", "logprobs": True, "top_logprobs": 21}, "top_logprobs must be <= 20"),
])
def test_bad_decodes_are_invalid_at_the_coordinator_and_the_worker(fields, message):
    decode = common_pb2.Decode(**fields)
    with pytest.raises(StatusError) as coordinator:
        job_request(inference_pb2.GenerateRequest(model="m", decode=decode), ready_nodes=1,
                owner=ADMIN_ID)
    with pytest.raises(StatusError) as worker:
        Job.from_proto("j", decode)
    for e in (coordinator.value, worker.value):
        assert e.code == INVALID and message in e.message, e.message


def test_a_good_decode_as_the_runner_gets_it():
    decode = common_pb2.Decode(
        messages=chat(("system", "be brief"), ("user", "hi"), ("assistant", "hello"),
                      ("tool", "{}")),
        stop=["\n\n", "END"], logprobs=True, top_logprobs=3,
        penalties=common_pb2.Penalties(presence_penalty=0.5, logit_bias={7: -100.0}))
    job_request(inference_pb2.GenerateRequest(model="m", decode=decode), ready_nodes=1,
                owner=ADMIN_ID)
    job = Job.from_proto("j", decode, default_max_tokens=100)
    assert (job.prompt, [m["role"] for m in job.messages]) == \
        ("", ["system", "user", "assistant", "tool"])
    assert (job.stop, job.top_logprobs, job.default_max_tokens) == (["\n\n", "END"], 3, 100)
    assert job.penalties == Penalties(presence_penalty=0.5, logit_bias={7: -100.0})
    plain = Job.from_proto("j", common_pb2.Decode(prompt="hi", top_logprobs=5))
    assert (plain.messages, plain.top_logprobs, plain.stop) == (None, None, [])
    assert (plain.max_tokens, plain.default_max_tokens) == (0, DEFAULT_MAX_TOKENS)


def test_the_token_budget():
    def job(max_tokens: int, default: int = 256) -> Job:
        return Job.from_proto("j", common_pb2.Decode(prompt="p", max_tokens=max_tokens), default)

    assert job(0).token_budget(10, 4096) == 256  # the default cap
    assert job(0, 1000).token_budget(3500, 4096) == 596  # the rest of the context
    assert job(0, 0).token_budget(10, 4096) == DEFAULT_MAX_TOKENS
    assert job(4086).token_budget(10, 4096) == 4086  # exactly fills it
    assert job(0).token_budget(10, 0) == 256 and job(9999).token_budget(10, 0) == 9999
    for j, prompt, message in ((job(4087), 10, "max_tokens 4087 and the prompt's 10 tokens "
                                                "exceed the model's context of 4096"),
                               (job(0), 4097, "longer than the model's context"),
                               (job(5), 4096, "no room to generate")):
        with pytest.raises(StatusError) as e:
            j.token_budget(prompt, 4096)
        assert e.value.code == OUT_OF_RANGE and message in e.value.message


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """A byte-level BPE tokenizer with the fixtures' chat template, and one without."""
    path = tmp_path_factory.mktemp("tokenizer")
    synthetic.write_tokenizer(path)
    bare = tmp_path_factory.mktemp("bare-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (bare / name).write_text((path / name).read_text())
    config = json.loads((bare / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (bare / "tokenizer_config.json").write_text(json.dumps(config))
    return load_tokenizer(path), load_tokenizer(bare)


def test_messages_render_with_the_chat_template_or_are_refused(tokenizers):
    templated, bare = tokenizers
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    ids = encode_messages(templated, messages)
    assert templated.decode(ids) == "<|system|>be brief\n<|user|>hi\n<|assistant|>"
    assert not bare.has_chat_template
    with pytest.raises(StatusError) as e:
        encode_messages(bare, messages)
    assert e.value.code == INVALID and "no chat template" in e.value.message


def test_token_bytes_are_the_raw_bytes_of_each_token(tokenizers):
    tokenizer = tokenizers[0]
    text = "héllo → wörld\n\tdone"
    ids = tokenizer.encode(text)
    token_bytes = TokenBytes(tokenizer)
    assert b"".join(token_bytes(t) for t in ids).decode() == text
    assert any(not _complete(token_bytes(t)) for t in ids)  # a character split over tokens
    eos = tokenizer.convert_tokens_to_ids(synthetic.EOS)
    assert token_bytes(eos) == synthetic.EOS.encode()


def _complete(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_models_listed_from_the_hub_cache_and_model_dirs(tmp_path, monkeypatch):
    hub, models = tmp_path / "hub", tmp_path / "models"
    for repo, config in (("models--org--chat-4b", True), ("models--gpt2", True),
                         ("models--org--no-snapshot", False), ("datasets--org--data", True)):
        snapshot = hub / repo / "snapshots" / "abc123"
        snapshot.mkdir(parents=True)
        if config:
            (snapshot / "config.json").write_text("{}")
    for name, config in (("tiny", True), ("empty", False)):
        (models / name).mkdir(parents=True)
        if config:
            (models / name / "config.json").write_text("{}")
    (models / "loose.json").write_text("{}")
    assert list_models([models, tmp_path / "missing"], hub) == \
        [str(models / "tiny"), "gpt2", "org/chat-4b"]
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    assert hub_cache() == hub and list_models([]) == ["gpt2", "org/chat-4b"]
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub_cache() == tmp_path / ".cache" / "huggingface" / "hub"
