"""Preprocessing, step by step, on small synthetic pages: the ink map, polarity, the threshold,
line and speck removal, connected components, and the MNIST-style normalisation."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from bench import number_scans, scans
from digit_inbox.daemon import decode, preprocess, reading
from digit_inbox.daemon.classifier import Classifier
from digit_inbox.daemon.contract import DIGIT_BOX, IMAGE_SIZE
from digit_inbox.daemon.decode import EXTENSIONS, DecodeError
from tests.helpers import mnist_test_digits

WHITE, BLACK = (245, 245, 240), (20, 20, 25)


def seven(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, width: int) -> None:
    draw.line([(x, y), (x + 0.6 * size, y), (x + 0.2 * size, y + size)], BLACK, width)


def zero(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, width: int) -> None:
    draw.ellipse([x, y, x + 0.65 * size, y + size], outline=BLACK, width=width)


def scan(
    shape=seven,
    page: tuple[int, int] = (160, 200),
    at: tuple[float, float] = (50, 50),
    size: float = 80,
    width: int = 8,
    clutter=None,
) -> np.ndarray:
    """An RGB page (uint8) with a digit-like shape drawn in black; `clutter(draw)` adds more."""
    image = Image.new("RGB", (page[1], page[0]), WHITE)
    draw = ImageDraw.Draw(image)
    if clutter is not None:
        clutter(draw)
    if shape is not None:
        shape(draw, at[0], at[1], size, width)
    return np.asarray(image)


def read(pixels: np.ndarray) -> np.ndarray:
    prepared = preprocess.prepare(pixels)
    assert prepared.image is not None, prepared.blank_reason
    return prepared.image


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Correlation of two 28x28 images, allowing a shift of one pixel (centring by mass rounds
    to whole pixels, as MNIST did)."""
    best = -1.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            x = np.roll(a, (dy, dx), axis=(0, 1)) - a.mean()
            y = b - b.mean()
            best = max(best, float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum())))
    return best


def test_output_fits_the_digit_box_and_is_centred_by_mass():
    image = read(scan(page=(300, 260), at=(30, 170), size=100))
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    rows, cols = np.nonzero(image > 0.05)
    height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    assert max(height, width) in (DIGIT_BOX, DIGIT_BOX + 1)  # plus a pixel of anti-aliasing
    mass = image.sum()
    centre = (
        (image.sum(1) * np.arange(28)).sum() / mass,
        (image.sum(0) * np.arange(28)).sum() / mass,
    )
    assert np.allclose(centre, IMAGE_SIZE / 2, atol=0.75)
    assert image.max() > 0.95, "stroke cores are saturated as in MNIST"


def test_the_same_digit_reads_the_same_anywhere_at_any_size():
    reference = read(scan())
    for page, at, size, width in [
        ((400, 300), (200, 20), 120, 12),  # bigger, elsewhere, thicker pen to match
        ((1200, 1600), (900, 700), 60, 6),  # a small digit on a big page
    ]:
        assert similarity(read(scan(page=page, at=at, size=size, width=width)), reference) > 0.9


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    return (
        np.asarray(Image.fromarray(pixels).resize((50, 40), Image.Resampling.BOX), np.float32) / 255
    )


def bold_light_seven(width: int) -> np.ndarray:
    """A large bold 7 in light ink on grey paper: much the same page either way round."""
    image = Image.new("RGB", (120, 100), (120, 120, 120))
    x, y, size = 20, 10, 75
    line = [(x, y), (x + 0.6 * size, y), (x + 0.2 * size, y + size)]
    ImageDraw.Draw(image).line(line, (235, 235, 235), width)
    return np.asarray(image)


def test_a_page_whose_ink_may_be_light_or_dark_is_read_both_ways_round():
    classifier = Classifier(threads=1)
    unclear = preprocess.prepare(bold_light_seven(width=10))
    assert unclear.other is not None and len(unclear.other.slots) == 1
    assert classifier.predict(unclear.other.images).argmax(axis=1).tolist() == [7]
    assert preprocess.prepare(bold_light_seven(width=4)).other is None  # clearly light ink
    assert preprocess.prepare(scan()).other is None  # clearly dark ink


def wide_zero(scale: int) -> np.ndarray:
    image = Image.new("L", (44 * scale, 30 * scale), 245)
    box = [4 * scale, 4 * scale, 40 * scale, 26 * scale]
    ImageDraw.Draw(image).ellipse(box, outline=20, width=max(2, 3 * scale))
    return np.asarray(image)


def test_a_crop_is_one_digit_never_cut_while_the_same_ink_on_a_page_is_offered_cut():
    crop = preprocess.prepare(wide_zero(1))  # 44 x 30 px, as datasets and form fields store one
    assert crop.crop and [len(slot) for slot in crop.slots] == [1]
    page = preprocess.prepare(wide_zero(6))  # the same ink on a scan may be two digits touching
    assert not page.crop and len(page.slots) == 1 and len(page.slots[0]) > 1


def test_white_on_black_reads_like_black_on_white():
    pixels = scan()
    assert preprocess.ink_ratio(thumbnail(255 - pixels)) < preprocess.LIGHT_INK
    assert preprocess.ink_ratio(thumbnail(pixels)) >= preprocess.UNCLEAR_INK
    assert similarity(read(255 - pixels), read(pixels)) > 0.95


def test_blue_ink_on_yellow_paper_under_uneven_light_reads_like_black_on_white():
    reference = read(scan())
    pixels = scan().astype(np.float32) / 255
    ink = pixels.mean(axis=2, keepdims=True) < 0.5
    yellow, blue = np.array([0.98, 0.93, 0.72]), np.array([0.15, 0.2, 0.65])
    coloured = np.where(ink, blue, yellow)
    light = np.linspace(1.0, 0.55, coloured.shape[1])[None, :, None]  # a lamp to the left
    assert similarity(read(coloured * light), reference) > 0.9


def specks(draw: ImageDraw.ImageDraw) -> None:
    """Dust all over the page, clear of the digit (at x 50..98, y 50..130)."""
    rng = np.random.default_rng(3)
    for x, y in rng.uniform(5, 155, (40, 2)):
        if not (40 < x < 110 and 40 < y < 140):
            r = rng.uniform(0.8, 2.5)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=BLACK)


def test_specks_are_dropped():
    assert similarity(read(scan(clutter=specks)), read(scan())) > 0.9
    assert preprocess.prepare(scan(shape=None, clutter=specks)).image is None


def test_a_flat_blot_beside_a_thin_stroke_is_read_as_one_mark_without_a_numpy_warning():
    page = np.full((160, 200), 255, np.uint8)
    page[70:82, 50:100] = 0  # the inkiest mark, flat
    page[55:91, 120:123] = 0  # the tallest, thin: no mark is both, so no digit height
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "Mean of empty slice" is a warning
        prepared = preprocess.prepare(page)
    assert len(prepared.slots) == 1


def box(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle([35, 35, 115, 145], outline=(90, 90, 90), width=2)


def ruled(draw: ImageDraw.ImageDraw) -> None:
    for y in (30, 88, 146):  # the middle rule crosses the digit
        draw.line([(0, y), (200, y + 3)], fill=(120, 140, 200), width=2)


@pytest.mark.parametrize("clutter", [box, ruled], ids=["box", "ruled"])
def test_form_boxes_and_ruled_lines_are_removed(clutter):
    assert similarity(read(scan(clutter=clutter)), read(scan())) > 0.9


def test_a_line_through_a_digit_goes_but_the_digit_stays_whole():
    mask = np.zeros((100, 120), bool)
    yy, xx = np.mgrid[:100, :120]
    ring = np.abs(np.hypot((yy - 50) / 35, (xx - 60) / 22) - 1) < 0.12  # a "0"
    line = (yy >= 49) & (yy <= 50)  # a rule through its middle, across the page
    cleaned = preprocess.remove_lines(mask | ring | line)
    near_ring = np.hypot((yy - 50) / 35, (xx - 60) / 22)
    assert not cleaned[line & ((near_ring < 0.7) | (near_ring > 1.3))].any(), "the rule is gone"
    assert cleaned[ring].mean() > 0.97, "the digit's own pixels stay"
    assert preprocess.label(cleaned)[1] == 1, "and it is still one piece"


def test_a_digits_own_bar_is_not_taken_for_a_line():
    mask = np.zeros((100, 100), bool)
    mask[20:23, 25:75] = True  # the bar of a 7, 50 % of the page wide
    for i in range(60):  # its stem
        mask[23 + i, 73 - i // 2 : 76 - i // 2] = True
    assert (preprocess.remove_lines(mask) == mask).all()


@pytest.mark.parametrize("top", [10, 3], ids=["margin", "tight crop"])
def test_a_lone_straight_stroke_is_a_one_not_a_line(top):
    image = Image.new("L", (75, 100), 245)
    ImageDraw.Draw(image).line([(40, top), (34, 100 - top)], fill=20, width=5)
    digit = read(np.asarray(image))
    rows, cols = np.nonzero(digit > 0.5)
    assert rows.max() - rows.min() >= 17 and cols.max() - cols.min() <= 8


def test_a_scanners_dark_frame_is_cleared():
    def frame(draw: ImageDraw.ImageDraw) -> None:
        draw.rectangle([0, 0, 200, 6], fill=BLACK)
        draw.rectangle([0, 0, 5, 160], fill=BLACK)

    assert similarity(read(scan(clutter=frame)), read(scan())) > 0.9


def tight(pixels: np.ndarray) -> np.ndarray:
    """The page cut to the box around its ink, as digit datasets and form software store them."""
    rows, cols = np.nonzero(pixels.min(axis=-1) < 128)
    return pixels[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


@pytest.mark.parametrize("width", [4, 12], ids=["pen", "marker"])
def test_a_digit_cropped_tight_is_read_whole(width):
    """Its strokes touch every edge: the 7's bar along the top is no scanner frame."""
    page = scan(size=50, width=width)
    assert similarity(read(tight(page)), read(page)) > 0.9


@pytest.mark.parametrize("side", [12, 16, 28])
def test_a_small_crop_reads_like_the_digit_on_a_page(side):
    page = scan(size=120, width=12)
    crop = tight(page)
    small = Image.fromarray(crop).resize((round(side * crop.shape[1] / crop.shape[0]), side))
    assert similarity(read(np.asarray(small)), read(page)) > 0.85


def test_a_one_cut_tight_to_its_stroke_is_read_as_a_tall_stroke():
    image = Image.new("L", (5, 24), 245)
    ImageDraw.Draw(image).line([(3.5, 0), (1, 23)], fill=20, width=2)
    rows, cols = np.nonzero(read(np.asarray(image)) > 0.5)
    assert rows.max() - rows.min() + 1 >= DIGIT_BOX - 1 and cols.max() - cols.min() <= 4


def test_a_page_mostly_covered_in_ink_still_has_its_digit():
    """Half the pixels ink: neither the paper's level nor its noise may be taken from them."""
    page = scan(shape=zero, page=(110, 80), at=(8, 5), size=100, width=22)
    prepared = preprocess.prepare(page)
    assert prepared.image is not None, prepared.blank_reason
    assert (page.min(axis=-1) < 128).mean() > 0.4


def test_a_frame_deeper_than_the_search_goes_whole():
    """Around a digit near the page's edge, a closer look sees the scanner's frame deep."""
    mask = np.zeros((100, 100), bool)
    mask[:30] = True
    mask[40:80, 45:50] = True
    cleared = preprocess.clear_border(mask)
    assert not cleared[:30].any() and cleared[40:80, 45:50].all()


@pytest.mark.parametrize("width", [70, 20], ids=["wide", "along the edge"])
def test_a_shadow_is_not_ink(width):
    """A hand or phone over part of the page: a step in brightness, not a valley like a stroke,
    also where the shadow meets the page's edge (at most a sliver there reads as ink)."""
    rng = np.random.default_rng(0)
    plane = np.full((160, 200), 0.95, np.float32)
    plane[:, :width] = 0.55
    plane += rng.normal(0, 0.01, plane.shape).astype(np.float32)
    ink = preprocess.ink_strength(plane, preprocess.background(plane))
    assert np.count_nonzero(ink > 0.3) < 0.15 * plane[:, :width].size


def test_a_form_box_around_a_one_goes_with_its_short_sides():
    def tall_box(draw: ImageDraw.ImageDraw) -> None:
        draw.rectangle([180, 100, 215, 230], outline=BLACK, width=2)

    def one(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, width: int) -> None:
        draw.line([(x, y), (x - 4, y + size)], BLACK, width)

    page = scan(shape=one, page=(400, 400), at=(199, 112), size=105, width=5, clutter=tall_box)
    digit = read(page)
    rows, cols = np.nonzero(digit > 0.5)
    assert rows.max() - rows.min() >= DIGIT_BOX - 2 and cols.max() - cols.min() <= 8


def test_two_digits_side_by_side_are_two_marks_in_reading_order():
    def another(draw: ImageDraw.ImageDraw) -> None:
        zero(draw, 140, 50, 80, 8)

    prepared = preprocess.prepare(scan(page=(200, 260), clutter=another))
    assert prepared.slots == [((0,),), ((1,),)] and prepared.lines == [0, 0]
    seven_alone, zero_alone = read(scan()), read(scan(shape=zero, at=(140, 50)))
    assert similarity(prepared.images[0], seven_alone) > 0.9
    assert similarity(prepared.images[1], zero_alone) > 0.9


def test_a_digit_with_a_detached_piece_is_one_mark():
    def five(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, width: int) -> None:
        draw.line([(x + 6, y), (x + 0.6 * size, y)], BLACK, width)  # the bar, lifted off
        draw.line([(x, y + 8), (x, y + 0.45 * size)], BLACK, width)
        draw.arc([x - 4, y + 0.35 * size, x + 0.6 * size, y + size], 250, 160, BLACK, width)

    prepared = preprocess.prepare(scan(shape=five))
    assert prepared.slots == [((0,),)]


@pytest.mark.parametrize(
    "clutter",
    [None, specks, box, ruled],
    ids=["empty", "specks", "empty box", "ruled lines"],
)
def test_a_page_without_a_digit_is_blank(clutter):
    prepared = preprocess.prepare(scan(shape=None, clutter=clutter))
    assert prepared.image is None
    assert prepared.blank_reason


def test_noise_and_shading_alone_are_blank():
    rng = np.random.default_rng(0)
    shade = np.linspace(200, 120, 300)[None, :]
    page = np.clip(shade + rng.normal(0, 6, (240, 300)), 0, 255).astype(np.uint8)
    assert preprocess.prepare(page).image is None


def test_the_threshold_never_falls_below_the_contrast_floor():
    faint = np.random.default_rng(0).uniform(0, 0.05, (50, 50)).astype(np.float32)
    assert preprocess.threshold(faint) >= preprocess.CONTRAST_FLOOR
    strong = faint.copy()
    strong[20:30, 10:40] = 0.9
    assert preprocess.CONTRAST_FLOOR <= preprocess.threshold(strong) < 0.9


def test_components_are_eight_connected():
    mask = np.array(
        [
            [1, 0, 0, 0, 1],
            [0, 1, 0, 0, 1],
            [0, 0, 0, 0, 0],
            [1, 1, 0, 1, 0],
        ],
        bool,
    )
    labels, n = preprocess.label(mask)
    assert n == 4
    assert labels[0, 0] == labels[1, 1] != labels[0, 4]
    c = preprocess.components(labels, n)
    assert sorted(c.area.tolist()) == [1, 2, 2, 2]


def test_stray_pieces_of_the_digit_stay_with_it():
    mask = np.zeros((100, 100), bool)
    mask[20:80, 45:50] = True  # the body
    mask[14:17, 48:70] = True  # a detached bar, as a 5 often has
    mask[90:92, 5:7] = True  # dust far away
    labels, n = preprocess.label(mask)
    chosen = preprocess.select_digit(labels, n)
    assert {labels[50, 47], labels[15, 60]} == set(chosen.tolist())


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((1, 1)),
        np.full((30, 40), np.nan),
        np.full((30, 40), np.inf),
        np.array([[np.nan, -np.inf], [1e30, 0]]),
        np.ones((50, 50), np.float64),
        np.zeros((50, 50), np.uint8),
        np.random.default_rng(0).integers(0, 2, (64, 64)).astype(bool),
        np.random.default_rng(1).integers(0, 65535, (40, 60)).astype(np.int32),
        np.random.default_rng(2).random((3, 2000)),
        np.random.default_rng(3).random((2000, 3, 4)),
        np.random.default_rng(4).random((30, 30, 2)),
        np.random.default_rng(5).random((30, 30, 1)),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_any_pixel_array_ends_as_a_digit_or_blank(pixels):
    prepared = preprocess.prepare(pixels)
    if prepared.image is not None:
        assert prepared.image.shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert np.isfinite(prepared.image).all()
        assert prepared.image.min() >= 0 and prepared.image.max() <= 1
    else:
        assert prepared.blank_reason


@pytest.mark.parametrize("pixels", [np.zeros(10), np.zeros((4, 4, 4, 4)), np.zeros((0, 5))])
def test_arrays_that_are_not_images_are_a_clean_error(pixels):
    with pytest.raises(DecodeError):
        preprocess.prepare(pixels)


def test_debug_steps_show_the_way_to_the_digit():
    prepared = preprocess.prepare(scan(clutter=box), debug=True)
    assert list(prepared.steps) == ["page", "ink", "mask", "crop"]
    assert [digit for _, digit in prepared.marks].count(True) == 1
    strip = preprocess.strip(prepared.steps, "ok; 7 (0.990)", prepared.marks, [], height=80)
    assert strip.shape[0] > 80 and strip.shape[2] == 3 and strip.dtype == np.uint8


def digits_of(pixels: np.ndarray) -> int:
    """How many digits preprocessing finds (a mark offered cut in pieces counts once)."""
    return len(preprocess.prepare(pixels).slots)


def number(*extra) -> np.ndarray:
    """A page with 7 0 written side by side, and `extra(draw)` strokes around them."""

    def marks(draw: ImageDraw.ImageDraw) -> None:
        seven(draw, 40, 50, 80, 8)
        zero(draw, 120, 50, 80, 8)
        for stroke in extra:
            stroke(draw)

    return scan(shape=None, page=(200, 320), clutter=marks)


def test_separators_dashes_and_underlines_are_not_digits():
    def point(draw: ImageDraw.ImageDraw) -> None:
        draw.ellipse([104, 122, 114, 132], fill=BLACK)

    def dash(draw: ImageDraw.ImageDraw) -> None:
        draw.line([(190, 95), (230, 95)], BLACK, 8)

    def underline(draw: ImageDraw.ImageDraw) -> None:
        draw.line([(36, 145), (176, 147)], BLACK, 5)

    assert digits_of(number()) == 2
    for stroke in (point, dash, underline):
        prepared = preprocess.prepare(number(stroke), debug=True)
        assert len(prepared.slots) == 2, stroke.__name__
        assert similarity(prepared.images[1], read(scan(shape=zero, at=(120, 50)))) > 0.9


def test_a_dash_written_against_the_last_digit_is_also_offered_left_out():
    def dash(draw: ImageDraw.ImageDraw) -> None:
        draw.line([(98, 92), (150, 92)], BLACK, 8)  # "0-": the dash touches the 0

    prepared = preprocess.prepare(scan(shape=zero, page=(180, 200), clutter=dash))
    assert len(prepared.slots) == 1
    zero_alone = [pieces for pieces in prepared.slots[0][1:] if len(pieces) == 1]
    assert zero_alone, "the 0 is offered without its dash"
    plain_zero = read(scan(shape=zero, page=(180, 200)))
    assert max(similarity(prepared.images[p[0]], plain_zero) for p in zero_alone) > 0.9


@pytest.mark.parametrize(
    ("piece", "filler"),
    [
        ((45, 60, 55, 90), True),  # a dash at mid-height
        ((35, 60, 62, 90), True),  # an `=`: two dashes
        ((85, 60, 100, 90), False),  # a 2's foot, at the bottom
        ((0, 60, 12, 90), False),  # a 5's or 7's bar, at the top
        ((10, 60, 90, 90), False),  # a digit: tall
    ],
)
def test_only_a_flat_stroke_at_mid_height_is_a_filler_after_a_digit(piece, filler):
    assert preprocess.trailing_stroke(piece, (0, 0, 100, 90), 100) is filler


def test_an_underline_drawn_against_the_digits_is_not_part_of_them():
    def underline(draw: ImageDraw.ImageDraw) -> None:
        draw.line([(38, 131), (215, 134)], BLACK, 5)  # touches both digits, ends near the 7

    prepared = preprocess.prepare(number(underline))
    assert len(prepared.slots) == 2
    assert similarity(prepared.images[0], read(scan(shape=seven, at=(40, 50)))) > 0.9
    assert similarity(prepared.images[1], read(scan(shape=zero, at=(120, 50)))) > 0.9


def test_a_slash_and_dash_after_a_number_make_its_last_mark_a_possible_slash():
    def slash_dash(draw: ImageDraw.ImageDraw) -> None:
        draw.line([(208, 128), (232, 74)], BLACK, 7)  # "/" from the baseline...
        draw.line([(230, 100), (262, 100)], BLACK, 7)  # ...then "-" at mid-height, close

    def one(draw: ImageDraw.ImageDraw) -> None:
        draw.line([(215, 52), (215, 128)], BLACK, 7)

    def dash_at(x: int) -> Callable[[ImageDraw.ImageDraw], None]:
        return lambda draw: draw.line([(x, 92), (x + 32, 92)], BLACK, 7)

    prepared = preprocess.prepare(number(slash_dash))
    assert len(prepared.slots) == 3 and prepared.slashes == [2]
    assert preprocess.prepare(number(one, dash_at(224))).slashes == [2]  # a 1 or a slash?
    assert preprocess.prepare(number(one, dash_at(250))).slashes == []  # a 1, then a dash
    assert preprocess.prepare(number(dash_at(212))).slashes == []  # a 0 is no slash
    assert preprocess.prepare(number()).slashes == []


def test_two_lines_come_out_top_line_first():
    def lines(draw: ImageDraw.ImageDraw) -> None:
        zero(draw, 40, 30, 70, 7)  # top line: 0 7
        seven(draw, 110, 30, 70, 7)
        seven(draw, 40, 140, 70, 7)  # bottom line: 7 0 0, a little tilted
        zero(draw, 110, 146, 70, 7)
        zero(draw, 175, 152, 70, 7)

    prepared = preprocess.prepare(scan(shape=None, page=(260, 300), clutter=lines))
    assert prepared.lines == [0, 0, 1, 1, 1]
    zero_alone = read(scan(shape=zero, size=70, width=7))
    shapes = [similarity(prepared.images[a[0][0]], zero_alone) > 0.9 for a in prepared.slots]
    assert shapes == [True, False, False, True, True]


@pytest.mark.parametrize(("gap", "column"), [(60, True), (8, False)], ids=["a line apart", "close"])
def test_marks_one_above_the_other_are_one_digit_but_a_line_apart_may_be_a_column(gap, column):
    """A 6 whose loop came apart is two marks one above the other; so is a 7 written above a
    0. Read as one digit, as most such pages are one; a line apart, the page may be a column."""

    def stacked(draw: ImageDraw.ImageDraw) -> None:
        seven(draw, 60, 30, 70, 7)
        zero(draw, 60, 100 + gap, 70, 7)

    prepared = preprocess.prepare(scan(shape=None, page=(300 + gap, 200), clutter=stacked))
    assert len(prepared.slots) == 1 and prepared.column is column


def test_a_marks_width_is_measured_against_its_lines_digit_height_where_that_is_taller():
    assert preprocess.aspect((10, 0, 30, 30)) == 1.5  # y0, x0, y1, x1: as wide as 1.5 heights
    assert preprocess.aspect((10, 0, 30, 30), typical=30) == 1.0  # a flat mark in a line
    assert preprocess.aspect((10, 0, 30, 30), typical=10) == 1.5


def test_a_touching_pair_is_offered_cut_in_two():
    def pair(draw: ImageDraw.ImageDraw) -> None:
        zero(draw, 40, 50, 80, 8)
        zero(draw, 88, 50, 80, 8)  # overlaps the first 0's right side

    prepared = preprocess.prepare(scan(shape=None, page=(200, 240), clutter=pair))
    (slot,) = prepared.slots
    assert len(slot[0]) == 1 and any(len(pieces) == 2 for pieces in slot)
    zero_alone = read(scan(shape=zero))
    best = max(
        (pieces for pieces in slot if len(pieces) == 2),
        key=lambda p: min(similarity(prepared.images[i], zero_alone) for i in p),
    )
    assert all(similarity(prepared.images[i], zero_alone) > 0.8 for i in best)


def test_a_bar_reaching_over_the_next_digit_is_also_offered_whole_with_its_own_digit():
    ink = np.zeros((24, 30), bool)
    ink[3, 2:18] = True  # a 7's bar, reaching over ...
    ink[3:21, 3:5] = True
    ink[6:21, 19:21] = True  # ... a 1 that starts below it
    ways = preprocess.cut_into(ink, 2)
    straight_through_the_bar = [w for w in ways if w[1][3].sum() > 0]
    one = ink[6:, 19:].sum()
    around_the_bar = [w for w in ways if w[0][3].sum() == 16 and w[1][6:].sum() == one]
    assert straight_through_the_bar, "straight cuts through the bar are still offered"
    assert around_the_bar, "a cut that goes round the bar's end keeps it with its 7"
    for pieces in ways:
        assert (pieces[0] | pieces[1]).sum() == ink.sum() and not (pieces[0] & pieces[1]).any()


def test_in_a_number_a_flag_reaching_past_its_five_stays_with_it():
    def five(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, width: int) -> None:
        draw.line([(x + 0.3 * size, y), (x + 0.9 * size, y - 4)], BLACK, width)  # the flag
        draw.line([(x, y + 10), (x, y + 0.45 * size)], BLACK, width)
        draw.arc([x - 4, y + 0.35 * size, x + 0.6 * size, y + size], 250, 160, BLACK, width)

    def marks(draw: ImageDraw.ImageDraw) -> None:
        seven(draw, 40, 50, 80, 8)
        five(draw, 150, 50, 80, 8)

    prepared = preprocess.prepare(scan(shape=None, page=(200, 300), clutter=marks), debug=True)
    assert len(prepared.slots) == 2
    assert [is_digit for _, is_digit in prepared.marks] == [True, True]  # nothing dropped


def test_in_a_number_a_bold_filled_zero_is_a_digit_not_a_blot():
    def marks(draw: ImageDraw.ImageDraw) -> None:
        seven(draw, 40, 50, 80, 8)
        draw.ellipse([140, 50, 186, 130], outline=BLACK, width=21)  # a marker's 0, hole small

    assert digits_of(scan(shape=None, page=(200, 260), clutter=marks)) == 2


def test_in_a_number_a_short_five_in_two_pieces_is_one_digit_and_an_equals_sign_none():
    def marks(draw: ImageDraw.ImageDraw) -> None:
        seven(draw, 40, 50, 80, 8)
        draw.line([(150, 60), (200, 60)], BLACK, 8)  # a 5's flag, lifted well off its body
        draw.arc([140, 82, 190, 132], 200, 150, BLACK, 8)  # the 5's body, half a digit high
        draw.line([(220, 85), (260, 85)], BLACK, 6)  # "=" after the amount
        draw.line([(220, 100), (260, 100)], BLACK, 6)

    prepared = preprocess.prepare(scan(shape=None, page=(200, 300), clutter=marks), debug=True)
    assert len(prepared.slots) == 2
    assert [is_digit for _, is_digit in prepared.marks] == [True, True, False, False]


def test_in_a_number_a_three_a_skipping_pen_broke_into_dashes_is_one_digit():
    def marks(draw: ImageDraw.ImageDraw) -> None:
        seven(draw, 40, 50, 80, 8)
        for top in (52, 84, 116):  # three short strokes, stacked, each far under a digit's height
            draw.arc([140, top - 8, 190, top + 16], 290, 60, BLACK, 8)
        zero(draw, 220, 50, 80, 8)

    prepared = preprocess.prepare(scan(shape=None, page=(200, 320), clutter=marks), debug=True)
    assert len(prepared.slots) == 3
    assert [is_digit for _, is_digit in prepared.marks] == [True, True, True]  # nothing dropped


@pytest.mark.parametrize("label", ["Amount:", "Total", "Score:"])
def test_a_printed_label_beside_a_number_is_not_read_as_digits(label):
    def marks(draw: ImageDraw.ImageDraw) -> None:
        # Capitals a little over half as tall as the handwritten digits, as on a form.
        draw.text((10, 84), label, fill=BLACK, font=ImageFont.load_default(size=64))
        seven(draw, 270, 50, 80, 8)
        zero(draw, 340, 50, 80, 8)

    prepared = preprocess.prepare(scan(shape=None, page=(200, 460), clutter=marks))
    assert len(prepared.slots) == 2
    assert similarity(prepared.images[prepared.slots[1][0][0]], read(scan(shape=zero))) > 0.9


def test_commas_close_between_digits_do_not_make_the_number_a_printed_word():
    def marks(draw: ImageDraw.ImageDraw) -> None:
        seven(draw, 40, 50, 80, 8)
        draw.line([(100, 106), (94, 136)], BLACK, 8)  # a comma, tall and close
        zero(draw, 108, 50, 80, 8)
        draw.line([(168, 106), (162, 136)], BLACK, 8)
        seven(draw, 176, 50, 80, 8)
        zero(draw, 290, 50, 80, 8)  # and a digit further off

    assert digits_of(scan(shape=None, page=(200, 400), clutter=marks)) == 4


def test_a_printed_line_above_a_number_is_not_read_as_digits():
    def marks(draw: ImageDraw.ImageDraw) -> None:
        draw.text((20, 0), "Invoice No.", fill=BLACK, font=ImageFont.load_default(size=64))
        seven(draw, 40, 100, 80, 8)
        zero(draw, 120, 100, 80, 8)

    prepared = preprocess.prepare(scan(shape=None, page=(220, 340), clutter=marks))
    assert len(prepared.slots) == 2 and prepared.lines == [0, 0]


# --- sparing the closer look --------------------------------------------------------------

DATA = Path(__file__).parent / "data"


def reading_of(page: Image.Image, classifier: Classifier, spare: bool) -> str:
    """The string read from a page (or its blank reason), with or without sparing looks."""
    prepared = preprocess.prepare(page, spare=spare)
    if not prepared.slots:
        return f"blank: {prepared.blank_reason}"
    probs = classifier.predict(prepared.images)
    found = reading.read(probs, prepared.slots, prepared.lines, prepared.shapes)
    return reading.text(found.digits, found.lines)


def sample_pages() -> Iterator[tuple[str, Image.Image]]:
    """The committed samples, and clean scans made as bench/scans.py and number_scans.py make
    them: small pages (form-field crops, where most closer looks are spared), larger ones,
    and touching pairs."""
    for path in sorted(
        p for d in ("scans", "numbers", "number-samples") for p in (DATA / d).iterdir()
    ):
        if path.suffix.lower() in EXTENSIONS:
            yield path.name, decode.decode(path).image
    images, _ = mnist_test_digits()
    rng = np.random.default_rng(14)
    for i in range(120):
        page, _ = scans.render(images[i], rng, "clean", max_side=150 if i % 3 else 600)
        yield f"clean {i}", page
    for i in range(30):  # one piece, wide: a touching pair the closer look offers cut
        pair = number_scans.make_spec([f"{i % 10}{i * 7 % 10}"], spacing="overlap")
        page, _ = number_scans.render(pair, images[200 + 2 * i : 202 + 2 * i], rng, "clean", 450)
        yield f"touching {i}", page
    # Overlapping hairline digits in shadow, one piece nearly too wide for one digit: spared at
    # first, it read as one digit where the closer look offers the pair cut.
    recipe = number_scans.Recipe(seed=2024, preset="varied", kinds=("touching",))
    pair = [images[5341], images[9176]]
    made = number_scans.make_scan(recipe.spec(56), pair, recipe.rng(56, "page"), "varied")
    yield "touching, varied 56", decode.decode_bytes(made.data).image


def test_sparing_a_closer_look_changes_no_reading(monkeypatch):
    classifier = Classifier(threads=1)
    spared: list[bool] = []
    spy = spying(preprocess.reads_as_closer, spared)
    monkeypatch.setattr(preprocess, "reads_as_closer", spy)
    for name, page in sample_pages():
        assert reading_of(page, classifier, True) == reading_of(page, classifier, False), name
    assert spared.count(True) >= 40 and spared.count(False) >= 5  # both ways were taken


def test_a_tiny_digit_keeps_its_shape_above_a_three_pixel_underline_it_touches():
    def underline(draw: ImageDraw.ImageDraw) -> None:
        draw.rectangle([188, 219, 215, 221], fill=BLACK)  # 3 px, past the 7 on both sides

    tiny = {"page": (400, 400), "at": (195, 200), "size": 18, "width": 2}
    plain = read(scan(**tiny))
    assert similarity(read(scan(**tiny, clutter=underline)), plain) > 0.9


def pieces_of(draw_on: Callable[[ImageDraw.ImageDraw], None]) -> tuple[np.ndarray, list[bool]]:
    image = Image.new("1", (80, 100), 0)
    draw_on(ImageDraw.Draw(image))
    labels, n = preprocess.label(np.asarray(image))
    c = preprocess.components(labels, n)
    order = np.argsort(c.area)[::-1]  # largest first
    return c.area[order], preprocess.box_frames(labels, c)[order].tolist()


def test_a_box_drawn_around_a_digit_is_a_frame_and_a_zero_around_a_dot_is_not():
    def boxed_one(draw: ImageDraw.ImageDraw) -> None:
        draw.rectangle([5, 5, 74, 94], outline=1, width=2)
        draw.line([(40, 20), (38, 80)], fill=1, width=3)

    def zero_and_dot(draw: ImageDraw.ImageDraw) -> None:
        draw.ellipse([5, 5, 74, 94], outline=1, width=6)
        draw.ellipse([38, 48, 42, 52], fill=1)

    assert pieces_of(boxed_one)[1] == [True, False]  # the box outweighs the 1, and goes
    assert pieces_of(zero_and_dot)[1] == [False, False]


def test_a_small_digit_in_a_form_box_it_touches_gets_the_closer_look_that_removes_the_box(
    monkeypatch,
):
    def box(draw: ImageDraw.ImageDraw) -> None:
        # Too short for a line of the page, so one piece with the 7 whose bar touches it.
        draw.rectangle([56, 52, 86, 94], outline=BLACK, width=2)

    spared: list[bool] = []
    monkeypatch.setattr(preprocess, "reads_as_closer", spying(preprocess.reads_as_closer, spared))
    boxed = read(scan(page=(150, 150), at=(60, 55), size=36, width=4, clutter=box))
    assert spared == [False]
    assert similarity(boxed, read(scan(page=(150, 150), at=(60, 55), size=36, width=4))) > 0.9


def spying(function: Callable[..., bool], answers: list[bool]) -> Callable[..., bool]:
    def spy(*args: object) -> bool:
        answers.append(function(*args))
        return answers[-1]

    return spy


def pale(draw: ImageDraw.ImageDraw, x: float, y: float, size: float, width: int) -> None:
    """A 7 in a broad soft pencil, far paler than a ballpoint."""
    draw.line([(x, y), (x + 0.6 * size, y), (x + 0.2 * size, y + size)], (175, 175, 172), width)


def test_a_large_pale_stroke_keeps_its_shape_beside_a_dark_blot():
    def blot(draw: ImageDraw.ImageDraw) -> None:  # dust, darker than the pencil by far
        draw.ellipse([330, 170, 356, 190], fill=BLACK)

    page = dict(shape=pale, page=(400, 400), at=(80, 60), size=280, width=40)
    assert similarity(read(scan(**page, clutter=blot)), read(scan(**page))) > 0.9


def test_dots_that_blur_into_a_small_mark_from_afar_are_no_digit_close_up():
    image = Image.new("L", (1200, 1200), 245)
    draw = ImageDraw.Draw(image)
    for y in range(600, 640, 9):
        for x in range(600, 630, 9):
            draw.ellipse([x, y, x + 3, y + 3], fill=20)
    prepared = preprocess.prepare(np.asarray(image))
    assert prepared.image is None
    assert prepared.blank_reason.startswith("no digit on a closer look")


def test_a_faint_smudge_does_not_take_the_place_of_a_small_bold_mark():
    def page(smudge: bool) -> np.ndarray:
        image = Image.new("L", (600, 600), 245)
        if smudge:  # a broad soft stain across the page, far fainter than any pencil
            ImageDraw.Draw(image).line([(150, 150), (450, 450)], fill=205, width=60)
            image = image.filter(ImageFilter.GaussianBlur(8))
        ImageDraw.Draw(image).ellipse([400, 120, 420, 145], fill=20)
        return np.asarray(image)

    assert similarity(read(page(smudge=True)), read(page(smudge=False))) > 0.9


# --- a photo of a sheet -------------------------------------------------------------------


def photo_of(page: np.ndarray, table: str, seed: int = 0) -> np.ndarray:
    """`page` on an A4 sheet, photographed on `table` (see scans.photograph)."""
    sheet = Image.new("RGB", (840, 1188), WHITE)
    sheet.paste(Image.fromarray(page), (120, 160))
    photo, _, _ = scans.photograph(sheet, np.random.default_rng(seed), table)
    return np.asarray(photo)


@pytest.mark.parametrize("table", ["dark wood", "black", "grey desk"])
def test_a_photo_of_a_sheet_on_a_table_reads_like_the_sheet(table):
    """The table is no paper: read as one, dark enough it turned the sheet into ink, and the
    sheet's edges into strokes."""
    page = number()
    photo = Image.fromarray(photo_of(page, table))
    overview = preprocess.page_pixels(photo, preprocess.overview_size(photo.height, photo.width))
    assert preprocess.find_sheet(overview) is not None
    classifier = Classifier(threads=1)
    assert reading_of(photo, classifier, True) == reading_of(
        Image.fromarray(page), classifier, True
    )
    assert len(preprocess.prepare(photo).slots) == 2


def test_the_table_is_painted_as_the_sheets_paper_and_the_writing_kept():
    photo = Image.fromarray(photo_of(number(), "black"))
    page = preprocess.page_pixels(photo, preprocess.overview_size(photo.height, photo.width))
    sheet = preprocess.find_sheet(page)
    assert sheet is not None and sheet.table.any() and not sheet.table.all()
    cut = np.asarray(preprocess.on_sheet(photo, sheet, page.shape[0] / photo.height)).min(axis=-1)
    assert cut.shape[0] < photo.height and cut.shape[1] < photo.width
    dark = cut < 0.5 * np.median(cut)
    assert 0 < dark.mean() < 0.01  # the 7 and the 0, nothing of the table


def shadowed(page: np.ndarray) -> np.ndarray:
    """A hand's shadow over the left half, soft edged: darker paper, not a table."""
    ramp = np.clip((np.arange(page.shape[1]) - 0.4 * page.shape[1]) / (0.15 * page.shape[1]), 0, 1)
    return (page * (0.45 + 0.55 * ramp)[None, :, None]).astype(np.uint8)


def bold_seven_to_the_edge(page: np.ndarray) -> np.ndarray:
    return scan(page=(160, 200), at=(-20, -10), size=200, width=40)


@pytest.mark.parametrize(
    "make",
    [
        lambda: scan(page=(400, 500)),
        lambda: shadowed(scan(page=(400, 500))),
        lambda: 255 - number(),
        lambda: bold_seven_to_the_edge(number()),
        lambda: np.asarray(Image.fromarray(number()).filter(ImageFilter.GaussianBlur(3))),
    ],
    ids=["a plain page", "a shadow", "light ink on dark paper", "a bold digit", "a blurred page"],
)
def test_no_sheet_is_cut_out_of_a_page_that_is_no_photo_of_one(make):
    pixels = make()
    page = preprocess.page_pixels(Image.fromarray(pixels), (pixels.shape[0], pixels.shape[1]))
    assert preprocess.find_sheet(page) is None
