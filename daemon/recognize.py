"""Read many scans: decode and preprocess in worker processes, classify in batches here.

Decoding and preprocessing are pure CPU work per file, so they spread over worker processes;
the ONNX model runs here, once per batch of images, where batching makes it cheap. The pool is
started once with `forkserver` (or `spawn`), never `fork`: the daemon has watchdog threads, and
forking a threaded process can deadlock the child. Workers never import onnxruntime.

`prepare_file` does one file without any pool (for the daemon's single files and for tests).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import re
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from digit_inbox.daemon import decode, preprocess, reading
from digit_inbox.daemon.contract import DEFAULT_MIN_CONFIDENCE
from digit_inbox.daemon.rows import Row, Status

if TYPE_CHECKING:
    from digit_inbox.daemon.classifier import Classifier

log = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 1.0
FILES_PER_TASK = 4  # fewer round trips to the workers, still fine-grained enough to balance
# Images per onnxruntime call, at most: large enough to cost ~0.1 ms an image, small enough
# that the model reads the first files of a batch while the workers still decode the rest.
INFERENCE_BATCH = 16


@dataclass
class Prepared:
    """What a worker sends back for one file: small and picklable (no page pixels, unless a
    debug strip is wanted: it is drawn here, once the model has read the digits)."""

    images: np.ndarray  # (k, 28, 28) float32 for the model; k = 0 for blank and error
    status: Status | None = None  # BLANK or ERROR; None until the model has spoken
    note: str = ""
    error: str = ""
    width: int | None = None
    height: int | None = None
    sha256: str = ""
    ms: float = 0.0
    slots: list[tuple[tuple[int, ...], ...]] = field(default_factory=list)  # see preprocess
    lines: list[int] = field(default_factory=list)
    shapes: list[float] = field(default_factory=list)  # width / height of each image's ink
    slashes: list[int] = field(default_factory=list)  # slots that may be a `/-`'s slash
    crop: bool = False  # a crop of one digit: read as a one-digit field
    column: bool = False  # read as one digit, but maybe a column of digits (see preprocess)
    debug: preprocess.Prepared | None = None  # with the debug steps, for the strip
    debug_path: Path | None = None
    other: Prepared | None = None  # the page read the other way round (see preprocess.prepare)


def prepare_file(
    path: Path,
    max_pixels: int = decode.DEFAULT_MAX_PIXELS,
    debug_path: Path | None = None,
    max_pages: int = decode.DEFAULT_MAX_PAGES,
) -> Prepared:
    """Decode and preprocess one file. Never raises for a bad file: it says why instead."""
    start = time.perf_counter()
    try:
        decoded = decode.decode(path, max_pixels, max_pages)
        prepared = preprocess.prepare(decoded.image, debug=debug_path is not None)
    except decode.DecodeError as exc:
        return failed(exc.reason, start)
    except MemoryError:
        return failed("not enough memory", start)
    except Exception as exc:  # a bug: one file must not stop the others
        log.exception("%s: preprocessing failed", path)
        return failed(
            f"internal error ({type(exc).__name__}: {decode.one_line(exc)}); please report", start
        )
    return of_page(decoded, prepared, debug_path, start)


def of_page(
    decoded: decode.Decoded,
    prepared: preprocess.Prepared,
    debug_path: Path | None,
    start: float,
) -> Prepared:
    notes = [n for n in (decoded.note, prepared.blank_reason) if n]
    return Prepared(
        prepared.images,
        None if len(prepared.slots) else Status.BLANK,
        note="; ".join(notes),
        width=decoded.width,
        height=decoded.height,
        sha256=decoded.sha256,
        ms=elapsed_ms(start),
        slots=prepared.slots,
        lines=prepared.lines,
        shapes=prepared.shapes,
        slashes=prepared.slashes,
        crop=prepared.crop,
        column=prepared.column,
        debug=prepared if debug_path is not None else None,
        debug_path=debug_path,
        other=None
        if prepared.other is None
        else of_page(decoded, prepared.other, debug_path, start),
    )


def failed(reason: str, start: float) -> Prepared:
    return Prepared(preprocess.NO_IMAGES, Status.ERROR, error=reason, ms=elapsed_ms(start))


Job = tuple[Path, int, Path | None, int]  # prepare_file's arguments


def prepare_files(jobs: Sequence[Job]) -> list[Prepared]:
    """A worker's task: a few files in one round trip."""
    return [prepare_file(*job) for job in jobs]


def submitted(pool: ProcessPoolExecutor, jobs: list[Job]) -> Future[list[Prepared]]:
    """`prepare_files(jobs)` on `pool`; a pool a worker died in since its last result was read
    refuses new work at once: that comes back as the future's error, handled as any crash."""
    try:
        return pool.submit(prepare_files, jobs)
    except BrokenProcessPool as exc:
        future: Future[list[Prepared]] = Future()
        future.set_exception(exc)
        return future


def elapsed_ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def write_strip(
    path: Path, page: preprocess.Prepared, images: np.ndarray, row: Row, found: reading.Read | None
) -> None:
    """The debug strip of a page with the digits the row was read from (`found`: indices into
    `images`, the page's images with any cut after the model read them)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        digits = []
        if found is not None:
            for k, (i, p) in enumerate(zip(found.images, found.probs, strict=True)):
                digits.append((images[i], f"{k + 1}: {int(p.argmax())} {p.max():.2f}"))
        picture = preprocess.strip(page.steps, result(row), page.marks, digits)
        Image.fromarray(picture).save(path)
    except OSError as exc:
        log.warning("cannot write the debug strip %s: %s", path, exc)


def result(row: Row) -> str:
    """The row's reading in one line, for the debug strip's caption."""
    if row.status is Status.ERROR:
        return f"error: {row.error}"
    if row.status is Status.BLANK:
        return f"blank: {row.note}"
    parts = [f"{row.status}"]
    if row.digits:
        parts += [
            f"{row.digits} ({row.confidence or 0:.3f})",
            f"runner-up {row.runner_up} ({row.runner_up_confidence or 0:.3f})",
        ]
    if row.note:
        parts.append(row.note)
    return "; ".join(parts)


def debug_name(name: str) -> str:
    """A flat, safe, readable file name for the debug strip of the file called `name`:
    `scans/sub/7.jpg` -> `scans__sub__7_jpg.png` (one extension, the folders kept)."""
    parts = [p for p in name.replace(os.sep, "/").split("/") if p not in ("", ".")]
    parts = ["up" if p == ".." else p for p in parts] or ["file"]
    stem, dot, ext = parts[-1].rpartition(".")
    parts[-1] = f"{stem}_{ext}" if dot and stem else parts[-1]
    flat = re.sub(r"[^A-Za-z0-9._-]", "_", "__".join(parts)).lstrip(".")
    if len(flat) > 200:  # file systems stop at 255 bytes; keep it unique with a hash
        flat = flat[:180] + "_" + hashlib.sha256(name.encode(errors="replace")).hexdigest()[:12]
    return flat + ".png"


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name-2.png`, `name-3.png`... when a strip of another file already has it."""
    stem, number, candidate = name.removesuffix(".png"), 1, name
    while candidate in taken:
        number += 1
        candidate = f"{stem}-{number}.png"
    taken.add(candidate)
    return candidate


def is_document(path: Path) -> bool:
    """Whether the file holds a PDF or HEIC, whatever its name (decoding goes by content),
    whose parsers (PDFium, libheif) are large C/C++ libraries: such files are always read in a
    worker process, so a crash in one costs a worker and an error row, never the daemon."""
    head = decode.read_head(path)
    return decode.is_pdf(head) or decode.is_heif(head)


def new_pool(workers: int) -> ProcessPoolExecutor:
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    return ProcessPoolExecutor(
        workers, mp_context=context, initializer=follow_parent, initargs=(os.getpid(),)
    )


def follow_parent(parent: int) -> None:
    """Make this worker exit when the process that started the pool is gone, even killed with
    SIGKILL: an idle worker would otherwise wait for work forever (and keep the forkserver)."""

    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_SECONDS)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(0)
            except OSError:
                pass  # alive, owned by someone else

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


class Reader:
    """Decode+preprocess in worker processes (use both cores), classify in batches here."""

    def __init__(
        self,
        model: Path | None = None,
        *,
        min_confidence: float = DEFAULT_MIN_CONFIDENCE,
        max_pixels: int = decode.DEFAULT_MAX_PIXELS,
        max_pages: int = decode.DEFAULT_MAX_PAGES,
        workers: int | None = None,
        batch_size: int = 64,
        debug_dir: Path | None = None,
        digits: tuple[int, int] | None = None,
    ) -> None:
        from digit_inbox.daemon.classifier import Classifier  # not in the workers

        # One inference thread: the workers already keep the other cores busy.
        self.classifier: Classifier = Classifier(model, threads=1)
        self.model_id: str = self.classifier.model_id
        self.min_confidence = min_confidence
        self.max_pixels = max_pixels
        self.max_pages = max_pages
        self.workers = (os.cpu_count() or 1) if workers is None else max(0, workers)
        self.batch_size = max(1, batch_size)
        self.debug_dir = debug_dir
        self.digits = digits  # how many digits a reading must have (min, max); None: any
        self._strips: dict[str, str] = {}  # file name -> its strip's name, unique in debug_dir
        self._strip_names: set[str] = set()
        self._pool: ProcessPoolExecutor | None = None

    def read(self, items: Sequence[tuple[Path, str]]) -> list[Row]:
        """One Row per (path on disk, name for the `file` column), in input order. Never raises
        for a bad file (error row instead)."""
        return list(self.iter_read(items))

    def iter_read(self, items: Iterable[tuple[Path, str]]) -> Iterator[Row]:
        """Like `read`, yielding rows batch by batch as they are done; memory stays flat."""
        batch: list[tuple[str, Prepared]] = []
        for name, prepared in self._prepare_all(items):
            batch.append((name, prepared))
            if len(batch) >= min(self.batch_size, INFERENCE_BATCH):
                yield from self._classify(batch)
                batch = []
        if batch:
            yield from self._classify(batch)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------

    def _job(self, path: Path, name: str) -> Job:
        debug = None
        if self.debug_dir is not None:
            if name not in self._strips:
                self._strips[name] = unique_name(debug_name(name), self._strip_names)
            debug = self.debug_dir / self._strips[name]
        return path, self.max_pixels, debug, self.max_pages

    def _prepare_all(self, items: Iterable[tuple[Path, str]]) -> Iterator[tuple[str, Prepared]]:
        few = isinstance(items, Sequence) and len(items) < 2 * FILES_PER_TASK
        # A pool costs ~1 s to start: one worker or a few files are read here, unless a PDF or
        # HEIC is among them (workers=0 reads everything here). Heads are read only then.
        if self.workers == 0 or (
            (self.workers == 1 or (few and self._pool is None))
            and not (isinstance(items, Sequence) and any(is_document(p) for p, _ in items))
        ):
            for path, name in items:
                yield name, prepare_file(*self._job(path, name))
            return
        window = max(2 * self.batch_size, 8 * self.workers) // FILES_PER_TASK + 1
        pending: deque[
            tuple[list[tuple[Path, str]], Future[list[Prepared]], ProcessPoolExecutor]
        ] = deque()
        # A known batch ends in single files: both workers finish it together, instead of one
        # idling while the other reads a last chunk (the daemon reads batch by batch).
        chunks = chunked(items, FILES_PER_TASK, tail=2 * self.workers)
        while True:
            while len(pending) < window:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                pool = self._running_pool()
                jobs = [self._job(p, n) for p, n in chunk]
                pending.append((chunk, submitted(pool, jobs), pool))
            if not pending:
                return
            chunk, future, pool = pending.popleft()
            prepared = self._result(chunk, future, pool)
            yield from zip([name for _, name in chunk], prepared, strict=True)

    def _running_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = new_pool(self.workers)
        return self._pool

    def _result(
        self,
        chunk: list[tuple[Path, str]],
        future: Future[list[Prepared]],
        pool: ProcessPoolExecutor,
    ) -> list[Prepared]:
        try:
            return future.result()
        except (BrokenProcessPool, CancelledError):
            # A worker died (a decoder crashed, or the OOM killer), failing every chunk queued
            # on its pool (or cancelling it, when the pool was replaced first): replace that
            # pool once, then retry these files one by one, so only a file that kills a worker
            # again gets an error row.
            log.warning("a worker process died; retrying its files one by one")
            if pool is self._pool:
                self._restart_pool()
            return [self._retry(path, name) for path, name in chunk]

    def _retry(self, path: Path, name: str) -> Prepared:
        try:
            return self._running_pool().submit(prepare_files, [self._job(path, name)]).result()[0]
        except BrokenProcessPool:
            self._restart_pool()
            return failed("the decoder crashed on this file", time.perf_counter())

    def _restart_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = new_pool(self.workers)

    def _classify(self, batch: list[tuple[str, Prepared]]) -> list[Row]:
        """All the candidate images of the batch in one model call, then each file's string."""
        start = time.perf_counter()
        pages = [[p] if p.other is None else [p, p.other] for _, p in batch]
        images = [p.images for both in pages for p in both if len(p.images)]
        probs = self.classifier.predict(np.concatenate(images)) if images else np.zeros((0, 10))
        share = elapsed_ms(start) / max(len(probs), 1)
        rows, k = [], 0
        for (name, _), both in zip(batch, pages, strict=True):
            found = []
            for p in both:
                n = len(p.images)  # before any cut is added
                found.append(self._read(p, self._recut(p, probs[k : k + n])))
                k += n
            best = reading.surest(found)
            prepared = both[best]
            row = self._row(name, prepared, found[best], share * sum(len(p.images) for p in both))
            if len(both) > 1:
                reading.both_ways(row, found[1 - best], self.min_confidence)
            if prepared.debug is not None and prepared.debug_path is not None:
                write_strip(prepared.debug_path, prepared.debug, prepared.images, row, found[best])
            rows.append(row)
        return rows

    def _expected(self, p: Prepared) -> tuple[int, int] | None:
        # A crop of one digit is read as a one-digit field: a wide mark there is a wide digit.
        return (1, 1) if p.crop and self.digits is None else self.digits

    def _recut(self, p: Prepared, probs: np.ndarray) -> np.ndarray:
        """Offer cut, and read, the marks the model reads as not one digit that preprocessing
        offered whole only (see reading.not_one_digit); `p` gains their pieces. Rare: one more
        model call for the page."""
        expected = self._expected(p)
        if p.status is not None or (expected is not None and expected[1] <= len(p.slots)):
            return probs
        todo = reading.not_one_digit(probs, p.slots)
        if not todo:  # nearly every page: nothing copied
            return probs
        images, shapes, slots = [*p.images], [*p.shapes], [*p.slots]
        for k in todo:
            for pieces, aspects in preprocess.cuts_of(p.images[slots[k][0][0]]):
                slots[k] += (tuple(range(len(images), len(images) + len(pieces))),)
                images += pieces
                shapes += aspects
        if len(images) == len(p.images):
            return probs
        extra = self.classifier.predict(np.stack(images[len(p.images) :]))
        p.images, p.shapes, p.slots = np.stack(images), shapes, slots
        return np.concatenate([probs, extra])

    def _read(self, p: Prepared, probs: np.ndarray) -> reading.Read | None:
        """The number on a page with marks, read once for its row and its debug strip."""
        if p.status is not None or not p.slots:
            return None
        expected = self._expected(p)
        return reading.read(probs, p.slots, p.lines, p.shapes, expected, p.slashes, p.column)

    def _row(self, name: str, p: Prepared, found: reading.Read | None, ms: float) -> Row:
        row = Row(
            file=name,
            status=p.status or Status.OK,
            note=p.note,
            error=p.error,
            width=p.width,
            height=p.height,
            sha256=p.sha256,
            model=self.model_id,
            ms=p.ms + ms,
        )
        if found is not None:
            reading.fill(row, found, self.min_confidence, self.digits)
        return row


def chunked(
    items: Iterable[tuple[Path, str]], size: int, tail: int = 0
) -> Iterator[list[tuple[Path, str]]]:
    """Chunks of `size` items; the last `tail` items (of a sequence) one by one."""
    singles = len(items) - tail if tail and isinstance(items, Sequence) else None
    chunk: list[tuple[Path, str]] = []
    for i, item in enumerate(items):
        if chunk and singles is not None and i >= singles:
            yield chunk
            chunk = []
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
