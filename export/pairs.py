"""Marks that are not one digit, for the model's last class: MNIST digits written touching.

A mark the daemon cannot separate (two or three digits touching or overlapping, as fast
handwriting writes "00", "11", "23") reaches the model as one 28x28. Trained on single digits
only, the model reads such a mark as one digit, often surely; with these marks as a class of
their own, it says "not one digit" and the daemon cuts the mark or asks a person. They are made
from training digits only, normalised exactly as the daemon normalises a mark
(`preprocess.boxed`), so export/ and daemon/ cannot drift.
"""

from __future__ import annotations

import numpy as np

from digit_inbox.daemon.contract import IMAGE_SIZE, NOT_ONE_DIGIT
from digit_inbox.daemon.preprocess import boxed, inked, resized

SHARE = 0.1  # marks of touching digits per single digit, in training and in replay
TRIPLES = 0.15  # of the marks: three digits touching, the rest two
MAX_OVERLAP = 0.45  # of the narrower digit's width: from just touching to this much overlap
HEIGHTS = (0.8, 1.2)  # the second digit's height over the first's
DRIFT = 0.15  # of the height: how far the next digit sits above or below


def touching(digits: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Digits (uint8, ink = 255) written left to right, each touching or overlapping the one
    before, as one 28x28 float32 mark normalised like the daemon's."""
    first = inked(digits[0]).astype(np.float32) / 255
    height = first.shape[0]
    pieces, tops, lefts = [first], [0], [0]
    for digit in digits[1:]:
        ink = inked(digit).astype(np.float32) / 255
        h = max(4, round(height * rng.uniform(*HEIGHTS)))
        w = max(1, round(ink.shape[1] * h / ink.shape[0]))
        ink = np.clip(resized(ink, (h, w)), 0, 1)
        before = pieces[-1]
        overlap = rng.uniform(0, MAX_OVERLAP) * min(before.shape[1], w)
        lefts.append(lefts[-1] + before.shape[1] - round(overlap))
        tops.append(tops[-1] + round((before.shape[0] - h) / 2 + rng.uniform(-DRIFT, DRIFT) * h))
        pieces.append(ink)
    top = min(tops)
    canvas = np.zeros(
        (max(t - top + p.shape[0] for t, p in zip(tops, pieces, strict=True)),
         max(x + p.shape[1] for x, p in zip(lefts, pieces, strict=True))),
        np.float32,
    )  # fmt: skip
    for t, x, p in zip(tops, lefts, pieces, strict=True):
        region = canvas[t - top : t - top + p.shape[0], x : x + p.shape[1]]
        np.maximum(region, p, out=region)
    return boxed(canvas)


def make(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` marks of two or three of `images` (uint8 [N, 28, 28]) touching: float32
    [count, 28, 28] in 0..1, ink = 1."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    for i in range(count):
        k = 3 if rng.random() < TRIPLES else 2
        out[i] = touching([images[j] for j in rng.integers(0, len(images), k)], rng)
    return out


def with_marks(images: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits (uint8, ink = 255) and their labels, followed by SHARE as many marks of them
    touching, labelled NOT_ONE_DIGIT (the model's last class): float32 [N, 28, 28] in 0..1 and
    int64 [N]. Training and replay (`learn`, `finetune`) add the class the same way."""
    images = np.asarray(images)
    marks = make(images, round(SHARE * len(images)), seed)
    x = np.concatenate([images.astype(np.float32) / np.float32(255), marks])
    y = np.concatenate([np.asarray(labels, np.int64), np.full(len(marks), NOT_ONE_DIGIT)])
    return x, y
