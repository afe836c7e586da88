"""The journal: where each claimed file is on its way, so that every file dropped into the inbox
gets exactly one report row and ends up in exactly one place, whatever instant the daemon dies.

A file goes through these steps, per batch; each journal step is one SQLite transaction,
durable (WAL, synchronous=FULL) before the next step starts:

1. CLAIMED      recorded *before* the file is renamed from the inbox into `processing/` under a
                unique claim name (host, pid, counter). The rename is atomic: of two daemons
                on one inbox exactly one wins, the other gets ENOENT and forgets its record.
2. (read)       the claimed file is classified; nothing outside memory changes.
3. CLASSIFIED   recorded with everything the rest needs: the exact CSV line, the report file,
                the report's size before this batch (its offset, taken under the report's lock
                after cutting any torn last line), the destination file name chosen in the outbox,
                review or failed folder, and the claim's inode.
4. (place)      hard-link the claim to the destination (never replacing anything: the name is
                either free or the link fails; a taken name means a new name and an updated
                record *before* the next attempt). When hard links are refused (some
                filesystems, folders, protected_hardlinks) it is a no-replace rename instead.
5. (report)     append the batch's lines to the report under its lock, fsync.
6. (release)    unlink the claim from `processing/`: the file is now only at its destination.
7. DONE         recorded lazily, in the next transaction; nothing depends on it being prompt.

Recovery at start resumes every record that is not DONE:

- CLAIMED: if the claim file exists it is read again from step 2 (`attempts` counts these, so a
  file that crashes the reader every time is failed instead of crashing the daemon forever);
  if not, the rename never happened (the file is still in the inbox, and the start-up scan picks
  it up) or another daemon won it, and the record is forgotten.
- CLASSIFIED: steps 4-6 again, each one idempotent. Placing is skipped when the destination
  already holds the recorded inode. A line is appended only if it is not already in the report
  at or after the recorded offset: it was written there completely or not at all, since a torn
  last line is cut before anything is appended. The claim is unlinked only once the destination
  holds the file.

So a row is written at most once (step 5 is guarded by the presence check and lines are unique:
they carry the time, name and sha256) and at least once (a record leaves CLASSIFIED only after
its line is durable), and the file is at exactly one name at the end (it is linked to one
recorded name and unlinked from the claim). Hard links keep the original until the row is
written: while the report cannot be written (disk full), files stay claimed in `processing/`.

Paths are stored as bytes (os.fsencode), so names that are not valid UTF-8 survive.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class State(str, Enum):
    CLAIMED = "claimed"
    CLASSIFIED = "classified"
    DONE = "done"


@dataclass
class Entry:
    """One claimed file as the journal knows it; fields after `attempts` come with CLASSIFIED."""

    claim_id: str
    claim: Path  # the file's name while claimed, in processing/
    original: Path  # where it was in the inbox
    name: str  # the report's `file` column: the path relative to the inbox
    noticed: float  # Unix time the file was first seen, for latency figures
    state: State = State.CLAIMED
    attempts: int = 1
    dest: Path | None = None
    inode: tuple[int, int] | None = None  # (st_dev, st_ino) of the claimed file
    report: Path | None = None
    offset: int | None = None
    line: bytes | None = None
    sha256: str = ""
    moved_to: str = ""
    status: str = ""
    error: str = ""


SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    claim_id TEXT PRIMARY KEY,
    claim BLOB NOT NULL,
    original BLOB NOT NULL,
    name TEXT NOT NULL,
    noticed REAL NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    dest BLOB,
    dev INTEGER,
    ino INTEGER,
    report BLOB,
    report_offset INTEGER,
    line BLOB,
    sha256 TEXT NOT NULL DEFAULT '',
    moved_to TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_sha256 ON claims (sha256) WHERE sha256 != '';
CREATE INDEX IF NOT EXISTS claims_state ON claims (state);
"""


KNOWS = "SELECT 1 FROM claims WHERE claim_id = ?"
# `sha256 != ''` lets SQLite use the partial index; without it every file would scan the table.
FIRST_WITH = (
    "SELECT moved_to FROM claims WHERE sha256 = ? AND sha256 != '' AND state != 'claimed' "
    "ORDER BY rowid LIMIT 1"
)


def encode(path: Path | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def decode(blob: bytes | None) -> Path | None:
    return None if blob is None else Path(os.fsdecode(blob))


def encode_text(text: str) -> str:
    """Names may carry surrogate escapes (undecodable bytes); SQLite text must be valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Journal:
    """The SQLite journal of one daemon (one state folder); used from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a transaction is on disk when commit returns, so a power cut cannot undo a step
        # whose effects (a report line, a link) were already made durable after it.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)  # idempotent: IF NOT EXISTS throughout
        with self.transaction():
            self.db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Steps: one call, one transaction.

    def record(
        self,
        *,
        claimed: Sequence[Entry] = (),
        classified: Sequence[Entry] = (),
        done: Iterable[str] = (),
        forget: Iterable[str] = (),
    ) -> None:
        """Write several steps of several files in one durable transaction (group commit)."""
        now = time.time()
        with self.transaction():
            for claim_id in forget:
                self.db.execute("DELETE FROM claims WHERE claim_id = ?", (claim_id,))
            for e in claimed:
                self.db.execute(
                    "INSERT INTO claims (claim_id, claim, original, name, noticed, state, "
                    "attempts, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (claim_id) DO UPDATE SET attempts = excluded.attempts, "
                    "state = excluded.state, updated = excluded.updated",
                    (
                        e.claim_id,
                        encode(e.claim),
                        encode(e.original),
                        encode_text(e.name),
                        e.noticed,
                        State.CLAIMED.value,
                        e.attempts,
                        now,
                    ),
                )
            for e in classified:
                dev, ino = e.inode or (None, None)
                self.db.execute(
                    "UPDATE claims SET state = ?, dest = ?, dev = ?, ino = ?, report = ?, "
                    "report_offset = ?, line = ?, sha256 = ?, moved_to = ?, status = ?, "
                    "error = ?, updated = ? WHERE claim_id = ?",
                    (
                        State.CLASSIFIED.value,
                        encode(e.dest),
                        dev,
                        ino,
                        encode(e.report),
                        e.offset,
                        e.line,
                        e.sha256,
                        encode_text(e.moved_to),
                        e.status,
                        encode_text(e.error),
                        now,
                        e.claim_id,
                    ),
                )
            for claim_id in done:
                # Keep what duplicate detection needs; drop what only recovery needed.
                self.db.execute(
                    "UPDATE claims SET state = ?, line = NULL, updated = ? WHERE claim_id = ?",
                    (State.DONE.value, now, claim_id),
                )

    # --- Queries.

    def unfinished(self) -> list[Entry]:
        """Every record a previous run left before DONE, in the order they were claimed."""
        rows = self.db.execute(
            "SELECT claim_id, claim, original, name, noticed, state, attempts, dest, dev, ino, "
            "report, report_offset, line, sha256, moved_to, status, error "
            "FROM claims WHERE state IN ('claimed', 'classified') ORDER BY rowid"
        ).fetchall()
        return [
            Entry(
                claim_id=r[0],
                claim=Path(os.fsdecode(r[1])),
                original=Path(os.fsdecode(r[2])),
                name=r[3],
                noticed=r[4],
                state=State(r[5]),
                attempts=r[6],
                dest=decode(r[7]),
                inode=(r[8], r[9]) if r[8] is not None else None,
                report=decode(r[10]),
                offset=r[11],
                line=r[12],
                sha256=r[13],
                moved_to=r[14],
                status=r[15],
                error=r[16],
            )
            for r in rows
        ]

    def knows(self, claim_id: str) -> bool:
        row = self.db.execute(KNOWS, (claim_id,)).fetchone()
        return row is not None

    def first_with(self, sha256: str) -> str | None:
        """Where the first file with this content was filed (its `moved_to`), if any."""
        if not sha256:
            return None
        row = self.db.execute(FIRST_WITH, (sha256,)).fetchone()
        return None if row is None else str(row[0])

    @staticmethod
    def per_file_queries(sha256: str, claim_id: str) -> list[tuple[str, tuple[str, ...]]]:
        """The lookups made for every file, with arguments (to check they use an index)."""
        return [(FIRST_WITH, (sha256,)), (KNOWS, (claim_id,))]


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
