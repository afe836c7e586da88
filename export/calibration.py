"""Honest confidence: fit a temperature, measure calibration error and the review/error dial.

Numpy only (no torch), so the daemon's evaluation and the training share one definition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ECE_BINS = 10
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(1, keepdims=True)
    e = np.exp(shifted)
    return np.asarray(e / e.sum(1, keepdims=True))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    z = z - z.max(1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels.astype(np.int64)].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, lo: float = 0.05, hi: float = 20.0
) -> float:
    """The T minimising the negative log-likelihood of softmax(logits / T): golden-section on log T.

    The NLL is convex in 1/T, hence unimodal in log T, so the search cannot stop at a wrong dip.
    """
    a, b = np.log(lo), np.log(hi)
    ratio = (np.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, labels, np.exp(c)), nll(logits, labels, np.exp(d))
    while b - a > 1e-5:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, labels, np.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, labels, np.exp(d))
    return float(np.exp((a + b) / 2))


def fit(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(the temperature fitted on these logits, the calibration error it leaves on them)."""
    temperature = fit_temperature(logits, labels)
    return temperature, expected_calibration_error(softmax(logits / temperature), labels)


def logits_from_probs(probs: np.ndarray) -> np.ndarray:
    """Log-probabilities: logits up to a per-row constant, which softmax ignores."""
    return np.asarray(np.log(np.clip(probs, 1e-30, None)))


def reliability(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """Per equal-width confidence bin: (mean confidence, accuracy, count); empty bins have 0s."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == labels
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        rows.append(
            (float(confidence[inside].mean()), float(correct[inside].mean()), count)
            if count
            else (0.0, 0.0, 0)
        )
    return rows


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """Sum over bins of (share of images in the bin) x |accuracy - mean confidence|."""
    total = len(labels)
    if total == 0:
        return 0.0
    return float(
        sum(n / total * abs(acc - conf) for conf, acc, n in reliability(probs, labels, bins))
    )


def risk_coverage(
    probs: np.ndarray,
    labels: np.ndarray,
    thresholds: Sequence[float] = THRESHOLDS,
    held: np.ndarray | None = None,
    rival: np.ndarray | None = None,
) -> list[tuple[float, float, float]]:
    """Per min_confidence: (threshold, share sent to review, error rate among files filed ok).

    A file goes to review when its confidence is below min_confidence, as the daemon decides,
    when `held` says so (blank, unreadable, doubtful pages), or when its `rival` (the
    confidence of another reading of it that reads otherwise, 0 for none) is sure too.
    """
    confidence = probs.max(1)
    wrong = probs.argmax(1) != labels
    kept = np.ones(len(labels), bool) if held is None else ~held
    rivalled = np.zeros(len(labels)) if rival is None else rival
    rows = []
    for t in thresholds:
        filed = (confidence >= t) & kept & (rivalled < t)
        review = 1.0 - float(filed.mean()) if len(labels) else 0.0
        error = float(wrong[filed].mean()) if filed.any() else 0.0
        rows.append((float(t), review, error))
    return rows
