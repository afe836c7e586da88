"""The handwritten-number set: reproducible, truthfully labelled, drawn as its tags say."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from bench import bench_numbers, number_scans
from digit_inbox.export import mnist

SAMPLES = Path(__file__).parent / "data" / "numbers"


@pytest.fixture(scope="module")
def test_split() -> mnist.Split:
    return mnist.load_split(Path(os.environ[mnist.ENV_DATA_DIR]), "test")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def page_of(spec: number_scans.Spec, split: mnist.Split, seed: int = 0) -> np.ndarray:
    """A clean page of `spec` as ink coverage (bright = ink), drawn from MNIST test digits."""
    rng = np.random.default_rng(seed)
    by_digit = [np.flatnonzero(split.labels == d) for d in range(10)]
    indices = number_scans.pick_indices(spec.digits, by_digit, rng)
    page, _ = number_scans.render(spec, list(split.images[indices]), rng, "clean")
    return 255 - np.asarray(page.convert("L"))


def runs(profile: npt.ArrayLike, min_length: int) -> list[tuple[int, int]]:
    """(start, end) of the runs of True in `profile` at least `min_length` long."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(profile, dtype=int), [0]])))
    return [(a, b) for a, b in zip(edges[::2], edges[1::2], strict=True) if b - a >= min_length]


# ---------------------------------------------------------------------------------------------
# Sets and labels


def test_a_seed_writes_the_same_files_however_many_workers_write_them(tmp_path: Path) -> None:
    one = number_scans.write_set(tmp_path / "one", 10, seed=5, max_side=300, workers=1)
    two = number_scans.write_set(tmp_path / "two", 10, seed=5, max_side=300, workers=2)

    assert one == two
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")


def test_another_seed_writes_other_numbers(tmp_path: Path) -> None:
    five = number_scans.write_set(tmp_path / "five", 10, seed=5, max_side=300)
    six = number_scans.write_set(tmp_path / "six", 10, seed=6, max_side=300)

    assert [x.digits for x in five] != [x.digits for x in six]


def test_labels_are_the_mnist_digits_drawn_without_their_separators(
    tmp_path: Path, test_split: mnist.Split
) -> None:
    labels = number_scans.write_set(tmp_path, 40, seed=3, preset="clean", kinds=["mixed", "amount"])

    for x in labels:
        drawn = "".join(str(test_split.labels[k]) for k in x.mnist_indices)
        assert x.digits.replace(" ", "") == drawn
        assert x.digits == number_scans.expected_digits(x.written)
        assert set(x.digits) <= set("0123456789 ")
        assert len(x.digits.split()) == len(x.written.split())
    assert any(set(x.written) & set(".,-=/") for x in labels)
    assert set(labels) == set(number_scans.read_labels(tmp_path / "labels.csv"))


def test_every_kind_writes_what_its_tags_say(tmp_path: Path) -> None:
    kinds = list(number_scans.KINDS)
    labels = number_scans.write_set(tmp_path, 2 * len(kinds), seed=4, max_side=300, kinds=kinds)

    by_kind = {kind: [x for i, x in enumerate(labels) if i % len(kinds) == k]
               for k, kind in enumerate(kinds)}  # fmt: skip
    assert all(x.digits.isdigit() and len(x.digits) == 4 for x in by_kind["four"])
    assert all("spacing:normal" in x.tags and x.written == x.digits for x in by_kind["four"])
    assert all(len(x.digits) == 2 for x in by_kind["touching"])
    assert all({"spacing:touching", "spacing:overlap"} & set(x.tags) for x in by_kind["touching"])
    assert all(any(t.startswith("sep:") for t in x.tags) for x in by_kind["amount"])
    assert all(len(x.digits.split()) in (2, 3) for x in by_kind["lines"])
    assert all("printed" in x.tags for x in by_kind["label"])
    assert all("underline" in x.tags for x in by_kind["underline"])


def test_a_mixed_set_covers_every_length_spacing_and_separator(tmp_path: Path) -> None:
    labels = number_scans.write_set(tmp_path, 150, seed=2, preset="clean")
    tags = {t for x in labels for t in x.tags}

    assert {f"length:{n}" for n in range(1, 11)} <= tags
    assert {f"spacing:{s}" for s in number_scans.SPACINGS} <= tags
    assert {f"sep:{s}" for s in number_scans.SEPARATORS} <= tags
    assert {
        "lines:2",
        "lines:3",
        "underline",
        "sizes:mixed",
        "printed:left",
        "printed:above",
    } <= tags


def test_a_given_text_is_written_as_given_and_a_foreign_character_is_refused(
    tmp_path: Path,
) -> None:
    labels = number_scans.write_set(
        tmp_path, 3, seed=1, preset="clean", kinds=["amount"], texts=["19.272", "250/-", "7 12"]
    )

    assert [(x.written, x.digits) for x in labels] == [
        ("19.272", "19272"), ("250/-", "250"), ("7 12", "7 12")]  # fmt: skip
    assert "sep:slashdash" in labels[1].tags and "lines:2" in labels[2].tags
    with pytest.raises(ValueError, match="cannot write 'x'"):
        number_scans.write_set(tmp_path / "bad", 1, seed=1, texts=["12x"])


# ---------------------------------------------------------------------------------------------
# What is drawn


def blob() -> np.ndarray:
    """A solid oval as a 28x28 MNIST-like digit: one piece, so touching is easy to see."""
    yy, xx = np.mgrid[0:28, 0:28]
    return np.where(((xx - 14) / 6) ** 2 + ((yy - 14) / 10) ** 2 <= 1, 255, 0).astype(np.uint8)


def line_of(spec: number_scans.Spec, seed: int) -> np.ndarray:
    """`spec`'s first line written with blobs, as ink (True) columns."""
    digits = [blob()] * len(spec.digits)
    line, _ = number_scans.write_line(
        spec.lines[0], digits, 50.0, spec, "black", np.random.default_rng(seed)
    )
    return np.asarray((line > 0.5).any(axis=0))


def test_neighbours_stand_apart_at_normal_and_tight_spacing_and_touch_when_touching() -> None:
    for seed in range(10):
        normal = line_of(number_scans.make_spec(["2024"]), seed)
        tight = line_of(number_scans.make_spec(["2024"], spacing="tight"), seed)
        pair = line_of(number_scans.make_spec(["23"], spacing="touching"), seed)
        overlap = line_of(number_scans.make_spec(["23"], spacing="overlap"), seed)
        alone = line_of(number_scans.make_spec(["0"]), seed)

        assert len(runs(normal, 1)) == 4 and len(runs(tight, 1)) == 4
        assert len(runs(pair, 1)) == 1 and len(runs(overlap, 1)) == 1
        assert 0.85 * 2 * alone.sum() <= pair.sum() <= 1.1 * 2 * alone.sum()  # they meet
        assert overlap.sum() < pair.sum()  # the same two digits, crossing a little


def test_digits_at_normal_spacing_stand_apart_on_a_page(test_split: mnist.Split) -> None:
    for seed in range(5):
        four = page_of(number_scans.make_spec(["2024"]), test_split, seed)

        assert len(runs((four > 128).any(axis=0), 3)) >= 4


def test_lines_are_written_one_under_the_other(test_split: mnist.Split) -> None:
    for seed in range(5):
        page = page_of(number_scans.make_spec(["705", "13", "2"]), test_split, seed)

        assert len(runs((page > 128).any(axis=1), 3)) == 3


def test_separators_are_drawn_as_a_pen_draws_them() -> None:
    h, stroke = 60.0, 6.0
    rng = np.random.default_rng(0)

    def ink_rows(sep: str) -> tuple[float, float, int]:
        """Top and bottom of the mark's ink, in digit heights above the baseline; its width."""
        mark, baseline = number_scans.pen_mark(sep, h, stroke, rng)
        rows = np.flatnonzero((mark > 0.5).any(axis=1))
        cols = np.flatnonzero((mark > 0.5).any(axis=0))
        return (baseline - rows[0]) / h, (baseline - rows[-1]) / h, int(cols[-1] - cols[0] + 1)

    dot_top, dot_bottom, dot_width = ink_rows("dot")
    assert dot_top < 0.25 and dot_bottom > -0.1 and dot_width < 0.25 * h  # small, on the line
    comma_top, comma_bottom, _ = ink_rows("comma")
    assert comma_top < 0.25 and comma_bottom < -0.05  # its tail reaches below the line
    dash_top, dash_bottom, dash_width = ink_rows("dash")
    assert 0.25 < dash_bottom < dash_top < 0.75 and dash_width < 0.6 * h  # short, mid-height
    slash_top, slash_bottom, _ = ink_rows("slashdash")
    assert slash_top > 0.6 and slash_bottom < 0.05  # from the line up, past mid-height
    equals_top, equals_bottom, _ = ink_rows("equals")
    assert equals_bottom > 0.1 and equals_top < 0.8


def test_a_printed_label_is_drawn_beside_or_above_the_number(test_split: mnist.Split) -> None:
    plain = page_of(number_scans.make_spec(["42"]), test_split, 1)
    left = page_of(number_scans.make_spec(["42"], printed="left"), test_split, 1)
    above = page_of(number_scans.make_spec(["42"], printed="above"), test_split, 1)

    assert left.shape[1] > plain.shape[1] and len(runs((left > 128).any(axis=0), 1)) > 2
    assert above.shape[0] > plain.shape[0] and len(runs((above > 128).any(axis=1), 1)) == 2


def test_an_underline_runs_under_the_whole_number(test_split: mnist.Split) -> None:
    page = page_of(number_scans.make_spec(["350"], underline=True), test_split, 2)
    ink = page > 128
    bands = runs(ink.any(axis=1), 1)
    line = ink[bands[-1][0] : bands[-1][1]]
    digits = ink[bands[0][0] : bands[0][1]]

    assert len(bands) == 2
    cols, digit_cols = np.flatnonzero(line.any(axis=0)), np.flatnonzero(digits.any(axis=0))
    assert cols[0] <= digit_cols[0] + 2 and cols[-1] >= digit_cols[-1] - 2


def test_pages_fit_the_largest_side_asked_for(tmp_path: Path) -> None:
    labels = number_scans.write_set(tmp_path, 8, seed=7, max_side=250, kinds=["mixed"])

    for x in labels:
        with Image.open(tmp_path / x.file) as image:
            assert max(image.size) <= 250 * 1.1 + 2  # an RGBA margin may be added around


# ---------------------------------------------------------------------------------------------
# The committed samples


def test_the_committed_samples_are_labelled_numbers_pillow_reads(test_split: mnist.Split) -> None:
    labels = number_scans.read_labels(SAMPLES / "labels.csv")
    images = {p.name for p in SAMPLES.iterdir() if p.suffix not in (".csv", ".md")}

    assert {x.file for x in labels} == images and 8 <= len(labels) <= 12
    for x in labels:
        assert x.digits.replace(" ", "") == "".join(
            str(test_split.labels[k]) for k in x.mnist_indices
        )
        with Image.open(SAMPLES / x.file) as image:
            image.load()
        assert (SAMPLES / x.file).stat().st_size < 20_000
    written = {x.written for x in labels}
    assert {"42", "19.272", "705 13"} <= written
    tags = {t for x in labels for t in x.tags}
    assert {"printed", "underline", "spacing:touching", "lines:2", "sep:dot"} <= tags


# ---------------------------------------------------------------------------------------------
# The benchmark's scoring


def csv_of(header: str, rows: list[str]) -> str:
    return "\n".join([header, *rows]) + "\n"


def test_readings_come_from_the_digits_column_or_the_older_digit_column() -> None:
    new = csv_of("time,file,digits,status", ["t,a.png,12 34,ok", "t,b.png,,blank"])
    old = csv_of("time,file,digit,status", ["t,a.png,1,low_confidence", "t,b.png,7,error"])

    column, readings = bench_numbers.readings_from_csv(new)
    assert column == "digits" and readings["a.png"] == bench_numbers.Reading("12 34", "ok")
    assert readings["b.png"].text == ""
    column, readings = bench_numbers.readings_from_csv(old)
    assert column == "digit" and readings["a.png"].text == "1" and readings["b.png"].text == ""


def test_string_and_digit_accuracy_review_share_and_wrong_strings_filed_ok() -> None:
    labels = [
        number_scans.Label("a.png", "1234", "1.234", (0, 1, 2, 3), ("length:4",)),
        number_scans.Label("b.png", "1234", "1234", (0, 1, 2, 3), ("length:4",)),
        number_scans.Label("c.png", "12 3", "12 3", (0, 1, 2), ("lines:2",)),
        number_scans.Label("d.png", "56", "56", (0, 1), ("length:2",)),
        number_scans.Label("e.png", "7", "7", (0,), ("length:1",)),
    ]
    R = bench_numbers.Reading
    readings = {
        "a.png": R("1234", "ok"),  # right
        "b.png": R("1284", "ok"),  # one digit wrong, filed: the worst outcome
        "c.png": R("123", "low_confidence"),  # the digits right, the line break lost
        "d.png": R("5", "low_confidence"),  # a digit short
    }  # e.png: no row at all

    groups = bench_numbers.tally(labels, readings)
    everything = groups["all"].figures()

    assert everything["n"] == 5 and everything["string_accuracy"] == pytest.approx(1 / 5)
    assert everything["digit_accuracy"] == pytest.approx((4 + 3 + 3) / (4 + 4 + 3 + 2 + 1))
    assert everything["length_right"] == pytest.approx(3 / 5)
    assert everything["fewer_digits"] == pytest.approx(2 / 5)  # d.png, and e.png read nothing
    assert everything["more_digits"] == 0
    assert everything["review"] == pytest.approx(2 / 5)
    assert everything["wrong_ok"] == 1
    assert groups["length:4"].figures()["string_accuracy"] == pytest.approx(1 / 2)


def test_tesseract_output_is_compared_without_its_spaces() -> None:
    labels = [number_scans.Label("a.png", "12 34", "12 34", (0, 1, 2, 3), ())]

    assert bench_numbers.joined_accuracy(labels, {"a.png": "1234"}) == 1.0
    assert bench_numbers.joined_accuracy(labels, {"a.png": "123"}) == 0.0
    assert bench_numbers.normalise(" 12\n34 x\n") == "12 34"


def test_a_page_encodes_in_every_format_it_claims(tmp_path: Path) -> None:
    labels = number_scans.write_set(tmp_path, 14, seed=9, max_side=250, every_encoding=True)

    for x in labels:
        data = (tmp_path / x.file).read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    assert len({t for x in labels for t in x.tags if t.startswith("mode:")}) >= 5
