"""Stop strings: the matcher on plain strings, and ``OutputText`` on a real tokenizer's
detokenizer, rounds of several tokens at once."""

from __future__ import annotations

import json
import random

import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer

from exo_spec.cli import main
from exo_spec.models import synthetic
from exo_spec.stop_strings import MAX_STOP_CHARS, OutputText, StopStrings, check_stop

PROMPT = "def heappush(heap, item):"


def shown(stops: list[str], segments: list[str]) -> tuple[list[str], bool]:
    """What each segment lets show, the flush at the end included; whether it stopped."""
    m = StopStrings(stops)
    out = [m.add(s) for s in segments]
    if not m.stopped:
        out.append(m.flush())
    return out, m.stopped


def cut(stops: list[str], text: str) -> str:
    """The whole text cut before the stop string that completes first (the longer of two
    ending together)."""
    ends = [(i + len(s), -len(s)) for s in stops if (i := text.find(s)) >= 0]
    if not ends:
        return text
    end, minus = min(ends)
    return text[: end + minus]


def test_without_stop_strings_everything_shows_at_once():
    assert shown([], ["a", "bc"]) == (["a", "bc", ""], False)


def test_a_stop_string_in_one_segment_cuts_before_it_and_ends_the_output():
    m = StopStrings(["STOP"])
    assert (m.add("hello STOP world"), m.stopped) == ("hello ", True)
    assert m.add("more") == "" and m.flush() == ""


def test_a_stop_string_split_over_segments_is_held_back_until_it_completes():
    assert shown(["STOP"], ["hel", "lo ST", "O", "P more"]) == (["hel", "lo ", "", ""], True)


def test_held_text_shows_once_it_can_no_longer_complete():
    assert shown(["STOP"], ["ab ST", "AR", "S"]) == (["ab ", "STAR", "", "S"], False)
    assert shown(["aab"], ["a", "a", "a", "b"]) == (["", "", "a", ""], True)


def test_the_first_stop_string_to_complete_wins_and_the_longer_of_a_tie():
    for segments in (["abcd"], list("abcd")):
        assert "".join(shown(["abcd", "bc"], segments)[0]) == "a"
        assert "".join(shown(["cd", "bcd"], segments)[0]) == "a"


def test_streamed_text_never_shows_what_a_stop_string_later_claims():
    rng = random.Random(0)
    for _ in range(500):
        text = "".join(rng.choice("abc ") for _ in range(rng.randint(0, 30)))
        stops = ["".join(rng.choice("abc ") for _ in range(rng.randint(1, 4)))
                 for _ in range(rng.randint(1, 3))]
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 6))))
        segments = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        want = cut(stops, text)
        out, stopped = shown(stops, segments)
        so_far = ""
        for piece in out:
            so_far += piece
            assert want.startswith(so_far), (text, stops, segments)
        assert (so_far, stopped) == (want, any(s in text for s in stops))


def test_check_stop():
    assert check_stop(("a", "b" * MAX_STOP_CHARS)) == ["a", "b" * MAX_STOP_CHARS]
    for bad, message in ([[""], "each must be 1 to 256"], [["x" * 257], "257 characters"],
                         [["x"] * 17, "at most 16 stop strings"]):
        with pytest.raises(ValueError, match=message):
            check_stop(bad)
    with pytest.raises(ValueError):
        StopStrings([""])


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    synthetic.write_tokenizer(path)
    return load_tokenizer(path)


def test_output_text_cuts_a_round_at_the_token_that_completes_the_stop_string(tokenizer):
    text = "def push(heap, item):\n    heap.append(item)\n    return heap"
    ids = tokenizer.encode(text)
    rounds = [ids[i : i + 4] for i in range(0, len(ids), 4)]
    output = OutputText(tokenizer.detokenizer, ["append"])
    kept, streamed = [], []
    for r in rounds:
        k, t = output.add(r)
        kept += k
        streamed.append(t)
        if output.stopped:
            break
    assert output.stopped and output.finish() == ""
    assert output.text == "".join(streamed) == "def push(heap, item):\n    heap."
    # The kept tokens end with the one whose text completed the match, no further.
    assert "append" in tokenizer.decode(kept) and "append" not in tokenizer.decode(kept[:-1])
    assert len(kept) < len(ids)


def test_output_text_without_a_match_is_the_detokenized_text(tokenizer):
    text = "héllo wörld → done"
    ids = tokenizer.encode(text)
    output = OutputText(tokenizer.detokenizer, ["zzz", "doX"])
    streamed = [output.add(ids[i : i + 3])[1] for i in range(0, len(ids), 3)]
    streamed.append(output.finish())
    assert not output.stopped and "".join(streamed) == output.text == text
    assert "\ufffd" not in "".join(streamed)


# -- exo-spec generate --stop, in this process -------------------------------------


def generate(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["generate", "--prompt", PROMPT, *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_stops_at_a_stop_string(checkpoints, capsys):
    model = ["--model", str(checkpoints.llama), "--draft-model", str(checkpoints.llama),
             "--num-draft", "3", "--max-tokens", "30"]
    code, out, err = generate(capsys, *model, "--json")
    assert code == 0, err
    tokens = json.loads(out)["tokens"]
    detok = load_tokenizer(checkpoints.llama).detokenizer
    texts, text = [], ""
    for t in tokens:
        detok.add_token(t)
        text += detok.last_segment
        texts.append(text)
    # A stop string of 3 characters first completed by a token past the first.
    cut = next(i for i in range(1, len(tokens)) if len(texts[i]) > len(texts[i - 1]) >= 3
               and texts[i].find(texts[i][-3:]) == len(texts[i]) - 3)
    stop = ["--stop", "never there", "--stop", texts[cut][-3:]]
    code, out, err = generate(capsys, *model, "--json", *stop)
    assert code == 0, err
    result = json.loads(out)
    assert (result["finish_reason"], result["tokens"], result["text"]) == \
        ("stop", tokens[: cut + 1], texts[cut][:-3])
    assert result["stats"]["generation_tokens"] == cut + 1
    code, out, err = generate(capsys, *model, *stop)
    assert (code, out) == (0, texts[cut][:-3] + "\n"), err
    code, _, err = generate(capsys, *model, "--stop", "")
    assert code == 2 and "stop string 0 is 0 characters" in err, err
