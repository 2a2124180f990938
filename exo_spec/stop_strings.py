"""Stop strings: what of a job's text may be shown as its rounds emit it.

The output ends at the first stop string to complete (the earliest end; of two
ending at the same character, the longer), and the match itself is not shown. A
streamed output never shows text that a stop string may still claim: the longest
suffix that is a prefix of some stop string is held back until it can no longer
complete (``StopStrings``).

A speculative round emits several tokens at once. ``OutputText`` feeds them one at a
time, so a stop string completing inside a round cuts the round there: the output
keeps the tokens up to and including the one whose text completed the match (its
text may run past the match; that part is not shown), and the job ends at once. So a
stopped job's token ids decode to its text, the stop string, and possibly a few
characters after it.

No MLX here: the coordinator checks requests with ``check_stop``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256


def check_stop(stop: Sequence[str]) -> list[str]:
    """The stop strings as a list; ValueError for more than ``MAX_STOP_STRINGS`` or one
    not 1 to ``MAX_STOP_CHARS`` characters long."""
    if len(stop) > MAX_STOP_STRINGS:
        raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}")
    for i, s in enumerate(stop):
        if not 1 <= len(s) <= MAX_STOP_CHARS:
            raise ValueError(f"stop string {i} is {len(s)} characters long: each must be 1 "
                             f"to {MAX_STOP_CHARS}")
    return list(stop)


class StopStrings:
    """Text in, the text that may be shown out (pure: strings only)."""

    def __init__(self, stops: Iterable[str]):
        self.stops = tuple(stops)
        if not all(self.stops):
            raise ValueError("a stop string is empty")
        self.stopped = False  # a stop string completed: nothing more is shown
        self._held = ""

    def add(self, text: str) -> str:
        """What may be shown now, of the text held back and ``text``."""
        if self.stopped:
            return ""
        if not self.stops:
            return text
        text = self._held + text
        # Text shown before had no match, nor did the held text alone; and no match can
        # start in text already shown, since the held suffix is the longest that could
        # begin one.
        end, start = min(((i + len(s), -len(s)) for s in self.stops
                          if (i := text.find(s)) >= 0), default=(None, 0))
        if end is not None:
            self.stopped, self._held = True, ""
            return text[: end + start]
        keep = max((self._prefix_suffix(text, s) for s in self.stops), default=0)
        self._held = text[len(text) - keep:]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The text held back, once the output has ended and it can no longer complete."""
        held, self._held = self._held, ""
        return held

    @staticmethod
    def _prefix_suffix(text: str, stop: str) -> int:
        """The length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
        for n in range(min(len(text), len(stop) - 1), 0, -1):
            if text.endswith(stop[:n]):
                return n
        return 0


class Detokenizer(Protocol):
    """mlx-lm's streaming detokenizers, as ``TokenizerWrapper.detokenizer`` makes them."""

    def reset(self) -> None: ...
    def add_token(self, token: int) -> None: ...
    def finalize(self) -> None: ...
    @property
    def last_segment(self) -> str: ...


class OutputText:
    """A job's emitted tokens as the text it shows, cut at the first stop string."""

    def __init__(self, detokenizer: Detokenizer, stops: Iterable[str] = ()):
        self._detok = detokenizer
        self._detok.reset()
        self._stops = StopStrings(stops)
        self._shown: list[str] = []

    @property
    def stopped(self) -> bool:
        return self._stops.stopped

    @property
    def text(self) -> str:
        """Everything shown so far."""
        return "".join(self._shown)

    def add(self, tokens: list[int]) -> tuple[list[int], str]:
        """Of one round's ``tokens``, those the output keeps (all of them, unless a stop
        string completes: then those up to and including the one that completed it)
        and the text they let show."""
        if self.stopped:
            return [], ""
        if not self._stops.stops:
            for t in tokens:
                self._detok.add_token(t)
            return tokens, self._show(self._detok.last_segment)
        shown = []
        for i, t in enumerate(tokens):
            self._detok.add_token(t)
            shown.append(self._stops.add(self._detok.last_segment))
            if self.stopped:
                return tokens[: i + 1], self._show("".join(shown))
        return tokens, self._show("".join(shown))

    def finish(self) -> str:
        """The text left once the output ended: bytes the detokenizer held for a
        character not yet complete, and what was held back for a stop string (a stop
        string that these complete still cuts there)."""
        if self.stopped:
            return ""
        self._detok.finalize()
        text = self._stops.add(self._detok.last_segment)
        return self._show(text if self.stopped else text + self._stops.flush())

    def _show(self, text: str) -> str:
        if text:
            self._shown.append(text)
        return text
