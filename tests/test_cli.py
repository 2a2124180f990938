"""The `exo-spec generate` contract, run as users run it: a real process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from exo_spec.prompt import encode_prompt

from decoders import loaded
from reference import greedy_reference

PROMPT = "def heappush(heap, item):"


def exo_spec(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exo_spec.cli", *args],
        capture_output=True, text=True, timeout=300,
    )


def generate_json(*args: str) -> dict:
    proc = exo_spec("generate", "--json", "--prompt", PROMPT, *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize(
    "target, extra, mode",
    [
        ("llama", [], "none"),
        ("llama", ["--draft-model", "drafter", "--num-draft", "3"], "draft"),
        ("qwen3_5", [], "mtp"),
        ("qwen3_5", ["--mtp", "--num-draft", "2"], "mtp"),
        ("qwen3_5", ["--no-spec"], "none"),
        ("qwen3_5", ["--draft-model", "drafter", "--num-draft", "2"], "draft"),
        ("qwen3_5", ["--num-draft", "2", "--warmup-tokens", "5"], "mtp"),
        ("llama", ["--draft-model", "drafter", "--warmup-tokens", "20"], "draft"),
        ("llama", ["--prompt-lookup"], "lookup"),
        ("qwen3_5", ["--prompt-lookup", "--mtp", "--num-draft", "2"], "lookup+mtp"),
    ],
)
def test_json_matches_greedy_reference(checkpoints, target, extra, mode):
    path = getattr(checkpoints, target)
    extra = [str(checkpoints.drafter) if a == "drafter" else a for a in extra]
    out = generate_json("--model", str(path), "--max-tokens", "12", *extra)
    tok = loaded(path).tokenizer
    prompt = encode_prompt(tok, PROMPT)
    assert out["tokens"] == greedy_reference(loaded(path).model, prompt, 12)
    assert out["finish_reason"] == "length"
    assert out["text"] == tok.decode(out["tokens"])
    stats = out["stats"]
    assert stats["mode"] == mode
    assert stats["prompt_tokens"] == len(prompt)
    assert stats["generation_tokens"] == 12
    for key in ("num_draft", "drafted", "accepted", "acceptance_rate", "tokens_per_round",
                "ttft_s", "prompt_tps", "decode_tps"):
        assert key in stats
    if mode != "none":
        assert stats["drafted"] > 0 or "--num-draft" not in extra


def test_chat_template_is_applied_unless_ignored(checkpoints):
    path = str(checkpoints.llama)
    templated = generate_json("--model", path, "--max-tokens", "2")
    raw = generate_json("--model", path, "--max-tokens", "2", "--ignore-chat-template")
    tok = loaded(checkpoints.llama).tokenizer
    assert raw["stats"]["prompt_tokens"] == len(tok.encode(PROMPT))
    assert templated["stats"]["prompt_tokens"] > raw["stats"]["prompt_tokens"]


def test_streams_text_and_summarises_on_stderr(checkpoints):
    proc = exo_spec("generate", "--model", str(checkpoints.llama), "--prompt", PROMPT,
                    "--draft-model", str(checkpoints.drafter), "--max-tokens", "10")
    assert proc.returncode == 0, proc.stderr
    out = generate_json("--model", str(checkpoints.llama), "--max-tokens", "10")
    # mlx-lm's streaming detokenizer drops the text's leading space, as mlx_lm.generate does
    assert proc.stdout.rstrip("\n") == out["text"].lstrip(" ")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "mode=draft" in proc.stderr


@pytest.mark.parametrize("spec", [["--num-draft", "2"], ["--no-spec"]])
def test_sampling_with_seed_is_reproducible(checkpoints, spec):
    """Exactly, with draft lengths that do not depend on timing (adaptive ones do)."""
    args = ["--model", str(checkpoints.qwen3_5), "--max-tokens", "8", "--temp", "0.8",
            "--top-p", "0.9", "--seed", "3", *spec]
    assert generate_json(*args)["tokens"] == generate_json(*args)["tokens"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "/nonexistent/model"], "model not found"),
        (["--model", "{llama}", "--max-tokens", "0"], "--max-tokens must be > 0"),
        (["--model", "{llama}", "--temp", "-1"], "temperature must be >= 0"),
        (["--model", "{llama}", "--top-p", "1.5"], "top_p"),
        (["--model", "{llama}", "--mtp"], "has no MTP weights"),
        (["--model", "{llama}", "--no-spec", "--draft-model", "{drafter}"], "contradict"),
        (["--model", "{llama}", "--mtp", "--no-spec"], "not allowed with"),
        (["--model", "{llama}", "--prompt-lookup", "--no-spec"],
         "--no-spec and --prompt-lookup contradict each other"),
        (["--model", "{llama}", "--prompt-lookup", "--mtp"], "has no MTP weights"),
        (["--model", "{llama}", "--num-draft", "0"], "--num-draft must be >= 1"),
        (["--model", "{llama}", "--warmup-tokens", "-1"], "--warmup-tokens must be >= 0"),
        (["--model", "{llama}", "--coordinator", "127.0.0.1:1", "--warmup-tokens", "2"],
         "--warmup-tokens runs on this machine"),
        (["--model", "{llama}", "--draft-model", "{foreign}"], "does not share the target's"),
        (["--model", "{broken}"], "unreadable config"),
        (["--model", "{llama}", "--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_clear_line(checkpoints, tmp_path, args, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    paths = {"llama": checkpoints.llama, "drafter": checkpoints.drafter,
             "foreign": checkpoints.foreign_drafter, "broken": broken}
    args = [a.format(**paths) for a in args]
    proc = exo_spec("generate", "--prompt", PROMPT, *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["nodes", "jobs", "coordinator"])
def test_cluster_commands_do_not_import_mlx_lm(command):
    """Only the named command's module loads: the cluster's client commands and the
    coordinator start without mlx-lm (which alone takes a second to import)."""
    probe = ("import sys; from exo_spec.cli import build_parser; "
             f"build_parser({command!r}); print('mlx_lm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
