"""The four MNIST IDX files: find, download, verify and read them.

The canonical MD5s are of the *uncompressed* files, so a re-compressed .gz still verifies.
Nothing here needs torch, so the daemon's tests and benchmarks can read MNIST too.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from digit_inbox.daemon.errors import DataError

log = logging.getLogger(__name__)

ENV_DATA_DIR = "DIGIT_INBOX_MNIST_DIR"
LABELS_MAGIC = 2049
IMAGES_MAGIC = 2051

# name -> MD5 of the uncompressed canonical file
CANONICAL_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60_000),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10_000),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


class Split(NamedTuple):
    images: np.ndarray  # uint8 [N, 28, 28], 0 = background, 255 = ink
    labels: np.ndarray  # uint8 [N]


def parse_idx(data: bytes, source: str) -> np.ndarray:
    """Decode one uncompressed IDX file, checking magic, dimensions and length."""
    if len(data) < 8:
        raise DataError(f"{source}: too short to be an IDX file ({len(data)} bytes)")
    magic = int.from_bytes(data[0:4], "big")
    if magic not in (LABELS_MAGIC, IMAGES_MAGIC):
        raise DataError(
            f"{source}: bad magic number {magic} (expected {LABELS_MAGIC} for labels or "
            f"{IMAGES_MAGIC} for images); is this an MNIST IDX file?"
        )
    ndim = 1 if magic == LABELS_MAGIC else 3
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{source}: truncated header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    if ndim == 3 and dims[1:] != [28, 28]:
        raise DataError(f"{source}: images are {dims[1]}x{dims[2]}, expected 28x28")
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            f"{source}: {len(data)} bytes but the header promises {expected} "
            f"({'x'.join(map(str, dims))}); the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_file(path: Path) -> bytes:
    """Bytes of an IDX file, gunzipped when it is gzip (by content, not by name)."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc}") from exc
    except (EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt gzip ({exc}); download it again") from exc


def find(data_dir: Path, name: str) -> Path | None:
    for candidate in (data_dir / f"{name}.gz", data_dir / name):
        if candidate.is_file():
            return candidate
    return None


def load_idx(data_dir: Path, name: str, verify: bool = True) -> np.ndarray:
    path = find(data_dir, name)
    if path is None:
        raise DataError(
            f"{name}(.gz) not found in {data_dir}; pass --data-dir, set {ENV_DATA_DIR}, "
            "or add --download"
        )
    data = read_file(path)
    if verify:
        digest = hashlib.md5(data).hexdigest()
        if digest != CANONICAL_MD5[name]:
            raise DataError(
                f"{path}: MD5 {digest} does not match the canonical {CANONICAL_MD5[name]}; "
                "the file is corrupt or not MNIST, download it again"
            )
    return parse_idx(data, str(path))


def load_split(data_dir: Path, split: str, verify: bool = True) -> Split:
    images_name, labels_name, count = SPLITS[split]
    images = load_idx(data_dir, images_name, verify)
    labels = load_idx(data_dir, labels_name, verify)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{data_dir}: {split} images and labels are swapped or malformed")
    if len(images) != len(labels):
        raise DataError(f"{data_dir}: {len(images)} {split} images but {len(labels)} labels")
    if verify and len(images) != count:
        raise DataError(f"{data_dir}: {len(images)} {split} images, expected {count}")
    return Split(images, labels)


def resolve_data_dir(option: str | os.PathLike[str] | None) -> Path:
    """--data-dir wins, then $DIGIT_INBOX_MNIST_DIR; there is no built-in default."""
    value = option if option is not None else os.environ.get(ENV_DATA_DIR)
    if not value:
        raise DataError(f"no MNIST folder given: pass --data-dir DIR or set {ENV_DATA_DIR}")
    return Path(value).expanduser()


def data_fingerprint() -> str:
    """MD5s of the training files, for the model's metadata."""
    return ",".join(f"{n}={CANONICAL_MD5[n]}" for n in SPLITS["train"][:2])


def download(data_dir: Path, mirrors: Sequence[str] = MIRRORS, timeout: float = 60.0) -> list[Path]:
    """Fetch any missing file from the first mirror that serves it with the right MD5."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fetched = []
    for name, md5 in CANONICAL_MD5.items():
        if find(data_dir, name) is not None:
            continue
        errors = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{name}.gz"
            try:
                raw = _fetch(url, timeout)
                data = gzip.decompress(raw)
            except (OSError, EOFError, gzip.BadGzipFile) as exc:
                errors.append(f"{url}: {exc}")
                continue
            if hashlib.md5(data).hexdigest() != md5:
                errors.append(f"{url}: MD5 mismatch")
                continue
            target = data_dir / f"{name}.gz"
            with tempfile.NamedTemporaryFile(dir=data_dir, delete=False) as tmp:
                tmp.write(raw)
            os.replace(tmp.name, target)
            fetched.append(target)
            break
        else:
            raise DataError(f"could not download {name}:\n  " + "\n  ".join(errors))
    return fetched


def _fetch(url: str, timeout: float) -> bytes:
    log.info("downloading %s", url)
    with urllib.request.urlopen(url, timeout=timeout) as response:
        total = int(response.headers.get("Content-Length") or 0)
        chunks, done = [], 0
        while chunk := response.read(1 << 16):
            chunks.append(chunk)
            done += len(chunk)
            _progress(url.rsplit("/", 1)[-1], done, total)
    sys.stderr.write("\n")
    return b"".join(chunks)


def _progress(name: str, done: int, total: int) -> None:
    if total:
        filled = 30 * done // total
        bar = "#" * filled + "." * (30 - filled)
        sys.stderr.write(f"\r{name:<28} [{bar}] {done / total:6.1%} {done >> 10} KiB")
    else:
        sys.stderr.write(f"\r{name:<28} {done >> 10} KiB")
    sys.stderr.flush()
