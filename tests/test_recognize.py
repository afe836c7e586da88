"""Reading many files: MNIST test digits rendered as scans are read accurately, every file gets
exactly one complete row in input order, and the worker pool agrees with in-process reading."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import signal
import subprocess
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digit_inbox.daemon import recognize
from digit_inbox.daemon.rows import Row, Status
from tests.helpers import mnist_test_digits, wait_until


def rendered(digit: np.ndarray, rng: np.random.Generator) -> tuple[bytes, str]:
    """An MNIST digit (ink = 255) as a scan: enlarged, somewhere on a shaded, noisy page of grey
    or tinted paper, saved as PNG or JPEG."""
    scale = rng.uniform(1.5, 5)
    size = round(28 * scale)
    ink = np.asarray(Image.fromarray(digit).resize((size, size), Image.Resampling.BICUBIC))
    height, width = rng.integers(size + 10, 3 * size + 40, 2)
    y, x = rng.integers(0, height - size), rng.integers(0, width - size)
    coverage = np.zeros((height, width), np.float32)
    coverage[y : y + size, x : x + size] = ink / 255
    paper = rng.uniform(0.7, 1.0, 3)
    light = np.linspace(1.0, rng.uniform(0.75, 1.0), width)[None, :, None]
    page = paper * (1 - 0.85 * coverage[:, :, None]) * light
    page += rng.normal(0, 0.02, page.shape)
    image = Image.fromarray(np.clip(page * 255, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    if rng.random() < 0.5:
        image.save(buffer, format="PNG")
        return buffer.getvalue(), ".png"
    image.save(buffer, format="JPEG", quality=int(rng.integers(60, 95)))
    return buffer.getvalue(), ".jpg"


def write_digits(folder: Path, count: int, seed: int = 0) -> list[tuple[Path, str, int]]:
    """The first `count` MNIST test digits as scans in folder: (path, name, label)."""
    images, labels = mnist_test_digits()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        data, suffix = rendered(images[i], rng)
        path = folder / f"{i:04d}{suffix}"
        path.write_bytes(data)
        out.append((path, path.name, int(labels[i])))
    return out


def test_rendered_mnist_digits_are_read_accurately(tmp_path):
    files = write_digits(tmp_path, 200)
    with recognize.Reader(workers=0) as reader:
        rows = reader.read([(path, name) for path, name, _ in files])
    correct = sum(row.digits == str(label) for row, (_, _, label) in zip(rows, files, strict=True))
    assert correct / len(files) >= 0.95


def test_each_row_is_complete_and_in_input_order(tmp_path):
    files = write_digits(tmp_path, 3)
    items = [(path, f"sub/{name}") for path, name, _ in reversed(files)]
    with recognize.Reader(workers=0) as reader:
        rows = reader.read(items)
    assert [row.file for row in rows] == [name for _, name in items]
    for (path, _), row in zip(items, rows, strict=True):
        assert row.status in (Status.OK, Status.LOW_CONFIDENCE)
        assert row.digits in "0123456789" and row.runner_up in "0123456789"
        assert row.digits != row.runner_up
        assert row.confidence is not None and row.runner_up_confidence is not None
        assert 0 <= row.runner_up_confidence <= row.confidence <= 1
        assert row.digit_confidences == f"{row.confidence:.4f}"
        assert row.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (row.width, row.height) == Image.open(path).size
        assert row.model == reader.model_id and row.model
        assert row.ms is not None and row.ms > 0
        assert row.error == ""


def test_bad_files_become_error_rows_and_the_rest_are_still_read(tmp_path):
    (good, _, label), *_ = write_digits(tmp_path, 1)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    html = tmp_path / "login.jpg"
    html.write_bytes(b"<html><body>session expired</body></html>")
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200] if good.suffix == ".png" else b"\x89PNG\r\n\x1a\n")
    items = [(p, p.name) for p in (empty, good, html, cut, tmp_path / "vanished.png")]
    with recognize.Reader(workers=0) as reader:
        rows = reader.read(items)
    assert [r.status for r in rows] == [
        Status.ERROR, rows[1].status, Status.ERROR, Status.ERROR, Status.ERROR
    ]  # fmt: skip
    assert rows[1].digits == str(label)
    assert "empty" in rows[0].error and "HTML" in rows[2].error and "not found" in rows[4].error
    for row in (rows[0], rows[2], rows[3], rows[4]):
        assert row.digits == "" and row.confidence is None and row.error and "\n" not in row.error


def test_a_blank_page_is_a_blank_row(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("L", (300, 200), 235).save(path)
    with recognize.Reader(workers=0) as reader:
        (row,) = reader.read([(path, "blank.png")])
    assert row.status == Status.BLANK
    assert row.digits == "" and row.confidence is None
    assert row.note  # says why
    assert row.sha256 and row.width == 300


def test_a_page_read_both_ways_round_takes_its_surer_way_and_a_person_decides_if_both_are_sure(
    tmp_path,
):
    # A bold light 7 on grey paper: taken for dark ink it reads as a 1, a little less surely.
    image = Image.new("RGB", (120, 100), (120, 120, 120))
    ImageDraw.Draw(image).line([(20, 10), (65, 10), (35, 85)], (235, 235, 235), 10)
    image.save(tmp_path / "seven.png")
    with recognize.Reader(workers=0, min_confidence=0.9) as reader:
        (row,) = reader.read([(tmp_path / "seven.png", "seven.png")])
    assert row.digits == "7"
    other = re.search(
        r"ink light or dark unclear, read both ways: the other way reads (\d+) \(([\d.]+)\)",
        row.note,
    )
    assert other is not None, row.note
    assert other.group(1) != "7"
    both_sure = float(other.group(2)) >= 0.9
    assert (row.status is Status.LOW_CONFIDENCE) == both_sure  # a person decides between them


def test_low_confidence_follows_min_confidence(tmp_path):
    files = write_digits(tmp_path, 1)
    items = [(path, name) for path, name, _ in files]
    with recognize.Reader(workers=0, min_confidence=0) as reader:
        (row,) = reader.read(items)
    assert row.confidence is not None
    with recognize.Reader(workers=0, min_confidence=row.confidence + 1e-3) as reader:
        (low,) = reader.read(items)
    with recognize.Reader(workers=0, min_confidence=row.confidence - 1e-3) as reader:
        (sure,) = reader.read(items)
    assert low.status == Status.LOW_CONFIDENCE and low.digits == row.digits
    assert sure.status == Status.OK


def test_the_worker_pool_reads_like_one_process_and_is_reused(tmp_path):
    files = write_digits(tmp_path, 12, seed=1)
    (tmp_path / "junk.png").write_bytes(b"junk")
    items = [(path, name) for path, name, _ in files] + [(tmp_path / "junk.png", "junk.png")]
    with recognize.Reader(workers=0) as reader:
        alone = reader.read(items)
    reader = recognize.Reader(workers=2, batch_size=5)
    try:
        first = reader.read(items)
        again = list(reader.iter_read(reversed(items)))
    finally:
        reader.close()
    reader.close()  # twice is fine

    def key(row):
        return row.file, row.status, row.digits, row.sha256, row.error

    assert [key(r) for r in first] == [key(r) for r in alone]
    assert [key(r) for r in again] == [key(r) for r in reversed(alone)]


def test_debug_strips_are_written_per_file(tmp_path):
    files = write_digits(tmp_path, 2)
    debug = tmp_path / "debug"
    items = [(path, f"a/{name}") for path, name, _ in files]
    with recognize.Reader(workers=0, debug_dir=debug) as reader:
        reader.read(items)
    strips = sorted(debug.iterdir())
    assert [p.name for p in strips] == sorted(
        f"a__{name.replace('.', '_')}.png" for _, name, _ in files
    )
    assert Image.open(strips[0]).height > 28


def test_the_strip_caption_says_what_was_read_or_why_nothing_was():
    blank = Row("b.png", Status.BLANK, note="no ink darker than the paper")
    assert recognize.result(blank) == "blank: no ink darker than the paper"
    row = Row("n.png", Status.LOW_CONFIDENCE, digits="42", confidence=0.5, runner_up="47")
    row.runner_up_confidence, row.note = 0.2, "digit 2 of 2 is unsure (0.52)"
    caption = recognize.result(row)
    assert caption.startswith("low_confidence; 42 (0.500); runner-up 47 (0.200)")
    assert caption.endswith("digit 2 of 2 is unsure (0.52)")


def test_digits_scanned_to_a_pdf_are_read_in_the_workers_with_a_note_for_more_pages(tmp_path):
    pytest.importorskip("pypdfium2", reason="the [pdf] extra is not installed")
    images, labels = mnist_test_digits()
    expected = []
    for i in range(2 * recognize.FILES_PER_TASK):  # enough for the pool, not in-process
        pages = [Image.fromarray(255 - images[i + k]).resize((84, 84)) for k in range(1 + i % 2)]
        pages[0].save(tmp_path / f"{i}.pdf", save_all=True, append_images=pages[1:])
        expected.append((str(labels[i]), "first of 2 pages" if i % 2 else ""))
    items = [(tmp_path / f"{i}.pdf", f"{i}.pdf") for i in range(len(expected))]
    with recognize.Reader(workers=2) as reader:
        rows = reader.read(items)
        assert reader._pool is not None  # read by the decoding workers
    got = [(row.digits, row.note) for row in rows]
    assert sum(g == e for g, e in zip(got, expected, strict=True)) >= len(expected) - 1, got


def test_a_single_pdf_is_read_in_a_worker_process_even_with_one_worker(tmp_path):
    pytest.importorskip("pypdfium2", reason="the [pdf] extra is not installed")
    (png, _, _), *_ = write_digits(tmp_path, 1)
    Image.open(png).save(tmp_path / "scan.pdf")
    with recognize.Reader(workers=1) as reader:
        reader.read([(png, png.name)])
        assert reader._pool is None  # an image: read here, no pool to start
        [row] = reader.read([(tmp_path / "scan.pdf", "scan.pdf")])
        assert reader._pool is not None and row.status is not Status.ERROR


def test_a_pdf_named_like_an_image_is_read_in_a_worker_process_too(tmp_path):
    pytest.importorskip("pypdfium2", reason="the [pdf] extra is not installed")
    (png, _, _), *_ = write_digits(tmp_path, 1)
    Image.open(png).save(tmp_path / "scan.pdf")
    (tmp_path / "scan.pdf").rename(tmp_path / "misnamed.png")
    with recognize.Reader(workers=1) as reader:
        [row] = reader.read([(tmp_path / "misnamed.png", "misnamed.png")])
        assert reader._pool is not None and row.status is not Status.ERROR


def test_prepare_file_returns_a_small_picklable_result(tmp_path):
    (path, _, _), *_ = write_digits(tmp_path, 1)
    prepared = recognize.prepare_file(path)
    assert prepared.images.shape == (1, 28, 28) and prepared.slots == [((0,),)]
    assert prepared.debug is None and len(pickle.dumps(prepared)) < 10_000


@pytest.mark.parametrize("name", ["../../etc/passwd", ".hidden", "a b/c?.png", "x" * 300])
def test_debug_names_are_flat_and_safe(name):
    flat = recognize.debug_name(name)
    assert "/" not in flat and not flat.startswith(".") and flat.endswith(".png")
    assert flat.count(".png") == 1
    assert len(flat.encode()) <= 255


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_workers_exit_when_the_reading_process_is_killed(tmp_path):
    write_digits(tmp_path, 8)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from digit_inbox.daemon import recognize\n"
        "reader = recognize.Reader(workers=2)\n"
        f"reader.read([(p, p.name) for p in sorted(Path({str(tmp_path)!r}).iterdir())])\n"
        "print(*reader._pool._processes, flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        workers = [int(pid) for pid in proc.stdout.readline().split()]
        assert len(workers) == 2 and not any(gone(pid) for pid in workers)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    wait_until(lambda: all(gone(pid) for pid in workers), 15, "the workers to exit")


def test_a_worker_crash_costs_one_error_row_and_few_pool_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests import crashing_worker

    monkeypatch.setattr(recognize, "prepare_files", crashing_worker.prepare_files)
    pools: list[object] = []
    real_new_pool = recognize.new_pool

    def counting_new_pool(workers: int) -> recognize.ProcessPoolExecutor:
        pools.append(workers)
        return real_new_pool(workers)

    monkeypatch.setattr(recognize, "new_pool", counting_new_pool)
    digits, _ = mnist_test_digits()
    items = []
    for i in range(40):
        name = "crash.png" if i == 5 else f"{i:02d}.png"
        Image.fromarray(digits[i]).save(tmp_path / name)
        items.append((tmp_path / name, name))

    with recognize.Reader(workers=2, batch_size=8) as reader:
        rows = reader.read(items)

    assert [r.file for r in rows] == [name for _, name in items]
    failed = [r for r in rows if r.status is Status.ERROR]
    crashed = [("crash.png", "the decoder crashed on this file")]
    assert [(r.file, r.error) for r in failed] == crashed
    # The first pool, one replacement after the crash, one after the crashing file's retry.
    assert len(pools) <= 3


def test_a_pool_broken_before_a_chunk_is_handed_to_it_costs_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_new_pool = recognize.new_pool
    refused: list[int] = []

    class BrokenOnce:
        """A pool that refuses its first task, as one does once a worker has died."""

        def __init__(self, workers: int) -> None:
            self.pool = real_new_pool(workers)

        def submit(self, fn, *args):  # type: ignore[no-untyped-def]
            if not refused:
                refused.append(1)
                raise BrokenProcessPool("a worker died")
            return self.pool.submit(fn, *args)

        def shutdown(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
            self.pool.shutdown(**kwargs)

    monkeypatch.setattr(recognize, "new_pool", BrokenOnce)
    digits, labels = mnist_test_digits()
    items = []
    for i in range(20):
        Image.fromarray(digits[i]).save(tmp_path / f"{i:02d}.png")
        items.append((tmp_path / f"{i:02d}.png", f"{i:02d}.png"))
    with recognize.Reader(workers=2, batch_size=8) as reader:
        rows = reader.read(items)
    assert refused == [1]
    assert [r.file for r in rows] == [name for _, name in items]
    assert not [r for r in rows if r.status is Status.ERROR]
    assert sum(r.digits == str(label) for r, label in zip(rows, labels, strict=False)) >= 19


def test_a_known_batch_ends_in_single_files_so_the_workers_finish_it_together():
    items = [(Path(f"{i}.png"), f"{i}.png") for i in range(11)]
    sizes = [len(chunk) for chunk in recognize.chunked(items, 4, tail=4)]
    assert sum(sizes) == 11 and max(sizes) == 4 and sizes[-4:] == [1, 1, 1, 1]
    streamed = [len(chunk) for chunk in recognize.chunked(iter(items), 4, tail=4)]
    assert streamed == [4, 4, 3]  # a stream's end is unknown: chunks as they come
