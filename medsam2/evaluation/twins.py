"""The twin check: does a click on one of two identical-looking structures follow that one?

The case that tells tracking by memory from segmenting by appearance (memory_phantoms.make_twins):
a click at the most interior point of one twin, on the middle slice of the slices both twins share,
must give that twin through the whole volume, on both sides of the click, and leave the other twin
alone; a click on the other twin, the mirror result. A model that segments every structure of that
look scores a Dice near 0.67 on each and covers most of the other twin; one that only segments the
clicked slice scores near 0 on both sides. The same function serves the engine tests, the tests
through the real server, and the README's figures, with whatever `segment` callable they have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..clicks import interior_point
from ..memory_phantoms import TWIN_LABELS
from .metrics import dice, other_covered, side_dice

# what the demo model must reach on held-out twins (issue: Dice >= 0.8 each side, <= 5 % of the other)
MIN_DICE = 0.8
MAX_OTHER_COVERED = 0.05


@dataclass(frozen=True)
class TwinResult:
    value: int  # the clicked twin's label value
    click: tuple[int, int, int]  # (i, j, k)
    dice: float
    dice_before: float
    dice_after: float
    dice_clicked_slice: float
    other_covered: float

    def passes(self, min_dice: float = MIN_DICE, max_other: float = MAX_OTHER_COVERED) -> bool:
        return (self.dice_before >= min_dice and self.dice_after >= min_dice
                and self.other_covered <= max_other)


def twin_click(label: np.ndarray, value: int) -> tuple[int, int, int]:
    """(i, j, k): the middle of the slices holding both twins, the clicked twin's most interior point."""
    values = list(TWIN_LABELS.values())
    both = [k for k in range(label.shape[2]) if all((label[:, :, k] == v).any() for v in values)]
    if not both:
        raise ValueError("the twins share no slice")
    k = both[len(both) // 2]
    x, y = interior_point((label[:, :, k] == value).T)  # frame rows are J, columns I
    return int(x), int(y), int(k)


def twin_results(label: np.ndarray, segment: Callable[[tuple[int, int, int]], np.ndarray]) -> list[TwinResult]:
    """Click each twin in turn; `segment((i, j, k))` returns the boolean (I, J, K) prediction."""
    results = []
    for value in TWIN_LABELS.values():
        other = next(v for v in TWIN_LABELS.values() if v != value)
        truth, others = label == value, label == other
        i, j, k = twin_click(label, value)
        pred = np.asarray(segment((i, j, k)), dtype=bool)
        sides = side_dice(pred, truth, k)
        results.append(TwinResult(value, (i, j, k), dice(pred, truth), sides["dice_before"], sides["dice_after"],
                                  dice(pred[:, :, k], truth[:, :, k]), other_covered(pred, others)))
    return results
