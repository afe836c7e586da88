"""Confidence that means what it says: the temperature fit, the calibration error and the
review/error dial, on arrays small enough to check by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from digit_inbox.daemon import cli, contract
from digit_inbox.daemon.classifier import Classifier, embedded_model
from digit_inbox.daemon.errors import ExitCode
from digit_inbox.export import calibration


def probs_for(predictions: list[int], confidences: list[float]) -> np.ndarray:
    probs = np.zeros((len(predictions), 10))
    for i, (p, c) in enumerate(zip(predictions, confidences, strict=True)):
        probs[i] = (1 - c) / 9
        probs[i, p] = c
    return probs


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_recovers_the_one_the_labels_were_drawn_with(
    true_temperature: float,
) -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(0, 4, (20_000, 10))
    p = calibration.softmax(logits / true_temperature)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    fitted = calibration.fit_temperature(logits, labels)
    assert fitted == pytest.approx(true_temperature, rel=0.05)


def test_calibrated_probabilities_have_a_small_error_and_overconfident_ones_a_large_one() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (20_000, 10))
    p = calibration.softmax(logits)
    labels = (p.cumsum(1) > rng.random((len(p), 1))).argmax(1)
    assert calibration.expected_calibration_error(p, labels) < 0.02
    sharpened = calibration.softmax(logits * 3)
    assert calibration.expected_calibration_error(sharpened, labels) > 0.1


def test_the_calibration_error_weighs_each_bins_gap_by_its_share_of_images() -> None:
    # bin 0.9: confidence 0.95, 1 right of 2 -> gap 0.45, share 2/4; bin 0.6: 0.65, 2 of 2 -> 0.35
    probs = probs_for([1, 2, 3, 4], [0.95, 0.95, 0.65, 0.65])
    labels = np.array([1, 0, 3, 4])
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(
        0.5 * 0.45 + 0.5 * 0.35
    )
    bins = calibration.reliability(probs, labels)
    assert bins[9] == pytest.approx((0.95, 0.5, 2)) and bins[6] == pytest.approx((0.65, 1.0, 2))
    assert bins[0] == (0.0, 0.0, 0)


def test_a_confidence_of_exactly_one_falls_in_the_top_bin() -> None:
    assert calibration.reliability(probs_for([0], [1.0]), np.array([0]))[9][2] == 1


def test_the_dial_counts_review_share_and_errors_among_the_files_filed() -> None:
    probs = probs_for([1, 2, 3, 4, 5], [0.99, 0.97, 0.93, 0.7, 0.55])
    labels = np.array([1, 0, 3, 0, 5])  # the 0.97 and the 0.7 readings are wrong
    rows = calibration.risk_coverage(probs, labels, thresholds=[0.5, 0.9, 0.98])
    assert rows == pytest.approx([(0.5, 0.0, 2 / 5), (0.9, 0.4, 1 / 3), (0.98, 0.8, 0.0)])


def test_files_held_for_review_are_never_counted_as_filed() -> None:
    probs = probs_for([1, 2], [0.99, 0.99])
    rows = calibration.risk_coverage(
        probs, np.array([1, 0]), thresholds=[0.5], held=np.array([False, True])
    )
    assert rows == pytest.approx([(0.5, 0.5, 0.0)])


def test_nothing_filed_is_no_error_and_everything_to_review() -> None:
    rows = calibration.risk_coverage(probs_for([1], [0.6]), np.array([2]), thresholds=[0.9])
    assert rows == pytest.approx([(0.9, 1.0, 0.0)])


@pytest.mark.slow
def test_calibrating_the_shipped_model_again_refits_its_one_temperature_in_place(
    tmp_path: Path,
) -> None:
    out = tmp_path / "again.onnx"
    assert cli.main(["calibrate", str(embedded_model()), "-o", str(out)]) == ExitCode.OK
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert ops[-3:] == ["Gemm", "Div", "Softmax"] and ops.count("Div") == 1
    shipped = float(Classifier().metadata[contract.META_TEMPERATURE])
    again = Classifier(out)
    assert float(again.metadata[contract.META_TEMPERATURE]) == pytest.approx(shipped, rel=0.02)
