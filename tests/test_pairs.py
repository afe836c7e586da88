"""The marks of touching digits the model learns as its last class."""

from __future__ import annotations

import numpy as np

from digit_inbox.daemon.contract import DIGIT_BOX, IMAGE_SIZE, NOT_ONE_DIGIT
from digit_inbox.export import pairs, train


def digit(width: int) -> np.ndarray:
    """A 28x28 uint8 bar `width` columns wide and 20 rows tall."""
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    image[4:24, 14 - width // 2 : 14 - width // 2 + width] = 255
    return image


def test_marks_are_normalised_like_the_daemons_digits() -> None:
    marks = pairs.make(np.stack([digit(4), digit(8)]), 50, seed=3)
    assert marks.shape == (50, IMAGE_SIZE, IMAGE_SIZE) and marks.dtype == np.float32
    assert marks.min() >= 0 and marks.max() <= 1
    for mark in marks:
        rows, cols = np.flatnonzero(mark.any(axis=1)), np.flatnonzero(mark.any(axis=0))
        longer = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
        assert DIGIT_BOX - 1 <= longer <= DIGIT_BOX + 1


def test_two_bars_touching_are_one_piece_wider_than_one_bar() -> None:
    for seed in range(20):
        mark = pairs.touching([digit(8), digit(8)], np.random.default_rng(seed))
        cols = np.flatnonzero(mark.any(axis=0))
        assert cols[-1] - cols[0] + 1 == len(cols)  # touching or overlapping: no empty column
        assert len(cols) > 8 + 1  # one bar alone is 8 columns of 20 rows: normalised, 8


def test_marks_are_drawn_the_same_for_a_seed_and_differ_between_seeds() -> None:
    images = np.stack([digit(w) for w in (3, 6, 9, 12)])
    assert np.array_equal(pairs.make(images, 5, seed=1), pairs.make(images, 5, seed=1))
    assert not np.array_equal(pairs.make(images, 5, seed=1), pairs.make(images, 5, seed=2))


def test_training_data_ends_with_a_tenth_as_many_marks_labelled_not_one_digit() -> None:
    images = np.stack([digit(w) for w in range(2, 12)] * 3)
    x, y = train.with_pairs(images, np.arange(30) % 10, seed=1, device="cpu")
    assert x.shape == (33, 1, IMAGE_SIZE, IMAGE_SIZE)
    assert y.tolist() == [*(np.arange(30) % 10).tolist(), *[NOT_ONE_DIGIT] * 3]
