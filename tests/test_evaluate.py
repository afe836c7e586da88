"""The evaluation report counts the right things and draws readable pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digit_inbox.daemon.classifier import Classifier
from digit_inbox.export import evaluate, mnist


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


def test_main_writes_both_pictures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(None, mnist.resolve_data_dir(None), tmp_path / "out") == 0
    assert (
        "confusion matrix (rows: true digit, columns: predicted digit)" in capsys.readouterr().out
    )
    for name in ("confusion.png", "errors.png"):
        with Image.open(tmp_path / "out" / name) as picture:
            assert picture.format == "PNG" and picture.size[0] > 500
