"""mlx-lm's ``ArraysCache`` of a GatedDeltaNet layer (conv state, recurrent state)
over the rows of a batch, rewound row by row after a verify pass.

A recurrent state cannot drop its newest tokens. While a pass that ``keep`` may
partly take back is built (``open`` .. ``close``), the layer's state after every fed
token is recorded for all rows at once (``recurrent_capture``: [B, ...] per token);
``keep`` then sets each row to the state after its own kept count, one gather over
the token axis with the per-row index, on the device.

Left padding is mlx-lm's own: a prompt prefill's padding columns are masked
(``ArraysCache.make_mask``), so the layer zeroes their conv input and leaves the
recurrent state as it was: padding never reaches the state. The padding is known on
the host, so the mask goes once every row's padding has been fed. Only a row's
first write may be padded (a padded column inside a sequence would reach the conv
window of the tokens after it).
"""

from __future__ import annotations

import mlx.core as mx
from mlx_lm.models.cache import ArraysCache

from .. import recurrent_capture


class RaggedArraysCache(ArraysCache):
    def __init__(self, left_padding: list[int]):
        super().__init__(2, list(left_padding) if any(left_padding) else None)
        self._padding = list(left_padding)  # per row, padding columns not fed yet
        self._capture: recurrent_capture.Capture | None = None

    def open(self, width: int) -> None:
        """The next ``width`` tokens (more than one) are fed by a pass that ``keep`` may
        rewind."""
        self._capture = recurrent_capture.arm(self, width)

    def close(self) -> None:
        """The pass is built (what it records is lazy arrays, kept until ``keep``)."""
        self._capture.disarm()

    def keep(self, kept: list[int], width: int) -> None:
        """Of the ``width`` tokens the open pass fed, row b keeps its first ``kept[b]``."""
        capture, self._capture = self._capture, None
        if all(n == width for n in kept):
            return  # also where the pass was one token wide and nothing was recorded
        if capture is None or not capture.complete(width):
            raise RuntimeError("a recurrent layer's pass was not recorded token by token")
        capture.rewind_rows(kept)

    def advance(self, N: int) -> None:
        super().advance(N)
        self._padding = [max(0, p - N) for p in self._padding]
        if not any(self._padding):
            self.left_padding = None

    def filter(self, batch_indices: list[int]) -> None:
        super().filter(mx.array(batch_indices))
        self._padding = [self._padding[i] for i in batch_indices]

    def extend(self, other: RaggedArraysCache) -> None:
        super().extend(other)
        self._padding += other._padding
