"""The evaluation report counts the right things and draws readable pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.scans import write_set
from digit_inbox.daemon.classifier import Classifier
from digit_inbox.daemon.errors import DataError
from digit_inbox.export import calibration, evaluate, mnist
from tests.helpers import mnist_test_digits


def one_hot(predictions: list[int], confidence: float = 0.9) -> np.ndarray:
    probs = np.full((len(predictions), 10), (1 - confidence) / 9, np.float32)
    probs[np.arange(len(predictions)), predictions] = confidence
    return probs


def test_the_confusion_matrix_has_true_rows_and_predicted_columns() -> None:
    labels = np.array([3, 3, 3, 5, 0], np.uint8)
    predictions = np.array([3, 3, 5, 5, 0])
    matrix = evaluate.confusion_matrix(labels, predictions)
    assert matrix.shape == (10, 10)
    assert matrix[3, 3] == 2 and matrix[3, 5] == 1 and matrix[5, 5] == 1 and matrix[0, 0] == 1
    assert matrix.sum() == 5
    np.testing.assert_allclose(evaluate.per_digit_accuracy(matrix)[[0, 3, 5, 7]], [1, 2 / 3, 1, 0])


def test_the_text_matrix_labels_its_axes_and_aligns_rows() -> None:
    matrix = np.diag(np.full(10, 1000))
    matrix[9, 4] = 7
    lines = evaluate.format_confusion(matrix).splitlines()
    assert lines[0].startswith("true\\pred")
    assert len(lines) == 11 and len({len(line) for line in lines}) == 1
    assert lines[10].split() == ["9", "0", "0", "0", "0", "7", "0", "0", "0", "0", "1000"]


def test_the_report_names_the_model_and_its_accuracy(tmp_path: Path) -> None:
    labels = np.array([1, 2, 3, 4], np.uint8)
    result = evaluate.Evaluation(labels, one_hot([1, 2, 3, 9]), seconds=0.5)
    classifier = Classifier()
    report = evaluate.format_report(classifier, result)
    assert classifier.model_id in report
    assert "75.00% (3/4 MNIST test images, 1 errors" in report
    assert "8 images/s" in report
    assert "4: 0.00%" in report


def test_the_confusion_picture_is_an_rgb_heat_map() -> None:
    matrix = np.diag(np.full(10, 980))
    matrix[4, 9] = 12
    picture = evaluate.draw_confusion(matrix, "title")
    assert picture.mode == "RGB"
    width, height = picture.size
    assert 500 < width < 1000 and 500 < height < 1000
    assert len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0)) > 10  # not a blank canvas


@pytest.mark.parametrize(("mistakes", "rows"), [(0, 1), (7, 1), (23, 3), (150, 10)])
def test_the_error_gallery_shows_at_most_a_hundred_mistakes(mistakes: int, rows: int) -> None:
    n = 200
    labels = np.zeros(n, np.uint8)
    predictions = [1] * mistakes + [0] * (n - mistakes)
    images = np.zeros((n, 28, 28), np.uint8)
    gallery = evaluate.draw_errors(images, labels, one_hot(predictions))
    one_row = evaluate.draw_errors(images[:1], labels[:1], one_hot([1]))
    tile_height = 28 * 3 + 34
    assert gallery.size[1] == one_row.size[1] + (rows - 1) * tile_height


def test_the_most_confident_mistakes_come_first() -> None:
    labels = np.array([0, 0], np.uint8)
    probs = np.concatenate([one_hot([1], confidence=0.4), one_hot([2], confidence=0.95)])
    images = np.zeros((2, 28, 28), np.uint8)
    images[1, 10:18, 10:18] = 255  # the confident mistake has ink, so its tile is dark
    gallery = evaluate.draw_errors(images, labels, probs, title="")
    first_tile = gallery.crop((10, 56, 10 + 84, 56 + 84)).convert("L")
    assert np.asarray(first_tile).min() < 50


def tiny_usps_file(path: Path, count: int) -> Path:
    """`count` MNIST test digits in the USPS text format (16x16, -1 = paper)."""
    images, labels = mnist_test_digits()
    lines = []
    for image, label in zip(images[:count], labels[:count], strict=True):
        small = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BOX))
        values = small.astype(np.float64).ravel() / 127.5 - 1
        lines.append(" ".join(f"{v:.4f}" for v in [float(label), *values]))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_main_reads_every_set_and_writes_the_four_pictures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scans = tmp_path / "scans"
    write_set(scans, 8, seed=5, preset="varied")
    usps_file = tiny_usps_file(tmp_path / "usps.txt", 20)
    out = tmp_path / "out"
    assert evaluate.main(None, mnist.resolve_data_dir(None), out, [scans], usps_file) == 0
    printed = capsys.readouterr().out
    assert "confusion matrix (rows: true digit, columns: predicted digit)" in printed
    for name in ("MNIST test: 10,000 files", "scans: 8 files", "USPS: 20 files"):
        assert name in printed
    assert printed.count("min_confidence   to review") == 3
    for name in ("confusion.png", "errors.png", "reliability.png", "risk-coverage.png"):
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and picture.size[0] > 500


def test_a_scan_folder_without_labels_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"labels\.csv"):
        evaluate.read_labelled_folder(Classifier(), tmp_path)


def test_a_file_with_two_candidates_is_read_from_the_surer() -> None:
    images, labels = mnist_test_digits()
    digit = images[0].astype(np.float32) / 255
    smudge = np.full_like(digit, 0.5)
    r = evaluate.reading("set", Classifier(), labels[:1], [([smudge, digit], False)])
    assert r.probs[0].argmax() == labels[0] and r.probs[0].max() > 0.9
    assert r.rival is not None and r.rival[0] < r.probs[0].max()


def test_a_file_whose_other_candidate_reads_otherwise_as_surely_goes_to_review() -> None:
    probs = np.array([[0.0, 0.999] + [0.0] * 8, [0.999, 0.001] + [0.0] * 8])
    labels = np.array([1, 0])
    rows = calibration.risk_coverage(probs, labels, [0.99], rival=np.array([0.995, 0.5]))
    assert rows == [(0.99, 0.5, 0.0)]


def test_blank_and_doubtful_files_go_to_review_and_count_as_not_read() -> None:
    images, labels = mnist_test_digits()
    prepared = [
        ([images[0].astype(np.float32) / 255], False),
        ([], False),
        ([images[2] / 255.0], True),
    ]
    r = evaluate.reading("set", Classifier(), labels[:3], prepared)
    assert r.read.tolist() == [True, False, True] and r.held.tolist() == [False, True, True]
    assert r.accuracy == pytest.approx(2 / 3)
    assert r.risk_coverage()[0][1] == pytest.approx(2 / 3)
