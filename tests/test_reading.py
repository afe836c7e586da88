"""From the model's probabilities to the number read: the string, its confidence, the runner-up,
the choice between a wide mark read whole and cut, and when a reading goes to review."""

from __future__ import annotations

import numpy as np
import pytest

from digit_inbox.daemon import reading
from digit_inbox.daemon.rows import Row, Status


def sure(digit: int, p: float, second: int | None = None) -> np.ndarray:
    """A probability vector: `digit` at p, the rest on `second` (or spread evenly)."""
    v = np.full(10, (1 - p) / 9 if second is None else 0.0)
    if second is not None:
        v[second] = 1 - p
    v[digit] = p
    return v


def row_of(probs: list[np.ndarray], lines: list[int], **kw) -> Row:
    slots = [((i,),) for i in range(len(probs))]
    row = Row("a.png", Status.OK)
    found = reading.read(np.array(probs), slots, lines)
    reading.fill(row, found, kw.get("min_confidence", 0.6), kw.get("expected"))
    return row


def test_the_string_is_read_in_order_with_lines_separated_by_a_space():
    probs = [sure(0, 0.9), sure(1, 0.9), sure(2, 0.9), sure(3, 0.9)]
    assert row_of(probs, [0, 0, 1, 1]).digits == "01 23"


def test_the_confidence_is_the_product_and_the_runner_up_swaps_the_weakest_digit():
    row = row_of([sure(4, 0.9), sure(2, 0.7, second=7)], [0, 0])
    assert row.status is Status.OK and row.digits == "42"
    assert row.confidence == pytest.approx(0.9 * 0.7)
    assert row.runner_up == "47" and row.runner_up_confidence == pytest.approx(0.9 * 0.3)
    assert row.digit_confidences == "0.9000 0.7000"


def test_one_unsure_digit_sends_the_number_to_review_and_is_named():
    row = row_of([sure(1, 0.95), sure(9, 0.95), sure(2, 0.41)], [0, 0, 0])
    assert row.status is Status.LOW_CONFIDENCE
    assert row.note == "digit 3 of 3 is unsure (0.41)"


def test_a_single_digit_reads_as_it_always_has():
    row = row_of([sure(3, 0.95, second=8)], [0])
    assert (row.digits, row.runner_up, row.status) == ("3", "8", Status.OK)
    assert row.confidence == pytest.approx(0.95) and row.note == ""


@pytest.mark.parametrize(
    ("expected", "note"), [((4, 4), "expected 4 digits, read 3"), ((1, 2), "expected 1 to 2")]
)
def test_a_reading_of_another_length_goes_to_review(expected, note):
    row = row_of([sure(1, 0.99)] * 3, [0, 0, 0], expected=expected)
    assert row.status is Status.LOW_CONFIDENCE and note in row.note


def test_a_cut_must_read_clearly_better_than_the_whole_mark():
    whole, left, right = sure(0, 0.95), sure(6, 0.9995), sure(7, 0.9993)
    found = reading.read(np.array([whole, left, right]), [((0,), (1, 2))], [0])
    assert found.digits == [0]  # a wide 0 is not "67"
    assert found.doubts == [0]  # ... but it may be two digits touching: review
    left, right = sure(6, 0.99), sure(7, 0.98)
    found = reading.read(np.array([whole, left, right]), [((0,), (1, 2))], [0])
    assert found.digits == [0] and found.doubts == []  # halves of one digit read less surely
    whole = sure(0, 0.55)
    found = reading.read(np.array([whole, left, right]), [((0,), (1, 2))], [0])
    assert found.digits == [6, 7] and found.lines == [0, 0] and found.doubts == []


def test_a_field_of_known_length_takes_no_cut_that_would_read_more_digits():
    whole, left, right = sure(0, 0.55), sure(6, 0.9995), sure(7, 0.9993)
    probs, slots = np.array([whole, left, right]), [((0,), (1, 2))]
    assert reading.read(probs, slots, [0], expected=(1, 1)).digits == [0]
    assert reading.read(probs, slots, [0], expected=(1, 1)).doubts == []
    assert reading.read(probs, slots, [0], expected=(1, 2)).digits == [6, 7]
    # Two marks in a two-digit field: neither may be cut; in a 2-3 field only one of them.
    probs = np.array([whole, left, right, whole, left, right])
    slots = [((0,), (1, 2)), ((3,), (4, 5))]
    assert reading.read(probs, slots, [0, 0], expected=(2, 2)).digits == [0, 0]
    assert reading.read(probs, slots, [0, 0], expected=(2, 3)).digits == [6, 7, 0]


@pytest.mark.parametrize("value", ["auto", "AUTO"])
def test_auto_expects_any_length(value):
    assert reading.parse_expected(value) is None


@pytest.mark.parametrize(("value", "expected"), [(4, (4, 4)), ("4", (4, 4)), ("2-10", (2, 10))])
def test_an_expected_length_is_a_number_or_a_range(value, expected):
    assert reading.parse_expected(value) == expected


@pytest.mark.parametrize("value", ["", "four", "6-4", 0, True, 2.5, "1-2-3"])
def test_anything_else_is_refused_with_what_is_accepted(value):
    with pytest.raises(ValueError, match="must be"):
        reading.parse_expected(value)
