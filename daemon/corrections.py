"""`digit-inbox correct`: a person's decision about one file, filed exactly once, and kept for
learning.

A decision is filed by the daemon's own steps (`service.Daemon`: journal, claim, decide, place,
report under its lock, release; see journal.py), on a journal of its own,
`corrections.sqlite3` in the state folder. Its claims carry their own tag, so a running daemon
leaves them alone, and a lock file keeps two correcting processes (the command and the review
page) from finishing each other's work. In order, each step durable before the next:

    sample     the decision (row, label, the 28x28 inputs of its digits) under a new claim id
    CLAIMED    journal; then the file is renamed from review/ or the outbox into processing/
    decide     its destination for that reading (the daemon's rules) and its CSV line
    CLASSIFIED journal; place, append the `corrected` row, release, DONE

A sample counts once its claim reached CLASSIFIED (the journal keeps its record afterwards), so a
decision killed before that is neither a row nor a sample. Every correction first finishes what
a killed one left; rerunning the same command after a crash finds the file already filed and
says so, so the result is one row and one file.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from digit_inbox.daemon import config, filing, preprocess, report, rows
from digit_inbox.daemon.errors import ExitCode, UsageError
from digit_inbox.daemon.journal import Entry, Journal, State
from digit_inbox.daemon.notify import Notifier
from digit_inbox.daemon.rows import Row, Status
from digit_inbox.daemon.service import Daemon, Work, describe

log = logging.getLogger(__name__)

NOT_A_NUMBER = "none"
NOT_A_NUMBER_REASON = "not a number (a person's decision)"
# The note of a decision taken back (the review page's undo): the file returns to review/.
UNDO_NOTE = "undo: back to review"

SAMPLES = """
CREATE TABLE IF NOT EXISTS samples (
    claim_id TEXT PRIMARY KEY,
    time REAL NOT NULL,
    sha256 TEXT NOT NULL,
    file TEXT NOT NULL,
    label TEXT NOT NULL,          -- the person's digits; '' for "not a number"
    kind TEXT NOT NULL,           -- 'corrected' or 'confirmed'
    model_reading TEXT NOT NULL,  -- what the model had read ('' if unknown)
    confidence REAL,
    model TEXT NOT NULL,
    image BLOB,                   -- the model's 28x28 float32 inputs, one per digit; NULL if
                                  -- the marks found are not the digits read
    row TEXT NOT NULL             -- the planned report row (JSON), to finish a killed decision
);
"""


@dataclass(frozen=True)
class Sample:
    """One recorded decision, as learning sees it."""

    time: float
    sha256: str
    label: str
    kind: str
    model_reading: str
    confidence: float | None
    images: np.ndarray | None  # [digits, 28, 28], one per digit of `label`


def parse_digits(text: str) -> str:
    """The digits a person typed: a digit string, or '' for "not a number" (`none`)."""
    text = text.strip()
    if text.lower() == NOT_A_NUMBER:
        return ""
    if not re.fullmatch(r"[0-9]{1,64}", text):
        raise UsageError(
            f"DIGITS must be the digits read (for example 7 or 42), or '{NOT_A_NUMBER}' for a "
            f"scan that shows no number; got {text!r}"
        )
    return text


def database(cfg: config.Config) -> Path:
    return cfg.paths.state / "corrections.sqlite3"


class Corrector(Daemon):
    """The daemon's filing steps, run for one person's decision at a time."""

    def __init__(self, cfg: config.Config) -> None:
        super().__init__(cfg)
        # Not the daemon's tag, so a daemon leaves these claims be; fresh per process, so claim
        # ids never repeat in this journal (a pid is reused, the journal keeps every id).
        self.tag = "c" + secrets.token_hex(6)
        self.names = filing.ClaimNames(self.tag)
        self.notifier = Notifier(None, None)
        self.undoing = False  # an undo may take a file back from failed/
        config.make_folders(cfg)
        self.lock_fd = os.open(
            cfg.paths.state / "corrections.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        self.journal = Journal(database(cfg))
        self.journal.db.executescript(SAMPLES)

    def close(self) -> None:
        self.journal.close()
        os.close(self.lock_fd)

    def __enter__(self) -> Corrector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- The recipe.

    def correct(self, file: str, digits: str) -> Row:
        """File `file` (a path, or its name in the report) as read `digits` ('' = not a number);
        the row written, or the one an earlier identical decision wrote."""
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        try:
            self.recover()
            path, previous = self.locate(file, report_rows(self.paths.reports))
            if (
                previous is not None
                and Status(previous.status) is Status.CORRECTED
                and previous.digits == digits
            ):
                log.info("%s: already recorded (%s)", previous.file, previous.moved_to)
                return previous
            return self.decide_and_file(path, digits, previous)
        finally:
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def decide_and_file(self, path: Path, digits: str, previous: Row | None) -> Row:
        from digit_inbox.daemon.recognize import prepare_file

        recognition = self.cfg.recognition
        prepared = prepare_file(path, recognition.max_pixels, max_pages=recognition.max_pages)
        sha256 = prepared.sha256 or sha256_of(path)
        row = decision_row(previous, path.name, sha256, digits)
        # The model learns from each digit of a page with as many marks as the person read
        # digits; other decisions are recorded too, and so are those of a page read both ways
        # round (light or dark ink unclear), where which way holds the digits is not known.
        images = None
        if prepared.other is None:
            images = preprocess.marks_of(prepared.images, prepared.slots, len(digits))
        return self.file_decision(path, row, previous, images)

    def file_decision(
        self, path: Path, row: Row, previous: Row | None, images: np.ndarray | None
    ) -> Row:
        entry = Entry(self.names.next_id(), Path(), path, row.file, time.time())
        entry.claim = self.paths.processing / self.names.file_name(entry.claim_id, path.name)
        self.store_sample(entry.claim_id, row, previous, images)
        self.record(claimed=[entry])
        try:
            filing.claim(entry.original, entry.claim)
        except FileNotFoundError:
            self.forgotten.append(entry.claim_id)
            self.mark_finished()
            raise UsageError(f"{path}: moved away meanwhile; nothing recorded") from None
        filed = self.file_claimed(entry, row)
        # The daemon's note beside a file in review/ speaks of a reading now settled.
        note = path.with_name(path.name + filing.REVIEW_SUFFIX)
        if path.parent.resolve() == self.paths.review.resolve():
            note.unlink(missing_ok=True)
        return filed

    def file_claimed(self, entry: Entry, row: Row) -> Row:
        work = [Work(entry, row=row)]
        self.decide(work)

        def attempt() -> None:
            if entry.state is State.CLAIMED:
                self.file_fresh(work)
            else:
                self.finish(work)

        self.retry(attempt)
        self.finished.append(entry.claim_id)
        self.mark_finished()
        log.info("%s", describe(row))
        return row

    def recover(self) -> None:
        """Finish what a killed correction left: the journal's steps, the planned row."""
        for e in self.journal.unfinished():
            if e.state is State.CLASSIFIED:
                work = [Work(e)]
                self.retry(lambda work=work: self.finish(work))  # type: ignore[misc]
                self.finished.append(e.claim_id)
                log.info("finished the correction of %s (%s)", e.name, e.moved_to)
            elif os.path.lexists(e.claim):
                self.file_claimed(e, self.planned_row(e.claim_id))
            else:  # killed before the rename: the file is where it was
                self.forgotten.append(e.claim_id)
        self.mark_finished()

    def undo(self, moved_to: str) -> Row:
        """Take a decision back: a new `corrected` row that returns the file to review/."""
        fcntl.flock(self.lock_fd, fcntl.LOCK_EX)
        try:
            self.recover()
            self.undoing = True
            path, previous = self.locate(moved_to, report_rows(self.paths.reports))
            row = decision_row(previous, path.name, sha256_of(path), "")
            row.note, row.error = f"{UNDO_NOTE} (was {previous.digits if previous else '?'})", ""
            return self.file_decision(path, row, previous, None)
        finally:
            self.undoing = False
            fcntl.flock(self.lock_fd, fcntl.LOCK_UN)

    def folder_for(self, row: Row, now: datetime) -> Path:
        if Status(row.status) is Status.CORRECTED and row.note.startswith(UNDO_NOTE):
            return self.paths.review
        return super().folder_for(row, now)

    # --- Finding the file and what the model read.

    def locate(self, file: str, rows: list[Row]) -> tuple[Path, Row | None]:
        """The file's path (inside review/ or the outbox) and its latest report row."""
        root = Path(os.path.realpath(self.paths.data_root))
        if os.path.lexists(file):
            path = self.contained(Path(file))
            moved_to = os.fsdecode(path.relative_to(root))
            return path, last(r for r in rows if r.moved_to == moved_to)
        # A path that is gone (corrected since) is found by its earlier `moved_to`.
        gone = os.path.relpath(os.path.realpath(file), root)
        named = last(r for r in rows if r.file == file or r.moved_to in (file, gone))
        if named is None:
            raise UsageError(
                f"{file}: no such file, and no report row names it; give the path of a file in "
                f"{self.paths.review} or {self.paths.outbox}, or its name in the report"
            )
        # The same file's latest row (it may have been corrected since).
        latest = last(r for r in rows if r.file == named.file and r.sha256 == named.sha256)
        assert latest is not None
        return self.contained(root / latest.moved_to), latest

    def contained(self, path: Path) -> Path:
        return contained(self.paths, path, self.undoing)

    # --- The learning store.

    def store_sample(
        self, claim_id: str, row: Row, previous: Row | None, images: np.ndarray | None
    ) -> None:
        reading = previous.digits if previous is not None else ""
        kind = "confirmed" if reading and reading == row.digits else "corrected"
        if row.note.startswith(UNDO_NOTE):
            kind = "undone"
        with self.journal.transaction():
            self.journal.db.execute(
                "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    claim_id,
                    time.time(),
                    row.sha256,
                    row.file,
                    row.digits,
                    kind,
                    reading,
                    previous.confidence if previous is not None else None,
                    row.model,
                    None if images is None else np.asarray(images, np.float32).tobytes(),
                    json.dumps(dataclasses.asdict(row)),
                ),
            )

    def planned_row(self, claim_id: str) -> Row:
        (text,) = self.journal.db.execute(
            "SELECT row FROM samples WHERE claim_id = ?", (claim_id,)
        ).fetchone()
        fields = json.loads(text)
        fields["status"] = Status(fields["status"])
        return Row(**fields)


def contained(paths: config.Paths, path: Path, undo: bool = False) -> Path:
    """`path` resolved, if it is a regular file (not a symbolic link) under review/ or the
    outbox (or failed/, to undo a "not a number"); UsageError otherwise. `..` and linked
    folders are resolved before the check."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise UsageError(f"{path}: no such file (was it moved or corrected already?)") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: {filing.kind(st.st_mode)}; only files can be corrected")
    real = Path(os.path.realpath(path))
    for folder in (paths.review, paths.outbox, *((paths.failed,) if undo else ())):
        if real.is_relative_to(os.path.realpath(folder)):
            return real
    raise UsageError(f"{path}: only files in {paths.review} or {paths.outbox} can be corrected")


def samples(cfg: config.Config) -> list[Sample]:
    """Every recorded decision that was filed, oldest first (the latest per file counts most)."""
    path = database(cfg)
    if not path.exists():
        return []
    with Journal(path) as journal:
        journal.db.executescript(SAMPLES)
        found = journal.db.execute(
            "SELECT s.time, s.sha256, s.label, s.kind, s.model_reading, s.confidence, s.image "
            "FROM samples s JOIN claims c USING (claim_id) WHERE c.state != 'claimed' "
            "ORDER BY s.time"
        ).fetchall()
    return [
        Sample(
            t,
            sha,
            label,
            kind,
            reading,
            confidence,
            None if image is None else np.frombuffer(image, np.float32).reshape(-1, 28, 28),
        )
        for t, sha, label, kind, reading, confidence, image in found
    ]


def decision_row(previous: Row | None, name: str, sha256: str, digits: str) -> Row:
    """The `corrected` row: the person's digits, the model's reading in `note`."""
    if previous is not None and previous.digits:
        confidence = f" ({previous.confidence:.4f})" if previous.confidence is not None else ""
        reading = f"model read {previous.digits}{confidence}"
        if previous.digits == digits:
            reading = f"confirmed: {reading}"
    elif previous is not None:
        reading = f"model's result: {previous.status}"
    else:
        reading = "model's reading unknown (no report row)"
    return Row(
        file=previous.file if previous is not None else name,
        status=Status.CORRECTED,
        digits=digits,
        confidence=previous.confidence if previous is not None else None,
        note=reading if digits else f"not a number; {reading}",
        error="" if digits else NOT_A_NUMBER_REASON,
        sha256=sha256,
        model=previous.model if previous is not None else "",
    )


def report_rows(reports: Path, pattern: str = "*.csv") -> list[Row]:
    """Every row of the daily reports matching `pattern` (all of them by default), oldest
    first."""
    found: list[Row] = []
    for path in sorted(reports.glob(pattern)):
        with open(path, newline="", encoding=report.ENCODING, errors="replace") as f:
            for cells in csv.DictReader(f):
                found.append(parse_row(cells))
    return found


def parse_row(cells: dict[str, str]) -> Row:
    def number(text: str | None) -> float | None:
        try:
            return float(text) if text else None
        except ValueError:
            return None

    try:
        status = Status(cells.get("status", ""))
    except ValueError:
        status = Status.ERROR
    return Row(
        file=rows.unneutralise(cells.get("file", "")),
        status=status,
        time=cells.get("time", ""),
        digits=cells.get("digits", "") or cells.get("digit", ""),
        confidence=number(cells.get("confidence")),
        note=cells.get("note", ""),
        sha256=cells.get("sha256", ""),
        model=cells.get("model", ""),
        moved_to=rows.unneutralise(cells.get("moved_to", "")),
        runner_up=cells.get("runner_up", ""),
        runner_up_confidence=number(cells.get("runner_up_confidence")),
    )


def last(rows: Iterator[Row] | list[Row]) -> Row | None:
    found = None
    for row in rows:
        found = row
    return found


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main(config_path: Path, file: str, digits_text: str) -> int:
    """`digit-inbox correct`: print the row's one-line summary."""
    digits = parse_digits(digits_text)
    cfg = config.load(config_path)
    with Corrector(cfg) as corrector:
        row = corrector.correct(file, digits)
    print(describe(row))
    return int(ExitCode.OK)
