"""``exo-spec bench`` on tiny random models: every row runs, outputs agree, JSON is written."""

from __future__ import annotations

import json

import pytest
from mlx.utils import tree_flatten

from exo_spec.bench.inputs import EDIT_TASK
from exo_spec.bench.report import first_divergence
from exo_spec.cli import main
from exo_spec.models import synthetic
from exo_spec.models.load import load


@pytest.fixture(scope="module")
def models_dir(checkpoints, tmp_path_factory):
    """The layout ``exo-spec make-models`` writes, from the test checkpoints."""
    root = tmp_path_factory.mktemp("bench-models")
    (root / "target").symlink_to(checkpoints.qwen3_5)
    (root / "drafter").symlink_to(checkpoints.drafter)
    synthetic.write_llama(root / "untrained-drafter", checkpoints.tokenizer, hidden_size=32,
                          num_hidden_layers=1, seed=9)
    (root / "prompts.json").write_text(json.dumps(["def heappush(heap, item):", "x = 1"]))
    return root


def _bench(tmp_path, *flags):
    out = tmp_path / "bench.json"
    assert main(["bench", "--max-tokens", "6", "--repeats", "1", "--num-prompts", "1",
                 "--json", str(out), *flags]) == 0
    return json.loads(out.read_text())


def test_models_dir_rows_and_two_ranks(models_dir, tmp_path, capsys):
    doc = _bench(tmp_path, "--models", str(models_dir), "--ks", "2", "--local-ranks", "2",
                 "--group-prompts", "1", "--warmup-tokens", "0")
    rows = {(r["group"], r["row"], r["k"]): r for r in doc["rows"]}
    for key in [("single", "mlx-lm plain", "-"), ("single", "exo-spec plain", "-"),
                ("single", "exo-spec drafter", "2"), ("single", "exo-spec drafter", "auto"),
                ("single", "exo-spec mtp", "2"), ("single", "exo-spec mtp", "auto"),
                ("single", "exo-spec lookup", "2"), ("single", "exo-spec lookup", "auto"),
                ("single", "exo-spec lookup+mtp", "auto"),
                ("single", "exo-spec untrained drafter", "auto"),
                ("2 ranks pipeline", "group plain", "-"), ("2 ranks pipeline", "group mtp", "auto"),
                ("2 ranks pipeline", "group drafter", "auto")]:
        row = rows[key]
        assert row["error"] is None, key
        assert row["same_output"] is True, key
        assert row["first_divergence"] == [None], key
        assert row["decode_tps"] > 0, key
    # mlx-lm cannot speculate on a hybrid (GatedDeltaNet) target: marked, not hidden.
    refused = rows[("single", "mlx-lm speculative", "2")]
    assert refused["error"] and "trimmable" in refused["error"]
    assert set(doc["checks"]) == {"mtp_vs_mlx_plain", "drafter_vs_mlx_speculative",
                                  "untrained_auto_vs_plain", "group_speculative_vs_group_plain"}
    assert doc["models"]["target"]["mtp"]["parameters"] > 0
    assert "n/a:" in capsys.readouterr().out


def test_explicit_paths_with_mlx_speculative(checkpoints, tmp_path):
    doc = _bench(tmp_path, "--model", str(checkpoints.llama), "--draft-model",
                 str(checkpoints.drafter), "--ks", "2", "--prompt", "def f(x):",
                 "--warmup-tokens", "2", "--edit-task")
    rows = {(r["row"], r["k"]): r for r in doc["rows"]}
    assert set(rows) == {("mlx-lm plain", "-"), ("mlx-lm speculative", "2"),
                         ("exo-spec plain", "-"), ("exo-spec drafter", "2"),
                         ("exo-spec drafter", "auto"), ("exo-spec lookup", "2"),
                         ("exo-spec lookup", "auto")}
    assert doc["models"]["prompts"] == 2  # --num-prompts 1, then the edit task
    assert all(r["same_output"] is True and r["error"] is None
               and r["first_divergence"] == [None, None] for r in rows.values())
    check = doc["checks"]["drafter_vs_mlx_speculative"]
    assert check["ratio"] is not None and set(check["same_k"]) == {"2"}


def test_first_divergence():
    ref = [5, 6, 7, 8]
    assert first_divergence([5, 6, 7, 8], ref) is None
    assert first_divergence([5, 9, 7, 8], ref) == 1
    assert first_divergence([5, 6], ref) == 2  # cut short
    assert first_divergence([5, 6, 7, 8, 9], ref) == 4  # ran on
    assert first_divergence([5, 6], ref, eos={7}) is None  # stopped at the reference's EOS
    assert first_divergence([5], ref, eos={7}) == 1
    assert EDIT_TASK.count("def moving_average(values, window):") == 2  # file, then rewrite


def test_bad_input(tmp_path, capsys):
    assert main(["bench", "--models", str(tmp_path)]) == 2
    assert "has no target/" in capsys.readouterr().err
    assert main(["bench", "--model", str(tmp_path), "--repeats", "0"]) == 2


def test_quantized_models_keep_every_row_equal(models_dir, tmp_path):
    """--quantize 8 quantizes the target, its MTP head and the drafters for
    every row, the group's included (each rank quantizes as it loads); greedy outputs
    still agree row by row with mlx-lm's plain decode of the quantized target, a group
    launch's timed decode included after its warm-up."""
    doc = _bench(tmp_path, "--models", str(models_dir), "--quantize", "8", "--ks", "2",
                 "--warmup-tokens", "2", "--local-ranks", "2", "--group-prompts", "1",
                 "--group-proposers", "drafter", "--group-ks", "2")
    group = {r["row"]: r for r in doc["rows"] if r["group"] == "2 ranks pipeline"}
    assert set(group) == {"group plain", "group drafter"}
    for row in group.values():
        assert (row["error"], row["same_output"]) == (None, True), row
    assert doc["models"]["target"]["mtp"]["quantized_bits"] == [8]  # its fc, 2 x 32 wide
    for name in ("target", "drafter"):
        described = doc["models"][name]
        assert described["quantized_bits"] == [8]
        float_model = load(str(models_dir / name)).model  # counted as stored, unpacked
        assert described["parameters"] == sum(
            v.size for _, v in tree_flatten(float_model.parameters()))
    ran = [r for r in doc["rows"] if r["error"] is None]
    assert {r["row"] for r in ran} >= {"exo-spec mtp", "exo-spec drafter", "mlx-lm plain"}
    assert all(r["same_output"] is True for r in ran)
