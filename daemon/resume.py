"""`classify --output FILE --resume`: the CSV itself is the record of what is done.

A file is done when FILE has a row with its `file` name and, when that row has a sha256, the
file's bytes still hash to it. The sha256 is in every row already, so no second file can drift
from the CSV, and it survives copies and restores that change mtimes; checking it costs reading
each done file once (hashing is a small fraction of reading a scan). A file changed since its
row was written is read again, and its new, later row is the current one; one that cannot be
opened any more keeps its row. A row without a sha256 (a file that could not be read at all)
counts as done: delete such rows to retry them.

Rows are appended through `report.Report`, the daemon's report writer: an exclusive lock (one
run per FILE), a torn last line from a killed run cut on open, the header written once, and an
fsync at least every FLUSH_SECONDS, so a kill loses at most the last second of rows (they are
read again on resume) and never leaves half a row behind.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from digit_inbox.daemon import report, rows
from digit_inbox.daemon.errors import UsageError

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
FLUSH_ROWS = 256


def file_cell(name: str) -> str:
    """`name` as its `file` cell reads back from the CSV (escaped, neutralised)."""
    line = report.encode_line(rows.Row(file=name, status=rows.Status.OK))
    return next(csv.reader(io.StringIO(line.decode(report.ENCODING))))[rows.COLUMNS.index("file")]


def sha256_of(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return ""


class Appender:
    """FILE opened for resuming: what it already holds, and durable appends of new rows."""

    def __init__(self, path: Path) -> None:
        try:
            self.report = report.Report(path, wait=False)  # fail at once, rather than wait
        except BlockingIOError:
            raise UsageError(
                f"{path} is being appended to by another run; wait for it to end or give "
                "another --output"
            ) from None
        except OSError as exc:
            raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
        try:
            self.done = self._read_done()
        except BaseException:
            self.report.close()
            raise
        self.pending: list[bytes] = []
        self.flushed_at = time.monotonic()

    def _read_done(self) -> dict[str, str]:
        """{file cell: sha256} of the rows already in FILE."""
        text = self.report.read_from(0).decode(report.ENCODING, "surrogateescape")
        if not text:
            return {}
        if not text.startswith(rows.header_line()):
            raise UsageError(
                f"{self.report.path}: not a CSV written by this version of `digit-inbox "
                "classify` (its header differs); give another --output to resume into"
            )
        return {r["file"]: r["sha256"] for r in csv.DictReader(io.StringIO(text))}

    def still_to_read(self, items: Sequence[tuple[Path, str]]) -> list[tuple[Path, str]]:
        """The items FILE has no current row for."""
        if not self.done:
            return list(items)
        todo = []
        for path, name in items:
            cell = file_cell(name)
            if cell not in self.done:
                todo.append((path, name))
            elif self.done[cell] and sha256_of(path) not in ("", self.done[cell]):
                log.warning("%s changed since its row was written: reading it again", name)
                todo.append((path, name))
        return todo

    def write(self, row: rows.Row) -> None:
        self.pending.append(report.encode_line(row))
        if len(self.pending) >= FLUSH_ROWS or time.monotonic() - self.flushed_at > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        self.report.append(self.pending)
        self.pending = []
        self.flushed_at = time.monotonic()

    def close(self) -> None:
        try:
            self.flush()
            self.report.start()
        finally:
            self.report.close()
