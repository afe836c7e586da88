"""`digit-inbox classify PATH...`: read the number in each image file, one CSV row per file.

Rows stream out as batches finish, so a folder of 10,000 scans shows progress at once. With
`--output` the CSV is written to a temporary file beside it and renamed at the end: a reader of
that file never sees half a report. With `--output FILE --resume` rows are appended to FILE as
they finish and the files it already has rows for are skipped (see resume.py): a run of a
million files can be stopped and started again. `--scheduler` reads on a Dask cluster
(cluster.py) instead of this machine's worker processes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol

from digit_inbox.daemon import reading, rows
from digit_inbox.daemon.contract import DEFAULT_MIN_CONFIDENCE
from digit_inbox.daemon.decode import DEFAULT_MAX_PIXELS, EXTENSIONS
from digit_inbox.daemon.errors import ExitCode, UsageError
from digit_inbox.daemon.progress import Progress
from digit_inbox.daemon.recognize import Reader
from digit_inbox.daemon.resume import Appender
from digit_inbox.daemon.rows import Row, Status

log = logging.getLogger(__name__)


def main(
    paths: Sequence[Path],
    *,
    output: Path | None = None,
    model: Path | None = None,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    debug_dir: Path | None = None,
    workers: int | None = None,
    resume: bool = False,
    scheduler: str | None = None,
    digits: str = "auto",
) -> int:
    """Classify files and folders; exit 0 when every file was read, 1 when any was an error."""
    check_options(min_confidence, max_pixels, workers)
    check_bulk_options(output, resume, scheduler, workers)
    try:
        expected = reading.parse_expected(digits)
    except ValueError as exc:
        raise UsageError(f"--digits {exc}") from None
    items = collect(paths)
    if not items:
        log.warning("no image files found in %s", ", ".join(map(str, paths)))
    with open_reader(
        scheduler,
        workers,
        model=model,
        min_confidence=min_confidence,
        max_pixels=max_pixels,
        debug_dir=debug_dir,
        digits=expected,
    ) as read, open_sink(output, resume) as sink:  # fmt: skip
        todo = sink.still_to_read(items)
        progress = Progress(len(todo))
        try:
            for row in read(todo):
                sink.write(row)
                progress.update(row.status)
        finally:  # interrupted too: what was done (with --resume, the next run goes on)
            progress.close()
            log.info("%s", progress.summary(skipped=len(items) - len(todo)))
    return int(ExitCode.FILES_FAILED if progress.counts[Status.ERROR] else ExitCode.OK)


def check_bulk_options(
    output: Path | None, resume: bool, scheduler: str | None, workers: int | None
) -> None:
    if resume and output is None:
        raise UsageError("--resume needs --output FILE: the rows already in FILE are skipped")
    if scheduler is not None and workers is not None:
        raise UsageError("--workers is for this machine; with --scheduler the Dask workers read")


ReadRows = Callable[[Sequence[tuple[Path, str]]], Iterator[Row]]


@contextlib.contextmanager
def open_reader(
    scheduler: str | None,
    workers: int | None,
    *,
    model: Path | None,
    min_confidence: float,
    max_pixels: int,
    debug_dir: Path | None,
    digits: tuple[int, int] | None,
) -> Iterator[ReadRows]:
    """How rows are read: worker processes here, or a Dask cluster's workers."""
    if scheduler is None:
        with Reader(
            model,
            min_confidence=min_confidence,
            max_pixels=max_pixels,
            workers=workers,
            debug_dir=debug_dir,
            digits=digits,
        ) as reader:
            yield reader.iter_read
        return
    from digit_inbox.daemon import cluster

    options = cluster.Options(
        model=str(model.absolute()) if model else None,
        min_confidence=min_confidence,
        max_pixels=max_pixels,
        debug_dir=str(debug_dir.absolute()) if debug_dir else None,
        digits=digits,
    )
    with cluster.connect(scheduler) as client:
        yield functools.partial(cluster.read, client, options=options)


class Sink(Protocol):
    def still_to_read(self, items: Sequence[tuple[Path, str]]) -> list[tuple[Path, str]]: ...
    def write(self, row: Row) -> None: ...


@dataclasses.dataclass
class Stream:
    """Rows as CSV text on a stream, each flushed as it comes; every item is to read."""

    out: IO[str]

    def still_to_read(self, items: Sequence[tuple[Path, str]]) -> list[tuple[Path, str]]:
        return list(items)

    def write(self, row: Row) -> None:
        self.out.write(rows.format_rows([row]))
        self.out.flush()


@contextlib.contextmanager
def open_sink(output: Path | None, resume: bool) -> Iterator[Sink]:
    """Where rows go: appended durably to `output` with --resume, else as `open_output` says."""
    if resume:
        assert output is not None
        appender = Appender(output)
        try:
            yield appender
        finally:
            appender.close()
        return
    with open_output(output) as out:
        out.write(rows.header_line())
        yield Stream(out)


def check_options(min_confidence: float, max_pixels: int, workers: int | None) -> None:
    problems = []
    if not 0 <= min_confidence <= 1:
        problems.append(f"--min-confidence must be between 0 and 1, not {min_confidence}")
    if max_pixels < 1:
        problems.append(f"--max-pixels must be positive, not {max_pixels}")
    if workers is not None and workers < 0:
        problems.append(f"--workers must be 0 or more, not {workers}")
    if problems:
        raise UsageError("; ".join(problems))


def collect(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """(path, name for the `file` column) for every file to read, in a stable order.

    A file named on the command line is always tried, whatever its name; inside folders only
    image extensions count, dotfiles and dot-folders are skipped. Each `file` is the path as
    given (a folder's files under the folder as typed), so two folders holding `scan.png` give
    two different rows; a file reached twice is read once.
    """
    missing = [str(p) for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(missing)}")
    items: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            for name in images_in(path):
                items.setdefault((path / name).as_posix(), path / name)
        else:
            items.setdefault(str(path), path)
    return [(path, name) for name, path in items.items()]


def images_in(folder: Path) -> list[str]:
    """Image files under folder, recursively, as sorted POSIX paths relative to it."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(root).relative_to(folder)
        for name in files:
            if not name.startswith(".") and Path(name).suffix.lower() in EXTENSIONS:
                found.append((base / name).as_posix())
    return sorted(found)


@contextlib.contextmanager
def open_output(output: Path | None) -> Iterator[IO[str]]:
    """stdout, or a temporary file beside `output` that replaces it only when all went well."""
    if output is None:
        yield sys.stdout
        return
    folder = output.parent if str(output.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            yield f
        os.chmod(tmp, 0o666 & ~current_umask())
        try:
            os.replace(tmp, output)
        except OSError as exc:
            raise UsageError(f"cannot write {output}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
