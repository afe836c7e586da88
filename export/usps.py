"""The USPS digits (ESL "zip" text files): for measuring how well the model reads other writers.

Evaluation only: the shipped model never trains on them. One digit a line: the label, then 256
values in [-1, 1] (16x16, row-major, -1 = paper). The path comes from an option or
$DIGIT_INBOX_USPS; there is no built-in default.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from digit_inbox.daemon.errors import DataError
from digit_inbox.export.mnist import Split

ENV_USPS = "DIGIT_INBOX_USPS"
SIDE = 16


def resolve_path(option: str | os.PathLike[str] | None) -> Path | None:
    """--usps wins, then $DIGIT_INBOX_USPS; None when neither is given."""
    value = option if option is not None else os.environ.get(ENV_USPS)
    return Path(value).expanduser() if value else None


def parse(text: str, source: str) -> Split:
    """uint8 images [N, 16, 16] with ink = 255 on 0 (MNIST polarity) and their labels."""
    images, labels = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = np.array(line.split(), dtype=np.float64)
        except ValueError as exc:
            raise DataError(
                f"{source}:{number}: not numbers ({exc}); is this a USPS zip file?"
            ) from exc
        if len(values) != 1 + SIDE * SIDE:
            raise DataError(
                f"{source}:{number}: {len(values)} values, expected {1 + SIDE * SIDE} "
                "(the label, then 16x16 pixels); is this a USPS zip file?"
            )
        label, pixels = values[0], values[1:]
        if label not in range(10):
            raise DataError(f"{source}:{number}: label {label:g} is not a digit 0-9")
        if not np.all(np.abs(pixels) <= 1):
            raise DataError(f"{source}:{number}: pixel values outside [-1, 1]")
        labels.append(int(label))
        images.append(np.round((pixels + 1) * 127.5).reshape(SIDE, SIDE))
    if not labels:
        raise DataError(f"{source}: no digits in the file")
    return Split(np.array(images, dtype=np.uint8), np.array(labels, dtype=np.uint8))


def load(path: Path) -> Split:
    """Read a (gzipped or plain) USPS zip.train / zip.test file."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        text = data.decode("ascii")
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}; pass --usps FILE or set {ENV_USPS}") from exc
    except (EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt gzip ({exc}); download it again") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a text file; is this a USPS zip file?") from exc
    return parse(text, str(path))
