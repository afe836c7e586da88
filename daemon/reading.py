"""From the model's probabilities for a page's candidate images to the number read.

Preprocessing offers, for every position of the string, one or more alternatives (a mark too
wide for one digit is also offered cut in two or three); the alternative whose digits the
model is surest of on average (geometric mean of their top probabilities) is read. The string's
confidence is the product of its digits' probabilities: the probability of the whole string if
the digits are read independently, so one unsure digit makes the whole reading unsure.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from digit_inbox.daemon.health import plural
from digit_inbox.daemon.rows import Row, Status

# Measured on 4,000 single digits and 191 touching pairs (bench/scans.py pages): a margin of
# 0.07 keeps wide single digits read whole (one more misread in 4,000). With the calibrated
# model a cut reading at 0.999 or better while the whole mark won sends a page to review:
# 2.9 % of clean and 3.9 % of varied single digits (0.95 sent 6.2 % and 7.1 %, for two points
# fewer touching pairs filed wrong; bench_scans.py and bench_numbers.py, seed 2024).
SPLIT_MARGIN = 0.07
TOUCHING_DOUBT = 0.999


@dataclass
class Read:
    probs: np.ndarray  # (n, 10): the probabilities of each digit read, in reading order
    lines: list[int]  # the line of each digit (0 = top)
    images: list[int]  # which candidate image each digit was read from
    doubts: list[int] = field(default_factory=list)  # digits that may be two touching

    @property
    def digits(self) -> list[int]:
        return [int(i) for i in self.probs.argmax(axis=1)]

    @property
    def confidences(self) -> list[float]:
        return [float(p) for p in self.probs.max(axis=1)]


def read(
    probs: np.ndarray,
    slots: Sequence[tuple[tuple[int, ...], ...]],
    lines: Sequence[int],
    expected: tuple[int, int] | None = None,
) -> Read:
    """The best alternative of every slot (probs: one row per candidate image).

    With an expected length, a cut that would read more digits than the most expected is
    neither taken nor a doubt: in a one-digit field a wide mark is one digit."""
    chosen: list[int] = []
    line_of: list[int] = []
    doubts: list[int] = []
    top = np.log(np.maximum(probs.max(axis=1), 1e-12)) if len(probs) else np.zeros(0)
    spare = math.inf if expected is None else expected[1] - len(slots)

    def score(pieces: tuple[int, ...]) -> float:
        return math.exp(float(np.mean(top[list(pieces)])))

    for slot, line in zip(slots, lines, strict=True):
        whole = score(slot[0])
        cuts = {k: score(pieces) for k, pieces in enumerate(slot) if 0 < len(pieces) - 1 <= spare}
        best = max(cuts, key=cuts.__getitem__, default=None)
        if best is not None and cuts[best] > whole + SPLIT_MARGIN:
            pieces = slot[best]
            spare -= len(pieces) - 1
        else:
            pieces = slot[0]
            if best is not None and cuts[best] >= TOUCHING_DOUBT:
                doubts.append(len(chosen))
        chosen += pieces
        line_of += [line] * len(pieces)
    return Read(probs[chosen].reshape(-1, probs.shape[-1]), line_of, chosen, doubts)


def text(digits: Sequence[int], lines: Sequence[int]) -> str:
    """The digit string, lines separated by one space: "012 345"."""
    out = ""
    for k, (digit, line) in enumerate(zip(digits, lines, strict=True)):
        if k and line != lines[k - 1]:
            out += " "
        out += str(digit)
    return out


def fill(
    row: Row, found: Read, min_confidence: float, expected: tuple[int, int] | None = None
) -> None:
    """The row's reading: digits, confidence (product), the runner-up string (the weakest
    digit swapped for its second guess), and the status: review when any digit is unsure or
    the count is not the one expected."""
    digits, confidences = found.digits, found.confidences
    n = len(digits)
    weakest = int(np.argmin(confidences))
    second = int(np.argsort(found.probs[weakest])[-2])
    row.digits = text(digits, found.lines)
    row.confidence = math.prod(confidences)
    swapped = [*digits[:weakest], second, *digits[weakest + 1 :]]
    row.runner_up = text(swapped, found.lines)
    row.runner_up_confidence = (
        row.confidence / max(confidences[weakest], 1e-12) * float(found.probs[weakest, second])
    )
    row.digit_confidences = " ".join(f"{c:.4f}" for c in confidences)
    notes = []
    if expected is not None and not expected[0] <= n <= expected[1]:
        notes.append(f"expected {describe(expected)}, read {n}")
    for k in found.doubts:
        notes.append(f"digit {k + 1} of {n} is wide enough for two digits touching")
    if confidences[weakest] < min_confidence:
        if n > 1:
            notes.append(f"digit {weakest + 1} of {n} is unsure ({confidences[weakest]:.2f})")
        row.status = Status.LOW_CONFIDENCE
    if notes:
        row.status = Status.LOW_CONFIDENCE
        row.note = "; ".join([row.note, *notes] if row.note else notes)


def describe(expected: tuple[int, int]) -> str:
    low, high = expected
    if low == high:
        return plural(low, "digit")
    return f"{low} to {high} digits"


def parse_expected(value: object) -> tuple[int, int] | None:
    """`auto` -> None (as many as are written), N -> (N, N), "min-max" -> (min, max); raises
    ValueError saying what is accepted."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        low = high = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", value):
        parts = [int(v) for v in value.split("-")]
        low, high = parts[0], parts[-1]
    else:
        raise ValueError(f"must be auto, a number of digits or a range such as 4-6, got {value!r}")
    if low < 1 or high < low:
        raise ValueError(f"must be at least 1, and a range must run low to high, got {value!r}")
    return low, high
