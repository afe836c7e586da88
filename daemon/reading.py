"""From the model's probabilities for a page's candidate images to the number read.

Preprocessing offers, for every position of the string, one or more alternatives (a mark too
wide for one digit is also offered cut in two or three). A mark is read whole unless its cut
reads clearly surer (geometric mean of the top probabilities), or the mark is too wide for the
digit it reads as whole and its cuts read surely (see TOO_WIDE, UNSURE_WIDE): the model,
trained on single digits, reads two touching ones squeezed into one image as one digit, often
surely. Wherever one digit or two is a guess, the page goes to review rather than being filed
with a reading that may be wrong (FILED_AGREED, LONE_WIDE). The string's
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
# The model reads two touching digits squeezed into one 28x28 as one digit, often surely: its
# probabilities alone cannot tell a wide 0 from "00". The mark's shape can: how wide each digit
# is written, as the mean and spread of log(width / height) of its ink over MNIST's 60,000
# training digits (ink above 80 of 255). A "1" is narrow; a 0, 2 or 5 may be as wide as tall.
ASPECT_MEAN = (-0.109, -0.949, -0.074, -0.242, -0.248, -0.077, -0.335, -0.272, -0.289, -0.404)
ASPECT_SPREAD = (0.201, 0.467, 0.223, 0.215, 0.216, 0.265, 0.220, 0.218, 0.224, 0.207)
# A mark read whole as a digit it is more than AGREED_WIDE spreads too wide for is cut when AGREED
# or more of its cuts read the same digits at min_confidence's default or better (two digits side by
# side read alike wherever the cut falls between them, the halves of one digit do not). One more
# than TOO_WIDE spreads too wide (1 in 700 of a normal spread) is also cut when only its best cut
# reads at TOUCHING_DOUBT or better. A mark cut for its width alone always goes to review: a very
# flat 2 is sometimes that wide and reads "22", a wide 0 "67" (in 4,000 single digits two were cut
# so, and filed `ok` they would be silent misreads). A mark that may be cut and is more than
# AGREED_WIDE spreads too wide but read whole goes to review too, and so does any mark more than
# TOO_WIDE spreads too wide read whole, offered cut or not (in a line of merged pairs: wrong mixed
# numbers filed `ok` 8 -> 6 clean, 9 -> 7 varied, bench_numbers.py). At 2.5 and 2.0 the single
# digits of bench_scans.py lost 0.35 points clean and the crops up to 0.25; at 3.0 and 2.5 they read
# within 1-2 files of before and touching pairs 8-14 points more often right (bench_numbers.py, seed
# 2024). Not all: a pair hardly wider than one digit is as wide as many single 0s, 2s and 5s, and is
# read whole.
TOO_WIDE = 3.0
AGREED_WIDE = 2.5
AGREED = 0.5  # of the cuts
SURE_CUT = 0.99
# Figures below: 2,000 clean and 2,000 varied single digits (bench_scans.py) and 300 clean and
# 300 varied touching pairs (bench_numbers.py), seed 2024, each rule left out in turn.
# A mark cut because its cut reads clearly surer than the whole is filed `ok` only when
# FILED_AGREED or more of its cuts read the same digits surely: where the cut falls changes
# what the halves of a fragile cut read ("05" cut through the 0 reads "65"). Wrong pairs filed
# `ok` 34 -> 28 clean, 33 -> 31 varied (mixed numbers 11 -> 8, 11 -> 9), for 29 and 21 more
# pairs to review; no single digit is cut so.
FILED_AGREED = 0.3
# A mark more than UNSURE_WIDE spreads too wide for the digit it reads as whole, read whole
# below SURE_CUT and cut at SURE_CUT or better, is more likely two digits than one: it is read
# cut, and goes to review. Touching pairs read right 46.0 -> 52.0 % clean, 40.0 -> 44.3 %
# varied; single digits as before (from 1.5 down, 1 in 1,000 varied ones was read cut).
UNSURE_WIDE = 2.0
# A mark alone on its page (a single-digit scan, or two digits touching) has no other digits
# to be measured against. More than LONE_WIDE spreads wider than the digit it reads as whole
# is written on average, it must read at LONE_SURE or better to be filed `ok` as one digit.
# Wrong pairs filed `ok` 44 -> 28 clean, 48 -> 31 varied, for 12 and 11 more single digits to
# review (2.60 -> 3.20 %, 3.45 -> 4.00 %); 0.5 and 0.999 cost the same and spared 2 pairs
# fewer. A pair hardly wider than one digit that reads surely ("91" read as a 9 at 0.9999, "11"
# as a 1) still passes: nothing in its width or probabilities tells it from one digit.
LONE_WIDE = 1.0
LONE_SURE = 0.9995


# The model's last class says an image holds ink that is not one digit (digits touching): its
# digits' probabilities then sum to less than one. A mark offered whole only, whose digits
# share less than ONE_DIGIT, is offered cut too (preprocess.cuts_of).
ONE_DIGIT = 0.5


def not_one_digit(probs: np.ndarray, slots: Sequence[tuple[tuple[int, ...], ...]]) -> list[int]:
    """The slots offered whole only whose image the model reads as not one digit."""
    return [
        k
        for k, slot in enumerate(slots)
        if len(slot) == 1 and len(slot[0]) == 1 and float(probs[slot[0][0]].sum()) < ONE_DIGIT
    ]


@dataclass
class Read:
    probs: np.ndarray  # (n, 10): the probabilities of each digit read, in reading order
    lines: list[int]  # the line of each digit (0 = top)
    images: list[int]  # which candidate image each digit was read from
    doubts: list[int] = field(default_factory=list)  # digits that may be two touching
    slashes: list[int] = field(default_factory=list)  # digits that may be a `/-`'s slash
    column: bool = False  # one digit read from marks that may be a column of digits

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
    shapes: Sequence[float],
    expected: tuple[int, int] | None = None,
    slashes: Sequence[int] = (),
    column: bool = False,
) -> Read:
    """The best alternative of every slot (probs: one row per candidate image; shapes: the
    width / height of each image's ink). A mark is read whole unless a cut reads clearly
    better, or the mark is too wide for the digit it reads as whole and its cuts read surely
    (see TOO_WIDE, UNSURE_WIDE). `doubts` lists the digits that may be two touching: the page
    goes to review.

    With an expected length, a cut that would read more digits than the most expected is
    neither taken nor a doubt: in a one-digit field a wide mark is one digit. `slashes`: the
    slots that may be the slash of a `/-` (see preprocess.slash_before_dash). `column`: the
    one digit was read from marks that may be a column of one-digit lines (see
    preprocess.Reading.column): a doubt, unless one digit is all that is expected."""
    chosen: list[int] = []
    line_of: list[int] = []
    doubts: list[int] = []
    slashed: list[int] = []
    top = np.log(np.maximum(probs.max(axis=1), 1e-12)) if len(probs) else np.zeros(0)
    spare = math.inf if expected is None else expected[1] - len(slots)
    wide = too_wide(probs, shapes)

    def score(pieces: tuple[int, ...]) -> float:
        return math.exp(float(np.mean(top[list(pieces)])))

    for k, (slot, line) in enumerate(zip(slots, lines, strict=True)):
        if k in slashes:
            slashed.append(len(chosen))
        pieces = slot[0]
        allowed = [cut for cut in slot[1:] if len(cut) - 1 <= spare]
        width = float(wide[slot[0][0]]) if len(slot[0]) == 1 else 0.0
        whole = score(slot[0])
        doubt = False
        # A digit offered without the dash or `=` against it is one piece (a filler, see
        # preprocess.trailing_stroke): no sign of two digits touching, and judged by its kind.
        touching = [cut for cut in allowed if len(cut) > 1]
        scores = [score(cut) for cut in allowed]
        if allowed and max(scores) > whole + SPLIT_MARGIN:
            pieces = allowed[int(np.argmax(scores))]  # filed only where its cuts agree
            alike = touching if len(pieces) > 1 else [cut for cut in allowed if len(cut) == 1]
            doubt = agreed(probs, alike, pieces) < FILED_AGREED  # (FILED_AGREED)
        elif touching:
            cuts = [scored for scored, cut in zip(scores, allowed, strict=True) if len(cut) > 1]
            best = touching[int(np.argmax(cuts))]
            sure = max(cuts) ** len(best)  # the cut's probability: the product
            agreement = agreed(probs, touching, best)
            if (width > AGREED_WIDE and agreement >= AGREED) or (
                sure >= TOUCHING_DOUBT and width > TOO_WIDE
            ):
                pieces, doubt = best, True  # cut for its width alone: a wide 0 may read "67",
                # so a person confirms it
            elif whole < SURE_CUT <= sure and width > UNSURE_WIDE:
                pieces, doubt = best, True  # wide, read unsurely whole and surely cut: more
                # likely two digits than one, confirmed by a person
            else:
                doubt = sure >= TOUCHING_DOUBT or width > AGREED_WIDE
        if len(pieces) == 1 and spare >= 1:
            # Offered cut or not (among merged pairs a mark is no wider than the others, and
            # preprocessing offers it no cut); alone on its page, a mark is measured against
            # its own digit only (LONE_WIDE).
            alone = len(slots) == 1
            doubt = doubt or width > (AGREED_WIDE if alone else TOO_WIDE)
            doubt = doubt or (alone and width > LONE_WIDE and whole < LONE_SURE)
        if doubt:
            doubts.append(len(chosen))
        spare -= len(pieces) - 1
        chosen += pieces
        line_of += [line] * len(pieces)
    column = column and (expected is None or expected[1] > 1)
    digits = probs[chosen].reshape(-1, probs.shape[-1])
    return Read(digits, line_of, chosen, doubts, slashed, column)


def agreed(probs: np.ndarray, cuts: Sequence[tuple[int, ...]], best: tuple[int, ...]) -> float:
    """The share of `cuts` that read the digits of `best` with a probability (the product) of
    SURE_CUT or better."""
    want = probs[list(best)].argmax(axis=1).tolist()
    same = [
        len(pieces) == len(best)
        and probs[list(pieces)].argmax(axis=1).tolist() == want
        and float(np.prod(probs[list(pieces)].max(axis=1))) >= SURE_CUT
        for pieces in cuts
    ]
    return sum(same) / len(cuts)


def too_wide(probs: np.ndarray, shapes: Sequence[float]) -> np.ndarray:
    """Per candidate image, how many spreads wider its ink is than the digit it reads as is
    written on average (log width / height; negative: narrower)."""
    if not len(probs):
        return np.zeros(0)
    digit = probs.argmax(axis=1)
    ratio = np.log(np.maximum(np.asarray(shapes, float), 1e-3))
    return (ratio - np.array(ASPECT_MEAN)[digit]) / np.array(ASPECT_SPREAD)[digit]


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
    for k in found.slashes:
        notes.append(f"digit {k + 1} of {n} may be the slash of a `/-` after the amount")
    if found.column:
        notes.append("marks one above the other: one digit in pieces, or a column of digits")
    if confidences[weakest] < min_confidence:
        if n > 1:
            notes.append(f"digit {weakest + 1} of {n} is unsure ({confidences[weakest]:.2f})")
        row.status = Status.LOW_CONFIDENCE
    if notes:
        row.status = Status.LOW_CONFIDENCE
        row.note = "; ".join([row.note, *notes] if row.note else notes)


def surest(readings: Sequence[Read | None]) -> int:
    """Which of a page's readings (one per way its ink was taken: dark, light) is surest: the
    highest confidence of the whole string; a reading beats none."""
    return max(
        range(len(readings)),
        key=lambda i: -1.0 if (r := readings[i]) is None else math.prod(r.confidences),
    )


def both_ways(row: Row, rival: Read | None, min_confidence: float) -> None:
    """Say in the row's note that its page was read both ways round (light or dark ink was
    unclear) and what the other way read; when that was sure too, and reads otherwise, a
    person decides."""
    if row.status in (Status.BLANK, Status.ERROR):
        return
    other = "no digit" if rival is None else text(rival.digits, rival.lines)
    sure = 0.0 if rival is None else math.prod(rival.confidences)
    note = f"ink light or dark unclear, read both ways: the other way reads {other} ({sure:.4f})"
    if sure >= min_confidence and other != row.digits:
        row.status = Status.LOW_CONFIDENCE
    row.note = "; ".join([row.note, note] if row.note else [note])


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
