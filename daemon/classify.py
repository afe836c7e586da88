"""`digit-inbox classify PATH...`: read the digit in each image file, one CSV row per file.

Rows stream out as batches finish, so a folder of 10,000 scans shows progress at once. With
`--output` the CSV is written to a temporary file beside it and renamed at the end: a reader of
that file never sees half a report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

from digit_inbox.daemon import rows
from digit_inbox.daemon.decode import DEFAULT_MAX_PIXELS, EXTENSIONS
from digit_inbox.daemon.errors import ExitCode, UsageError
from digit_inbox.daemon.health import counts_text, plural
from digit_inbox.daemon.recognize import Reader
from digit_inbox.daemon.rows import Status

log = logging.getLogger(__name__)


def main(
    paths: Sequence[Path],
    *,
    output: Path | None = None,
    model: Path | None = None,
    min_confidence: float = 0.6,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    debug_dir: Path | None = None,
    workers: int | None = None,
) -> int:
    """Classify files and folders; exit 0 when every file was read, 1 when any was an error."""
    check_options(min_confidence, max_pixels, workers)
    items = collect(paths)
    if not items:
        log.warning("no image files found in %s", ", ".join(map(str, paths)))
    start = time.perf_counter()
    counts: Counter[Status] = Counter()
    with Reader(
        model,
        min_confidence=min_confidence,
        max_pixels=max_pixels,
        workers=workers,
        debug_dir=debug_dir,
    ) as reader, open_output(output) as out:  # fmt: skip
        out.write(rows.header_line())
        for row in reader.iter_read(items):
            out.write(rows.format_rows([row]))
            out.flush()
            counts[row.status] += 1
    seconds = time.perf_counter() - start
    by_status = {status.value: n for status, n in counts.items()}
    log.info("%s in %.1f s: %s", plural(len(items), "file"), seconds, counts_text(by_status))
    return int(ExitCode.FILES_FAILED if counts[Status.ERROR] else ExitCode.OK)


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
