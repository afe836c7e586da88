"""The MNIST reader refuses anything but intact IDX files, and the downloader never leaves junk."""

from __future__ import annotations

import functools
import gzip
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from digit_inbox.daemon.errors import DataError
from digit_inbox.export import mnist

LABELS = "t10k-labels-idx1-ubyte"
IMAGES = "t10k-images-idx3-ubyte"


def idx(array: np.ndarray, magic: int | None = None) -> bytes:
    """An uncompressed IDX file holding `array` (uint8)."""
    if magic is None:
        magic = mnist.LABELS_MAGIC if array.ndim == 1 else mnist.IMAGES_MAGIC
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def digits(n: int, size: int = 28) -> np.ndarray:
    return np.arange(n * size * size, dtype=np.uint64).astype(np.uint8).reshape(n, size, size)


@pytest.fixture(scope="module")
def real_dir() -> Path:
    return mnist.resolve_data_dir(None)


@pytest.fixture(scope="module")
def real_labels(real_dir: Path) -> bytes:
    return gzip.decompress((real_dir / f"{LABELS}.gz").read_bytes())


# --- reading ----------------------------------------------------------------------------------


def test_the_real_test_split_reads_as_ten_thousand_labelled_digits(real_dir: Path) -> None:
    split = mnist.load_split(real_dir, "test")
    assert split.images.shape == (10_000, 28, 28)
    assert split.images.dtype == np.uint8
    assert split.labels.shape == (10_000,)
    assert sorted(set(split.labels.tolist())) == list(range(10))
    assert split.images.max() == 255 and split.images.min() == 0
    assert split.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits


def test_gzip_and_raw_files_read_the_same(tmp_path: Path, real_labels: bytes) -> None:
    raw_dir, gz_dir = tmp_path / "raw", tmp_path / "gz"
    raw_dir.mkdir()
    gz_dir.mkdir()
    (raw_dir / LABELS).write_bytes(real_labels)
    (gz_dir / f"{LABELS}.gz").write_bytes(gzip.compress(real_labels))
    from_raw = mnist.load_idx(raw_dir, LABELS)
    from_gz = mnist.load_idx(gz_dir, LABELS)
    assert len(from_raw) == 10_000
    np.testing.assert_array_equal(from_raw, from_gz)


def test_gzip_is_recognised_by_content_not_by_name(tmp_path: Path, real_labels: bytes) -> None:
    (tmp_path / LABELS).write_bytes(gzip.compress(real_labels))
    assert len(mnist.load_idx(tmp_path, LABELS)) == 10_000


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def load_unverified(tmp_path: Path, name: str) -> np.ndarray:
    return mnist.load_idx(tmp_path, name, verify=False)


def test_a_wrong_magic_number_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, LABELS, idx(np.zeros(3, np.uint8), magic=1234))
    with pytest.raises(DataError, match="bad magic number 1234") as caught:
        load_unverified(tmp_path, LABELS)
    assert str(path) in str(caught.value)


def test_a_file_shorter_than_any_header_is_refused(tmp_path: Path) -> None:
    write(tmp_path, LABELS, b"\x00\x00\x08")
    with pytest.raises(DataError, match="too short to be an IDX file"):
        load_unverified(tmp_path, LABELS)


def test_a_truncated_image_header_is_refused(tmp_path: Path) -> None:
    write(tmp_path, IMAGES, idx(digits(2))[:10])
    with pytest.raises(DataError, match="truncated header"):
        load_unverified(tmp_path, IMAGES)


def test_a_truncated_body_is_refused_with_the_sizes(tmp_path: Path) -> None:
    data = idx(digits(5))
    path = write(tmp_path, IMAGES, data[:-100])
    with pytest.raises(DataError, match="truncated or corrupt") as caught:
        load_unverified(tmp_path, IMAGES)
    message = str(caught.value)
    assert str(path) in message
    assert f"{len(data) - 100} bytes but the header promises {len(data)}" in message
    assert "5x28x28" in message


def test_images_of_the_wrong_size_are_refused(tmp_path: Path) -> None:
    write(tmp_path, IMAGES, idx(digits(2, size=32)))
    with pytest.raises(DataError, match="images are 32x32, expected 28x28"):
        load_unverified(tmp_path, IMAGES)


def test_a_valid_fabricated_file_parses_to_its_contents(tmp_path: Path) -> None:
    images = digits(3)
    write(tmp_path, IMAGES, idx(images))
    np.testing.assert_array_equal(load_unverified(tmp_path, IMAGES), images)


def test_images_and_labels_of_different_counts_are_refused(tmp_path: Path) -> None:
    write(tmp_path, IMAGES, idx(digits(5)))
    write(tmp_path, LABELS, idx(np.arange(4, dtype=np.uint8)))
    with pytest.raises(DataError, match="5 test images but 4 labels"):
        mnist.load_split(tmp_path, "test", verify=False)


def test_swapped_images_and_labels_are_refused(tmp_path: Path) -> None:
    write(tmp_path, IMAGES, idx(np.arange(4, dtype=np.uint8)))
    write(tmp_path, LABELS, idx(digits(4)))
    with pytest.raises(DataError, match="swapped or malformed"):
        mnist.load_split(tmp_path, "test", verify=False)


def test_a_file_that_is_not_canonical_mnist_fails_its_md5(tmp_path: Path) -> None:
    labels = np.arange(10_000, dtype=np.uint64).astype(np.uint8) % 10
    path = write(tmp_path, LABELS, idx(labels))
    with pytest.raises(
        DataError, match=f"does not match the canonical {mnist.CANONICAL_MD5[LABELS]}"
    ):
        mnist.load_idx(tmp_path, LABELS)
    assert len(load_unverified(tmp_path, LABELS)) == 10_000  # well-formed, just not MNIST
    assert path.exists()


def test_a_corrupt_gzip_is_refused_with_advice(tmp_path: Path, real_labels: bytes) -> None:
    path = write(tmp_path, f"{LABELS}.gz", gzip.compress(real_labels)[:-200])
    with pytest.raises(DataError, match="corrupt gzip") as caught:
        mnist.load_idx(tmp_path, LABELS)
    assert str(path) in str(caught.value)
    assert "download it again" in str(caught.value)


def test_a_missing_file_says_how_to_provide_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as caught:
        mnist.load_split(tmp_path, "test")
    assert "--data-dir" in str(caught.value)
    assert mnist.ENV_DATA_DIR in str(caught.value)


# --- where the data is ------------------------------------------------------------------------


def test_the_option_beats_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(mnist.ENV_DATA_DIR, str(tmp_path / "from-env"))
    assert mnist.resolve_data_dir(tmp_path / "from-option") == tmp_path / "from-option"


def test_the_environment_is_used_without_an_option(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(mnist.ENV_DATA_DIR, str(tmp_path / "from-env"))
    assert mnist.resolve_data_dir(None) == tmp_path / "from-env"


@pytest.mark.parametrize("env", [None, ""])
def test_no_folder_at_all_is_a_clear_data_error(
    monkeypatch: pytest.MonkeyPatch, env: str | None
) -> None:
    if env is None:
        monkeypatch.delenv(mnist.ENV_DATA_DIR, raising=False)
    else:
        monkeypatch.setenv(mnist.ENV_DATA_DIR, env)
    with pytest.raises(DataError, match=f"pass --data-dir DIR or set {mnist.ENV_DATA_DIR}"):
        mnist.resolve_data_dir(None)


# --- downloading, from a local server only ----------------------------------------------------


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def mirrors(
    tmp_path: Path, real_dir: Path, real_labels: bytes, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """Mirrors on 127.0.0.1: `good` serves the real label files, `bad` wrong ones, `empty` 404s."""
    root = tmp_path / "www"
    good, bad, empty = root / "good", root / "bad", root / "empty"
    for folder in (good, bad, empty):
        folder.mkdir(parents=True)
    for name in (LABELS, "train-labels-idx1-ubyte"):
        shutil.copy(real_dir / f"{name}.gz", good / f"{name}.gz")
    wrong = gzip.compress(idx(np.zeros(10_000, np.uint8)))
    for name in (LABELS, "train-labels-idx1-ubyte"):
        (bad / f"{name}.gz").write_bytes(wrong)
    (bad / f"{LABELS}.gz").write_bytes(gzip.compress(real_labels)[:-500])  # corrupt gzip

    monkeypatch.setenv("NO_PROXY", "*")
    monkeypatch.setenv("no_proxy", "*")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield {kind: f"{base}/{kind}/" for kind in ("good", "bad", "empty")}
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def images_present(tmp_path: Path, real_dir: Path) -> Path:
    """A data folder that already has both image files, so only the small label files download."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("train-images-idx3-ubyte", IMAGES):
        (data_dir / f"{name}.gz").symlink_to(real_dir / f"{name}.gz")
    return data_dir


def test_download_falls_back_to_the_next_mirror_on_404(
    mirrors: dict[str, str], images_present: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fetched = mnist.download(images_present, [mirrors["empty"], mirrors["good"]], timeout=10)
    assert sorted(p.name for p in fetched) == sorted(["train-labels-idx1-ubyte.gz", f"{LABELS}.gz"])
    assert len(mnist.load_split(images_present, "test").labels) == 10_000
    assert "100.0%" in capsys.readouterr().err  # the progress bar reached the end


def test_download_skips_a_mirror_serving_wrong_or_corrupt_files(
    mirrors: dict[str, str], images_present: Path
) -> None:
    fetched = mnist.download(images_present, [mirrors["bad"], mirrors["good"]], timeout=10)
    assert len(fetched) == 2
    assert mnist.load_idx(images_present, "train-labels-idx1-ubyte").shape == (60_000,)
    assert mnist.load_idx(images_present, LABELS).shape == (10_000,)


def test_download_fails_clearly_and_writes_nothing_when_no_mirror_has_the_file(
    mirrors: dict[str, str], images_present: Path
) -> None:
    before = sorted(p.name for p in images_present.iterdir())
    with pytest.raises(DataError, match="could not download") as caught:
        mnist.download(images_present, [mirrors["empty"], mirrors["bad"]], timeout=10)
    message = str(caught.value)
    assert "train-labels-idx1-ubyte" in message
    assert "404" in message  # the empty mirror
    assert "MD5 mismatch" in message  # the bad mirror
    assert sorted(p.name for p in images_present.iterdir()) == before


def test_download_keeps_files_that_are_already_there(
    mirrors: dict[str, str], images_present: Path, real_labels: bytes
) -> None:
    kept = images_present / LABELS
    kept.write_bytes(real_labels)
    fetched = mnist.download(images_present, [mirrors["good"]], timeout=10)
    assert [p.name for p in fetched] == ["train-labels-idx1-ubyte.gz"]
    assert kept.read_bytes() == real_labels
    assert not (images_present / f"{LABELS}.gz").exists()
