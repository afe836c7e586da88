"""From the model's probabilities to the number read: the string, its confidence, the runner-up,
the choice between a wide mark read whole and cut, and when a reading goes to review."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digit_inbox.daemon import preprocess, reading
from digit_inbox.daemon.classifier import Classifier
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
    shapes = [0.7] * len(probs)
    expected = kw.get("expected")
    slashes, column = kw.get("slashes", ()), kw.get("column", False)
    found = reading.read(np.array(probs), slots, lines, shapes, expected, slashes, column)
    reading.fill(row, found, kw.get("min_confidence", 0.6), expected)
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


def test_a_last_digit_that_may_be_the_slash_of_a_trailing_dash_goes_to_review():
    row = row_of([sure(2, 0.999), sure(5, 0.999), sure(1, 0.9999)], [0, 0, 0], slashes=[2])
    assert row.digits == "251" and row.status is Status.LOW_CONFIDENCE
    assert row.note == "digit 3 of 3 may be the slash of a `/-` after the amount"


@pytest.mark.parametrize(
    ("expected", "status"), [(None, Status.LOW_CONFIDENCE), ((1, 1), Status.OK)]
)
def test_one_digit_read_from_a_column_of_marks_goes_to_review_unless_one_is_expected(
    expected, status
):
    row = row_of([sure(5, 0.999)], [0], column=True, expected=expected)
    assert row.digits == "5" and row.status is status
    if status is Status.LOW_CONFIDENCE:
        assert row.note == "marks one above the other: one digit in pieces, or a column of digits"


def one_read(digit: int, p: float) -> reading.Read:
    return reading.read(np.array([sure(digit, p)]), [((0,),)], [0], [0.7])


def test_of_a_page_read_both_ways_round_the_surer_reading_is_taken_and_any_beats_none():
    assert reading.surest([one_read(1, 0.9), one_read(7, 0.999)]) == 1
    assert reading.surest([one_read(1, 0.999), one_read(7, 0.9)]) == 0
    assert reading.surest([None, one_read(7, 0.2)]) == 1


def test_a_page_read_both_ways_round_says_so_and_goes_to_review_when_both_read_surely():
    row = row_of([sure(7, 0.9998)], [0], min_confidence=0.99)
    reading.both_ways(row, one_read(1, 0.95), 0.99)
    assert row.status is Status.OK
    assert row.note == "ink light or dark unclear, read both ways: the other way reads 1 (0.9500)"
    reading.both_ways(row, one_read(1, 0.999), 0.99)
    assert row.status is Status.LOW_CONFIDENCE
    sure_alike = row_of([sure(7, 0.9998)], [0], min_confidence=0.99)
    reading.both_ways(sure_alike, one_read(7, 0.999), 0.99)
    assert sure_alike.status is Status.OK


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


def cut(whole: np.ndarray, left: np.ndarray, right: np.ndarray, width: float) -> reading.Read:
    """A mark `width` times as wide as tall, read whole and cut into two halves."""
    probs = np.array([whole, left, right])
    return reading.read(probs, [((0,), (1, 2))], [0], [width, width / 2, width / 2])


def test_a_cut_must_read_clearly_better_than_the_whole_mark():
    whole, left, right = sure(0, 0.95), sure(6, 0.9998), sure(7, 0.9997)
    found = cut(whole, left, right, 1.2)
    assert found.digits == [0]  # a wide 0 is not "67"
    assert found.doubts == [0]  # ... but it may be two digits touching: review
    left, right = sure(6, 0.99), sure(7, 0.98)
    found = cut(sure(0, 0.9995), left, right, 1.2)
    assert found.digits == [0] and found.doubts == []  # halves of one digit read less surely
    found = cut(sure(0, 0.55), sure(6, 0.998), sure(7, 0.997), 1.2)
    assert found.digits == [6, 7] and found.lines == [0, 0] and found.doubts == []
    found = cut(sure(0, 0.55), left, right, 1.2)
    assert found.digits == [6, 7] and found.doubts == [0]  # a cut read unsurely: review


def test_a_cut_whose_halves_read_otherwise_where_it_falls_goes_to_review():
    halves = [sure(6, 0.999), sure(5, 0.999), sure(0, 0.999), sure(5, 0.998)]
    halves += [sure(0, 0.9), sure(5, 0.9)] * 2
    probs = np.array([sure(8, 0.6), *halves])
    slot = ((0,), (1, 2), (3, 4), (5, 6), (7, 8))
    found = reading.read(probs, [slot], [0], [1.3] + [0.6] * 8)
    assert found.digits == [6, 5] and found.doubts == [0]  # one cut in four reads "65"


def test_a_field_of_known_length_takes_no_cut_that_would_read_more_digits():
    whole, left, right = sure(0, 0.55), sure(6, 0.9995), sure(7, 0.9993)
    probs, slots = np.array([whole, left, right]), [((0,), (1, 2))]
    assert reading.read(probs, slots, [0], [0.7] * 3, expected=(1, 1)).digits == [0]
    assert reading.read(probs, slots, [0], [0.7] * 3, expected=(1, 1)).doubts == []
    assert reading.read(probs, slots, [0], [0.7] * 3, expected=(1, 2)).digits == [6, 7]
    # Two marks in a two-digit field: neither may be cut; in a 2-3 field only one of them.
    probs = np.array([whole, left, right, whole, left, right])
    slots = [((0,), (1, 2)), ((3,), (4, 5))]
    assert reading.read(probs, slots, [0, 0], [0.7] * 6, expected=(2, 2)).digits == [0, 0]
    assert reading.read(probs, slots, [0, 0], [0.7] * 6, expected=(2, 3)).digits == [6, 7, 0]


def test_a_mark_far_too_wide_for_the_digit_it_reads_as_is_cut_when_the_cut_reads_surely():
    seven, left, right = sure(7, 0.9999), sure(7, 0.9998), sure(4, 0.9997)
    found = cut(seven, left, right, 1.6)  # no 7 is written that wide
    assert found.digits == [7, 4]  # its one cut agrees with itself ...
    assert found.doubts == [0]  # ... but a cut taken for its width alone is confirmed by a person
    assert cut(seven, left, right, 0.8).digits == [7]  # a 7 of usual width stays whole
    zero = sure(0, 0.9999)
    assert cut(zero, sure(1, 0.9998), sure(1, 0.9997), 1.3).digits == [0]  # a wide 0 is usual


def test_a_very_wide_mark_whose_cuts_disagree_is_read_cut_but_sent_to_review():
    two = sure(2, 0.9999)
    halves = [sure(2, 0.9998), sure(2, 0.9998), sure(0, 0.97), sure(2, 0.97), sure(2, 0.9)]
    probs = np.array([two, *halves, sure(6, 0.9)])
    found = reading.read(probs, [((0,), (1, 2), (3, 4), (5, 6))], [0], [2.0] + [0.8] * 6)
    assert found.digits == [2, 2] and found.doubts == [0]  # a flat 2, or "22"?


def test_a_wide_mark_is_cut_where_its_cuts_agree_and_always_sent_to_review():
    seven = sure(7, 0.9999)
    agreeing = [sure(7, 0.999), sure(4, 0.999)] * 3
    disagreeing = [sure(7, 0.999), sure(4, 0.999), sure(1, 0.999), sure(1, 0.999)] + [
        sure(1, 0.9)
    ] * 2
    slot = ((0,), (1, 2), (3, 4), (5, 6))
    for pieces, digits, doubts in ((agreeing, [7, 4], [0]), (disagreeing, [7], [0])):
        probs = np.array([seven, *pieces])
        found = reading.read(probs, [slot], [0], [1.4] + [0.6] * 6)  # a 7 this wide is rare
        assert (found.digits, found.doubts) == (digits, doubts)


def test_a_digit_read_without_the_dash_against_it_is_no_sign_of_two_digits_touching():
    # slot: "4" and "5-" read whole, then "5-" cut as 5 and its dash, then the 5 without it
    four, whole = sure(4, 0.999), sure(5, 0.6)
    five, dash, alone = sure(5, 0.999), sure(2, 0.9), sure(5, 0.9995)
    slots = [((0,),), ((1,), (2, 3), (4,))]
    found = reading.read(np.array([four, whole, five, dash, alone]), slots, [0, 0], [0.7] * 5)
    assert found.digits == [4, 5] and found.doubts == []
    # A 5 that reads surely whole: the filler left out is no cut to doubt it by.
    surely = sure(5, 0.9999)
    found = reading.read(np.array([four, surely, five, dash, alone]), slots, [0, 0], [0.7] * 5)
    assert found.digits == [4, 5] and found.doubts == []


def test_a_wide_mark_read_unsurely_whole_and_surely_cut_is_read_cut_and_sent_to_review():
    found = cut(sure(7, 0.95), sure(7, 0.998), sure(4, 0.997), 1.7)
    assert found.digits == [7, 4] and found.doubts == [0]
    found = cut(sure(0, 0.95), sure(6, 0.998), sure(7, 0.997), 1.2)  # a 0 may be that wide
    assert found.digits == [0] and found.doubts == [0]


def test_a_mark_alone_wider_than_its_digit_is_written_must_read_surely_to_be_one_digit():
    def alone(p: float, width: float) -> reading.Read:
        return reading.read(np.array([sure(9, p)]), [((0,),)], [0], [width])

    assert alone(0.9999, 0.9).doubts == []  # a wide 9, read surely
    assert alone(0.998, 0.9).doubts == [0]  # "91" touching reads "9" at 0.998 as easily
    assert alone(0.998, 0.6).doubts == []  # a 9 of usual width
    assert alone(0.9999, 2.0).doubts == [0]  # no 9 is written that wide
    # Among other digits the mark is measured against them (preprocessing offers its cuts).
    probs = np.array([sure(9, 0.998), sure(1, 0.9995)])
    assert reading.read(probs, [((0,),), ((1,),)], [0, 0], [0.9, 0.4]).doubts == []


def test_a_mark_too_wide_for_its_digit_goes_to_review_even_when_no_cut_reads_well():
    found = cut(sure(7, 0.9999), sure(7, 0.6), sure(4, 0.7), 1.4)
    assert found.digits == [7] and found.doubts == [0]
    found = cut(sure(7, 0.9999), sure(7, 0.6), sure(4, 0.7), 0.8)
    assert found.digits == [7] and found.doubts == []


def test_a_mark_in_a_line_far_too_wide_for_its_digit_goes_to_review_though_offered_no_cut():
    probs = np.array([sure(7, 0.9999), sure(2, 0.9999), sure(4, 0.9999)])
    slots = [((0,),), ((1,),), ((2,),)]
    assert reading.read(probs, slots, [0, 0, 0], [2.0, 1.6, 0.7]).doubts == [0]  # "897" as a 7
    assert reading.read(probs, slots, [0, 0, 0], [0.8, 1.0, 0.7]).doubts == []


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


def read_page(*ellipses: tuple[int, int, int, int]) -> reading.Read:
    """A page with rings drawn in ink (x0, y0, x1, y1), read by the shipped model."""
    image = Image.new("L", (260, 200), 245)
    for box in ellipses:
        ImageDraw.Draw(image).ellipse(box, outline=20, width=8)
    prepared = preprocess.prepare(np.asarray(image))
    probs = Classifier().predict(prepared.images)
    return reading.read(probs, prepared.slots, prepared.lines, prepared.shapes)


def test_two_touching_zeros_are_read_as_two_and_one_wide_zero_as_one():
    assert read_page((40, 50, 92, 130), (88, 50, 140, 130)).digits == [0, 0]
    wide = read_page((40, 50, 140, 130))
    assert wide.digits == [0] and wide.doubts == []


def with_rest(digit: int, p: float, not_one: float) -> np.ndarray:
    """Probabilities of the ten digits when the model gives `not_one` to "not one digit"."""
    v = np.full(10, (1 - p - not_one) / 9)
    v[digit] = p
    return v


def test_a_mark_offered_whole_only_that_the_model_reads_as_not_one_digit_is_to_be_cut():
    probs = np.array([with_rest(3, 0.3, 0.65), with_rest(3, 0.9, 0.05), with_rest(1, 0.2, 0.7)])
    slots = [((0,),), ((1,),), ((2,), (3, 4))]  # the third was offered cut already
    assert reading.not_one_digit(probs, slots) == [0]


def test_two_bars_overlapping_in_one_image_are_cut_into_two_bars_each_normalised():
    image = np.zeros((28, 28), np.float32)
    image[4:24, 6:12] = 1
    image[4:24, 10:16] = 1  # the second bar overlaps the first
    cuts = preprocess.cuts_of(image)
    assert cuts, "a mark 10 columns wide and 20 tall is offered cut"
    for pieces, shapes in cuts:
        assert len(pieces) == 2 and len(shapes) == 2
        for piece in pieces:
            rows = np.flatnonzero(piece.max(axis=1) > 0.5)
            assert rows[-1] - rows[0] + 1 >= 18  # each piece is fitted to the 20-pixel box again
        assert all(shape < 1 for shape in shapes)  # each piece narrower than tall


def test_a_speck_is_not_cut():
    image = np.zeros((28, 28), np.float32)
    image[12:15, 12:15] = 1
    assert preprocess.cuts_of(image) == []
