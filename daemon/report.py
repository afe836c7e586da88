"""Daily CSV reports: `reports/YYYY-MM-DD.csv`, appended one batch at a time, never torn.

A report is only ever appended to, under an exclusive `flock` (two daemons may share a reports
folder), and each append is fsynced before the journal moves on. A crash mid-append can leave a
torn last line; the next writer cuts it back to the last complete line before appending, so a
spreadsheet never sees half a row and the journal's recovery finds every line whole or absent.
The header is written once, when the file is empty. Lines come from `rows.format_rows`, so the
columns and their formula neutralisation are the same as `digit-inbox classify`.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import logging
import os
from collections.abc import Iterable
from datetime import date
from pathlib import Path

from digit_inbox.daemon import rows

log = logging.getLogger(__name__)

ENCODING = "utf-8"
# Optional first bytes of a new report (filing.report_bom): Excel then reads it as UTF-8.
BOM = "\ufeff".encode(ENCODING)
# How far back to look for the last complete line when cutting a torn one.
CHUNK = 64 * 1024


def path_for(reports: Path, day: date) -> Path:
    return reports / f"{day.isoformat()}.csv"


def encode_line(row: rows.Row) -> bytes:
    """One row as the exact bytes appended; bytes of a name that are not UTF-8 show as \\xNN."""
    text = rows.format_rows([row])
    try:
        raw = text.encode(ENCODING, "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return text.encode(ENCODING, "backslashreplace")
    return raw.decode(ENCODING, "backslashreplace").encode(ENCODING)


def header() -> bytes:
    return rows.header_line().encode(ENCODING)


def line_cells(line: bytes) -> dict[str, str]:
    """A report line's cells by column name, as a person reads them (no formula guard)."""
    text = line.decode(ENCODING, "replace")
    cells = next(csv.reader(io.StringIO(text)), [])
    return {name: rows.unneutralise(cell) for name, cell in zip(rows.COLUMNS, cells, strict=False)}


def replace_cell(line: bytes, column: str, value: str) -> bytes:
    """`line` with one column's cell replaced; the other cells stay byte for byte the same."""
    cells = next(csv.reader(io.StringIO(line.decode(ENCODING, "surrogateescape"))))
    cells[rows.COLUMNS.index(column)] = rows.neutralise(value)
    buffer = io.StringIO()
    rows.writer(buffer).writerow(cells)
    return buffer.getvalue().encode(ENCODING, "surrogateescape")


class Report:
    """One report file, opened for appending and locked exclusively until closed.

    On open a torn last line is cut, so `size` is where the next line will start.
    """

    def __init__(self, path: Path, *, bom: bool = False, wait: bool = True) -> None:
        """`wait=False` raises BlockingIOError at once when another writer holds the lock."""
        self.path = path
        self.bom = bom
        created = not path.exists()
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags, 0o666)
        except FileNotFoundError:  # someone removed the reports folder: make it again
            path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(path, flags, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            if created:
                fsync_dir(path.parent)
            self.size = self._cut_torn_line()
        except BaseException:
            os.close(self.fd)
            raise

    def __enter__(self) -> Report:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # also releases the lock
            self.fd = -1

    def _cut_torn_line(self) -> int:
        size = os.fstat(self.fd).st_size
        if size == 0 or os.pread(self.fd, 1, size - 1) == b"\n":
            return size
        end = size
        while end > 0:
            start = max(0, end - CHUNK)
            chunk = os.pread(self.fd, end - start, start)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                end = start + newline + 1
                break
            end = start
        log.warning(
            "%s: cut a torn last line (%d bytes) left by an interrupted write",
            self.path,
            size - end,
        )
        os.ftruncate(self.fd, end)
        os.fsync(self.fd)
        return end

    def missing(self, lines: Iterable[bytes], since: int) -> list[bytes]:
        """The lines not already in the report at or after byte `since` (for recovery)."""
        lines = list(lines)
        if not lines:
            return []
        present = set(self.read_from(since).splitlines(keepends=True))
        return [line for line in lines if line not in present]

    def read_from(self, offset: int) -> bytes:
        offset = min(max(offset, 0), self.size)
        chunks = []
        while offset < self.size:
            chunk = os.pread(self.fd, min(CHUNK * 16, self.size - offset), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def append(self, lines: Iterable[bytes]) -> None:
        """Append the lines (and the header, after the BOM if asked for, first if the file is
        empty), then fsync."""
        data = b"".join(lines)
        if not data:
            return
        if self.size == 0:
            data = (BOM if self.bom else b"") + header() + data
        self._write(data)

    def start(self) -> None:
        """Write the header to an empty report, so even a report of no rows has its columns."""
        if self.size == 0:
            self._write((BOM if self.bom else b"") + header())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        os.fsync(self.fd)
        self.size += len(data)


def fsync_dir(folder: Path) -> None:
    """Make a new or removed name in `folder` durable (not just the file's bytes)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            return  # some filesystems refuse; the data is still written
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):  # fsync on a folder is unsupported
            raise
    finally:
        os.close(fd)
