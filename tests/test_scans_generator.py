"""The scan-like evaluation set: reproducible, truthfully labelled, every format it claims."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from bench import bench_scans, scans
from digit_inbox.daemon.rows import Row, Status, format_rows, header_line
from digit_inbox.export import mnist

SAMPLES = Path(__file__).parent / "data" / "scans"


@pytest.fixture(scope="module")
def test_split() -> mnist.Split:
    return mnist.load_split(Path(os.environ[mnist.ENV_DATA_DIR]), "test")


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def ink_shape(ink: np.ndarray, size: int = 20) -> np.ndarray:
    """The inked bounding box of `ink` (bright = ink) squashed to size x size, zero mean."""
    ys, xs = np.nonzero(ink > ink.max() / 2)
    crop = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32)
    small = np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR))
    return (small - small.mean()).ravel()


def test_a_seed_writes_the_same_files_however_many_workers_write_them(tmp_path: Path) -> None:
    one = scans.write_set(tmp_path / "one", 12, seed=5, max_side=300, workers=1)
    two = scans.write_set(tmp_path / "two", 12, seed=5, max_side=300, workers=2)

    assert one == two
    assert files_of(tmp_path / "one") == files_of(tmp_path / "two")


def test_another_seed_draws_other_digits_and_variations(tmp_path: Path) -> None:
    five = scans.write_set(tmp_path / "five", 12, seed=5, max_side=300)
    six = scans.write_set(tmp_path / "six", 12, seed=6, max_side=300)

    assert [x.mnist_index for x in five] != [x.mnist_index for x in six]
    assert [x.tags for x in five] != [x.tags for x in six]


def test_labels_name_the_mnist_test_digit_each_scan_was_made_from(
    tmp_path: Path, test_split: mnist.Split
) -> None:
    varied = scans.write_set(tmp_path / "varied", 30, seed=3, max_side=300)
    clean = scans.write_set(tmp_path / "clean", 30, seed=3, preset="clean")

    assert all(x.label == test_split.labels[x.mnist_index] for x in varied)
    assert len({x.mnist_index for x in varied}) == 30
    assert [x.mnist_index for x in clean] == [x.mnist_index for x in varied]
    assert scans.read_labels(tmp_path / "varied" / "labels.csv") == varied


def test_every_format_and_colour_mode_opens_back_with_pillow(tmp_path: Path) -> None:
    labels = scans.write_set(
        tmp_path, len(scans.ALL_ENCODINGS), seed=2, max_side=200, every_encoding=True
    )

    claimed = {(fmt, mode) for fmt, modes in scans.MODES.items() for mode in modes}
    written = set()
    for label in labels:
        tags = dict(tag.split(":", 1) for tag in label.tags)
        with Image.open(tmp_path / label.file) as image:
            image.load()
            assert image.format == tags["format"].upper()
            if tags["mode"] == "1" and image.mode != "1":  # GIF keeps 1-bit as a 2-colour palette
                assert len(np.unique(np.asarray(image.convert("L")))) <= 2
            else:
                assert image.mode == tags["mode"]
        written.add((tags["format"], tags["mode"]))
    assert written == claimed


@pytest.mark.parametrize("orientation", [3, 6, 8, 2, 5])
def test_exif_rotated_jpegs_carry_the_orientation_and_show_upright(
    orientation: int, test_split: mnist.Split
) -> None:
    digit = test_split.images[0]
    upright = scans.make_scan(
        digit, np.random.default_rng(9), encoding=scans.Encoding("jpeg", "L", 1, 90)
    )
    rotated = scans.make_scan(
        digit, np.random.default_rng(9), encoding=scans.Encoding("jpeg", "L", orientation, 90)
    )

    assert f"exif:{orientation}" in rotated.tags
    with (
        Image.open(io.BytesIO(rotated.data)) as stored,
        Image.open(io.BytesIO(upright.data)) as plain,
    ):
        assert stored.getexif()[scans.ORIENTATION_TAG] == orientation
        assert scans.ORIENTATION_TAG not in plain.getexif()
        shown = np.asarray(ImageOps.exif_transpose(stored), dtype=np.float32)
        expected = np.asarray(plain, dtype=np.float32)
        raw = np.asarray(stored, dtype=np.float32)
    assert shown.shape == expected.shape
    assert np.abs(shown - expected).mean() < 3  # the same page, up to JPEG noise
    assert (
        raw.shape != expected.shape
        or np.abs(raw - expected).mean() > 3 * np.abs(shown - expected).mean()
    )


def test_a_clean_scan_keeps_the_shape_of_its_mnist_digit(test_split: mnist.Split) -> None:
    rng = np.random.default_rng(4)
    for index in rng.choice(len(test_split.labels), 8, replace=False):
        digit = test_split.images[index]
        scan = scans.make_scan(digit, rng, preset="clean")
        with Image.open(io.BytesIO(scan.data)) as image:
            ink = 255 - np.asarray(image.convert("L"), dtype=np.float32)
        a, b = ink_shape(ink), ink_shape(digit.astype(np.float32))
        assert np.corrcoef(a, b)[0, 1] > 0.8, f"MNIST test digit {index}"


def test_varied_pages_record_one_tag_per_kind_and_cover_every_variation(
    test_split: mnist.Split,
) -> None:
    rng = np.random.default_rng(11)
    seen: set[str] = set()
    for index in range(150):
        _, tags = scans.render(test_split.images[index], rng, "varied", max_side=200)
        kinds = [tag.split(":")[0] for tag in tags]
        for kind in ("size", "ink", "place", "paper", "light"):
            assert kinds.count(kind) == 1, tags
        seen.update(tags)

    expected = {f"ink:{ink}" for ink in scans.INKS} | {f"paper:{p}" for p in scans.PAPERS}
    expected |= {f"clutter:{c}" for c in scans.CLUTTER_P}
    expected |= {"light:gradient", "light:vignette", "light:shadow", "geom:rotate", "geom:blur"}
    expected |= {"polarity:inverted", "place:offset", "size:small", "size:medium"}
    assert expected <= seen


def test_clean_scans_are_black_on_white_greyscale_pngs(test_split: mnist.Split) -> None:
    rng = np.random.default_rng(12)
    for index in range(5):
        scan = scans.make_scan(test_split.images[index], rng, preset="clean")
        assert scan.suffix == ".png"
        assert {"ink:black", "paper:white", "light:even", "place:centred"} <= set(scan.tags)
        with Image.open(io.BytesIO(scan.data)) as image:
            grey = np.asarray(image)
        assert image.mode == "L"
        assert np.median(grey) > 240 and grey.min() < 64


def test_varied_files_stay_under_a_megabyte(tmp_path: Path) -> None:
    labels = scans.write_set(tmp_path, 40, seed=13, workers=2)

    sizes = [(tmp_path / x.file).stat().st_size for x in labels]
    assert max(sizes) < 1_000_000, max(sizes)


def test_the_committed_samples_are_labelled_scans_of_every_format(
    test_split: mnist.Split,
) -> None:
    labels = scans.read_labels(SAMPLES / "labels.csv")
    images = {p.name for p in SAMPLES.iterdir() if p.suffix not in (".csv", ".md")}

    assert {x.file for x in labels} == images
    assert all(x.label == test_split.labels[x.mnist_index] for x in labels)
    assert {tag for x in labels for tag in x.tags if tag.startswith("format:")} == {
        f"format:{f}" for f in scans.FORMATS
    }
    assert any(tag.startswith("exif:") for x in labels for tag in x.tags)
    for x in labels:
        with Image.open(SAMPLES / x.file) as image:
            image.load()


# ---------------------------------------------------------------------------------------------
# The benchmark's scoring


def fabricated_labels() -> list[scans.Label]:
    return [
        scans.Label("a.png", 1, 0, ("ink:blue",)),
        scans.Label("b.png", 2, 1, ("ink:blue",)),
        scans.Label("c.png", 3, 2, ("ink:red",)),
        scans.Label("d.png", 4, 3, ("ink:red",)),
        scans.Label("-e.png", 5, 4, ("ink:red",)),
        scans.Label("missing.png", 6, 5, ("ink:red",)),
    ]


def test_accuracy_from_a_classify_csv_counts_blank_error_and_missing_files_as_wrong() -> None:
    csv_text = header_line() + format_rows(
        [
            Row("in/a.png", Status.OK, digits="1", confidence=0.99),
            Row("in/b.png", Status.LOW_CONFIDENCE, digits="2", confidence=0.41),
            Row("in/c.png", Status.BLANK),
            Row("in/d.png", Status.ERROR, error="cannot identify image file"),
            Row("-e.png", Status.OK, digits="5", confidence=0.97),  # written as '-e.png
        ]
    )

    predicted = bench_scans.predictions_from_csv(csv_text)
    result = bench_scans.score(fabricated_labels(), predicted)

    assert predicted == {"a.png": "1", "b.png": "2", "c.png": "", "d.png": "", "-e.png": "5"}
    assert (result.n, result.correct) == (6, 3)
    assert result.accuracy == pytest.approx(0.5)
    assert bench_scans.statuses_from_csv(csv_text) == {
        "ok": 2,
        "low_confidence": 1,
        "blank": 1,
        "error": 1,
    }


def test_per_tag_accuracy_sits_next_to_the_reference_on_the_same_files() -> None:
    predicted = {"a.png": "1", "b.png": "7", "c.png": "3", "-e.png": "5"}
    reference = {"a.png": "1", "b.png": "2", "c.png": "3", "d.png": "4", "-e.png": "5"}

    by_tag = {t.tag: t for t in bench_scans.per_tag(fabricated_labels(), predicted, reference)}

    assert (by_tag["ink:blue"].n, by_tag["ink:blue"].pipeline) == (2, 0.5)
    assert by_tag["ink:blue"].reference == 1.0
    assert (by_tag["ink:red"].n, by_tag["ink:red"].pipeline) == (4, 0.5)
    assert by_tag["ink:red"].reference == 0.75
    assert by_tag["ink:red"].gap_points == pytest.approx(25.0)


def test_binarising_keeps_light_pencil_and_ignores_a_dark_scanner_border() -> None:
    grey = np.full((100, 120), 220, dtype=np.uint8)  # recycled paper
    grey[:, :8] = 10  # the scanner lid along one side
    grey[40:60, 50:54] = 150  # a light pencil stroke
    page = Image.fromarray(grey).convert("RGB")
    page.info["digit_box"] = (45, 35, 60, 65)

    binary = np.asarray(scans.binarise(page, inverted=False))

    assert not binary[40:60, 50:54].any()  # the stroke is black
    assert binary[:, 10:50].all() and binary[:, 54:].all()  # the paper is white
    assert not binary[:, :8].any()
