"""The USPS reader: real files read as labelled 16x16 digits, broken ones are clear errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from digit_inbox.daemon.errors import DataError
from digit_inbox.export import usps

REAL = usps.resolve_path(None)


def line(label: float, pixels: list[float] | None = None) -> str:
    values = pixels if pixels is not None else [-1.0] * 255 + [1.0]
    return " ".join(f"{v:.4f}" for v in [label, *values])


def test_a_small_file_reads_as_ink_on_black_with_its_labels(tmp_path: Path) -> None:
    path = tmp_path / "zip.train.gz"
    path.write_bytes(gzip.compress(f"{line(6)}\n{line(0, [0.0] * 256)}\n".encode()))
    split = usps.load(path)
    assert split.images.shape == (2, 16, 16) and split.images.dtype == np.uint8
    assert split.labels.tolist() == [6, 0]
    assert split.images[0, 15, 15] == 255 and split.images[0, 0, 0] == 0
    assert set(np.unique(split.images[1])) == {128}


def test_a_plain_text_file_reads_like_the_gzipped_one(tmp_path: Path) -> None:
    (tmp_path / "zip.test").write_text(line(3) + "\n")
    assert usps.load(tmp_path / "zip.test").labels.tolist() == [3]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (line(1, [0.0] * 200), ":1: 201 values, expected 257"),
        (line(12), "label 12 is not a digit"),
        (line(1, [2.0] * 256), r"outside \[-1, 1\]"),
        ("7 a b c", "not numbers"),
        ("\n\n", "no digits"),
    ],
    ids=["count", "label", "range", "text", "empty"],
)
def test_malformed_lines_are_refused_with_their_line_number(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "zip.train"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        usps.load(path)


def test_a_corrupt_gzip_or_a_binary_file_is_a_data_error(tmp_path: Path) -> None:
    broken = tmp_path / "zip.train.gz"
    broken.write_bytes(gzip.compress(line(1).encode())[:30])
    with pytest.raises(DataError, match="corrupt gzip"):
        usps.load(broken)
    binary = tmp_path / "zip.bin"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(DataError, match="not a text file"):
        usps.load(binary)


def test_a_missing_file_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="DIGIT_INBOX_USPS"):
        usps.load(tmp_path / "absent.gz")


def test_the_option_beats_the_environment_and_nothing_is_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(usps.ENV_USPS, "/from/env")
    assert usps.resolve_path("/from/option") == Path("/from/option")
    assert usps.resolve_path(None) == Path("/from/env")
    monkeypatch.delenv(usps.ENV_USPS)
    assert usps.resolve_path(None) is None


@pytest.mark.skipif(REAL is None, reason="USPS not available: set DIGIT_INBOX_USPS to zip.train.gz")
def test_the_real_training_file_holds_7291_digits_of_every_kind() -> None:
    assert REAL is not None
    split = usps.load(REAL)
    assert len(split.labels) == 7291
    assert np.bincount(split.labels).tolist() == [
        1194,
        1005,
        731,
        658,
        652,
        556,
        664,
        645,
        542,
        644,
    ]
