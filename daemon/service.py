"""`digit-inbox run`: watch the inbox, and give every file dropped there one report row and one
place in the outbox, review or failed folder.

The recipe (the observer thread only notices paths):

    finish what a previous run left half done (see journal.py for the protocol)
    watch the inbox, scan it, tell systemd we are ready
    until SIGTERM/SIGINT:
        take the files that are ready (up to batch_size: a backlog is read in batches)
        claim them   -> journal CLAIMED, rename into processing/
        read them    -> one row each; a file still being written goes back to the inbox
        file them    -> journal CLASSIFIED, link to its folder, append the rows, unlink the claim
    finish the batch in hand, write the status file, exit 0

Reading a batch (decoding workers busy) overlaps filing the batch before it (mostly fsync), on
a second thread that only reads: the journal, reports and moves stay on the main thread.

Errors an operator can fix (disk full, permissions, read-only mounts) are retried with a growing
pause and never turn a good scan into a failed one; the files wait, claimed, meanwhile. Losing
the inbox or the observer is a RuntimeFault (exit 6): systemd restarts the daemon.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
import signal
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Protocol

from digit_inbox.daemon import config, filing, keys, report
from digit_inbox.daemon.classifier import embedded_model
from digit_inbox.daemon.errors import AlreadyRunning, ExitCode, ModelError, RuntimeFault
from digit_inbox.daemon.health import Health, counts_text, duration, plural
from digit_inbox.daemon.journal import Entry, Journal, State
from digit_inbox.daemon.notify import Notifier
from digit_inbox.daemon.rows import Row, Status
from digit_inbox.daemon.watcher import Ready, Triage, Watcher

log = logging.getLogger(__name__)

# A file whose reading crashed the daemon this many times is failed instead of read again.
MAX_ATTEMPTS = 3
# Longest pause between retries of a step that failed for a fixable reason.
MAX_BACKOFF = 60.0
# How often the loop wakes when idle, to check the inbox and the observer are still there.
CHECK_SECONDS = 5.0
# After the queue drains, rescan once (at most this often) for files whose events were lost.
DRAIN_RESCAN_SECONDS = 10.0
STATUS_SECONDS = 5.0
# After filing, the status file is rewritten within this many seconds (at most once as often).
FRESH_STATUS_SECONDS = 1.0


class Reader(Protocol):
    model_id: str

    def read(self, items: Sequence[tuple[Path, str]]) -> list[Row]: ...

    def close(self) -> None: ...


class Stopped(Exception):
    """A stop was requested while waiting to retry; the claims are finished on the next start."""


@dataclass(eq=False)
class Work:
    """One claimed file in the batch in hand."""

    entry: Entry
    st: os.stat_result | None = None  # lstat of the claim right after claiming
    row: Row | None = None
    gone: bool = False  # vanished from processing/ before it was filed (someone removed it)
    put_back: bool = False  # still being written when read: returned to the inbox


def main(config_path: Path, check_only: bool = False, log_level: str | None = None) -> int:
    """Validate the config; with `check_only` print a summary, otherwise run until stopped."""
    cfg = config.load(config_path)
    model = model_path(cfg.recognition)
    verify_model(model, cfg.recognition.model_sha256)
    if check_only:
        print(cfg.summary())
        return int(ExitCode.OK)
    configure_logging(log_level, cfg.log_level)
    return Daemon(cfg).run()


def configure_logging(command_line: str | None, configured: str) -> None:
    """The command line's level, else the config's; timestamps unless journald (which stamps
    lines itself) reads stderr."""
    root = logging.getLogger()
    if command_line is not None:
        root.setLevel(command_line.upper())
    elif root.level == logging.INFO:  # the command line's default: the config decides
        root.setLevel(configured)
    if "JOURNAL_STREAM" not in os.environ:
        for handler in root.handlers:
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )


def model_path(recognition: config.Recognition) -> Path:
    if recognition.model is not None:
        return recognition.model
    return embedded_model()


def verify_model(path: Path, pinned: str | None) -> None:
    """ModelError unless the model file's sha256 is the pinned one (when a pin is set)."""
    if pinned is None:
        return
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the model ({exc.strerror})") from exc
    if digest != pinned:
        raise ModelError(
            f"{path}: sha256 is {digest}, but recognition.model_sha256 pins {pinned}; put the "
            "pinned model back, or update the pin after checking the new model"
        )


def open_reader(cfg: config.Config) -> Reader:
    from digit_inbox.daemon.recognize import Reader as RealReader

    r = cfg.recognition
    reader: Reader = RealReader(
        r.model,
        min_confidence=r.min_confidence,
        max_pixels=r.max_pixels,
        max_pages=r.max_pages,
        workers=r.workers,
        batch_size=r.batch_size,
        debug_dir=None,
        digits=r.digits,
    )
    return reader


class StateLock:
    """An exclusive lock on the state folder: one daemon per journal."""

    def __init__(self, folder: Path, config_file: Path | None = None) -> None:
        self.path = folder / "daemon.lock"
        self.config_file = config_file
        self.fd = -1

    def __enter__(self) -> StateLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self.fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise AlreadyRunning(
                f"{self.config_file or 'this config'}: another digit-inbox (pid {owner}) is "
                f"already running on its state folder {self.path.parent} ({keys.STATE}); stop "
                f"that one first, or give this config its own {keys.STATE}"
            ) from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class Daemon:
    def __init__(self, cfg: config.Config, reader_factory: Callable[[], Reader] | None = None):
        self.cfg = cfg
        self.paths = cfg.paths
        self.reader_factory = reader_factory or (lambda: open_reader(self.cfg))
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()  # SIGHUP: read with the model file as it is now
        self.tag = hashlib.sha1(os.fsencode(os.path.realpath(cfg.paths.state))).hexdigest()[:8]
        self.names = filing.ClaimNames(self.tag)
        inside = {p for p in vars(cfg.paths).values() if cfg.paths.inbox in p.parents}
        self.triage = Triage(cfg.watch, cfg.paths.inbox, inside)
        self.finished: list[str] = []  # claim ids to mark DONE in the next transaction
        self.forgotten: list[str] = []  # claim ids to forget in the next transaction
        self.counts: Counter[str] = Counter()
        self.started = time.monotonic()
        self.model_id = ""
        # Recovery retries (back_off) ping and report like the loop does, so these exist first.
        self.notifier = Notifier.from_env()
        self.next_metrics = self.next_ping = self.next_status = time.monotonic()
        self.busy_since_scan = False

    # --- The recipe.

    def run(self) -> int:
        config.make_folders(self.cfg)
        self.watcher = Watcher(self.cfg, self.triage)
        self.pending = self.watcher.pending
        with (
            StateLock(self.paths.state, self.cfg.source),
            Journal(self.cfg.journal_file) as self.journal,
            self.reading_with(self.reader_factory()),
            self.signals(),
        ):
            self.model_id = self.reader.model_id
            self.health = Health(
                self.cfg.status_file,
                self.cfg.metrics.textfile,
                self.model_id,
                self.paths.inbox,
                self.cfg.source.absolute(),
            )
            try:
                self.recover()
                with self.watcher:
                    found = self.watcher.rescan()
                    log.info("ready: %s waiting in %s", plural(found, "file"), self.paths.inbox)
                    self.notifier.ready(self.status_text())
                    self.loop()
            except Stopped:
                log.warning(
                    "stopped while waiting to retry; claimed files are finished on the next start"
                )
            finally:
                self.notifier.stopping()
                self.shut_down()
        return int(ExitCode.OK)

    def loop(self) -> None:
        """Claim, read and file batches; one batch is read (on a thread: the decoding workers
        do the work) while the one before it is filed (mostly waiting for fsync)."""
        reading: Future[list[Work]] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="digit-inbox-read") as reader_thread:
            try:
                while not self.stopping.is_set():
                    if self.reload_requested.is_set():
                        if reading is not None:  # the batch in hand, with the model that read it
                            self.file_settled(reading.result())
                            reading = None
                        self.reload()
                    self.watcher.check()
                    ready, recheck = self.pending.take(self.cfg.recognition.batch_size)
                    claimed = self.claim(ready) if ready else []
                    read, reading = reading, None
                    if claimed:
                        reading = reader_thread.submit(self.read, claimed)
                    if read is not None:
                        self.file_settled(read.result())
                    if ready:
                        self.busy_since_scan = True
                    elif reading is None:
                        self.mark_finished()
                        self.pending.wait(self.idle_seconds(recheck))
                    self.tick(drained=not ready)
            finally:
                if reading is not None:  # the batch in hand is finished, even when stopping
                    self.file_settled(reading.result())

    @contextlib.contextmanager
    def reading_with(self, reader: Reader) -> Iterator[None]:
        """`self.reader` for the run; a reload may replace it, and the current one is closed."""
        self.reader = reader
        try:
            yield
        finally:
            self.reader.close()

    def reload(self) -> None:
        """SIGHUP: switch to the configured model file as it is now (after `learn --promote`).

        Between batches, so every row names the model that read it. A model that does not load,
        or does not match the config's pin (read again now), leaves the current one in use.
        """
        self.reload_requested.clear()
        try:
            fresh = config.load(self.cfg.source, check_folders=False)
            verify_model(model_path(fresh.recognition), fresh.recognition.model_sha256)
            self.cfg = dataclasses.replace(self.cfg, recognition=fresh.recognition)
            reader = self.reader_factory()
        except Exception as exc:
            log.error("reload: keeping model %s: %s", self.model_id, exc)
            return
        old, self.reader = self.reader, reader
        old.close()
        self.model_id = self.health.model_id = reader.model_id
        log.info("reloaded: reading with model %s", self.model_id)

    def file_settled(self, work: list[Work]) -> None:
        """File what was read; forget the claims of files that were put back to settle."""
        self.forgotten += [w.entry.claim_id for w in work if w.put_back]
        settled = [w for w in work if not w.put_back]
        if settled:
            self.file(settled)

    # --- Claim.

    def claim(self, ready: list[Ready]) -> list[Work]:
        """Journal, then rename each file into processing/; a file another daemon won is dropped."""
        entries = []
        for item in ready:
            claim_id = self.names.next_id()
            name = os.fsdecode(item.path.relative_to(self.paths.inbox))
            target = self.paths.processing / self.names.file_name(claim_id, item.path.name)
            entries.append(Entry(claim_id, target, item.path, name, item.noticed))
        self.record(claimed=entries)
        work = []
        for entry in entries:
            try:
                self.claim_one(entry)
            except FileNotFoundError:
                self.forgotten.append(entry.claim_id)  # another daemon took it, or it left
                continue
            except OSError as exc:
                log.warning(
                    "cannot claim %s: %s; trying again at the next rescan", entry.name, exc.strerror
                )
                self.forgotten.append(entry.claim_id)
                continue
            work.append(Work(entry, os.lstat(entry.claim)))
        return work

    def claim_one(self, entry: Entry) -> None:
        try:
            filing.claim(entry.original, entry.claim)
        except FileNotFoundError:
            if not os.path.lexists(entry.original) or os.path.isdir(self.paths.processing):
                raise
            log.warning("%s was removed; creating it again", self.paths.processing)
            config.make_folders(self.cfg)
            filing.claim(entry.original, entry.claim)

    # --- Read.

    def read(self, work: list[Work]) -> list[Work]:
        """Fill each item's row; put files that changed while being read back into the inbox.

        Runs on the reading thread: touches files and the reader, never the journal.
        """
        readable = []
        for w in work:
            assert w.st is not None
            if w.entry.attempts > MAX_ATTEMPTS:
                why = f"reading this file stopped the daemon {w.entry.attempts - 1} times"
                w.row = self.error_row(w, why)
            elif not stat.S_ISREG(w.st.st_mode):
                w.row = self.error_row(w, filing.kind(w.st.st_mode))
            elif not config.has_image_extension(w.entry.original.name, self.cfg.watch):
                w.row = self.error_row(w, not_a_scan_name(w.entry.original.name))
            elif w.st.st_size == 0:
                limit = self.cfg.watch.empty_timeout_seconds
                w.row = self.error_row(w, f"empty file (0 bytes) for more than {limit:g} s")
            else:
                readable.append(w)
        for w, row in zip(readable, self.read_rows(readable), strict=True):
            w.row = row
        for w in readable:
            if still_changing(w):
                self.put_back(w)
        return work

    def read_rows(self, work: list[Work]) -> list[Row]:
        """The reader's rows; if it raises, each file alone, so one bad file fails alone."""
        if not work:
            return []
        items = [(w.entry.claim, w.entry.name) for w in work]
        try:
            return self.reader.read(items)
        except Exception:
            log.exception("the reader failed on a batch of %d; reading them one by one", len(work))
        rows, failures = [], 0
        for w, item in zip(work, items, strict=True):
            try:
                rows.extend(self.reader.read([item]))
            except Exception as exc:
                log.exception("the reader failed on %s", w.entry.name)
                rows.append(self.error_row(w, f"the reader failed: {exc}"))
                failures += 1
        if failures == len(work):
            # Restart: a file that crashes the reader every time is failed after MAX_ATTEMPTS.
            raise RuntimeFault("the reader failed on every file of the batch; restarting")
        return rows

    def error_row(self, w: Work, reason: str) -> Row:
        return Row(file=w.entry.name, status=Status.ERROR, error=reason)

    def put_back(self, w: Work) -> None:
        """A file written to after it was claimed goes back to the inbox to settle again."""
        log.info("%s changed while it was read; putting it back to settle", w.entry.name)
        w.entry.original.parent.mkdir(parents=True, exist_ok=True)
        for candidate in filing.candidates(w.entry.original.name):
            back = w.entry.original.with_name(candidate)
            try:
                filing.rename_noreplace(w.entry.claim, back)
                break
            except FileExistsError:
                continue
        # Its writer may still be at it: the rename back must not count as "done writing".
        self.pending.add(back, must_settle=True)
        w.put_back = True

    # --- File.

    def file(self, work: list[Work]) -> None:
        """Decide each file's row and place, then record, place, report and release them."""
        self.decide(work)

        def attempt() -> None:
            # Once the rows are journaled, a retry only finishes what the failed attempt left.
            if work[0].entry.state is State.CLAIMED:
                self.file_fresh(work)
            else:
                self.finish(work)

        self.retry(attempt)
        self.after_filing(work)

    def decide(self, work: list[Work]) -> None:
        """Time, duplicate, destination and CSV line of each row (nothing written yet)."""
        now = datetime.now().astimezone()
        stamp = now.isoformat(timespec="milliseconds")
        report_path = report.path_for(self.paths.reports, now.date())
        seen: dict[str, str] = {}
        taken: set[Path] = set()
        for w in work:
            assert w.row is not None
            row, e = w.row, w.entry
            row.time = stamp
            row.file = e.name
            if row.sha256 and row.status is not Status.CORRECTED:
                row.duplicate_of = seen.get(row.sha256) or self.journal.first_with(row.sha256) or ""
            e.dest = self.free_name(self.folder_for(row, now), e.original.name, taken)
            taken.add(e.dest)
            row.moved_to = self.relative(e.dest)
            if row.sha256:
                seen.setdefault(row.sha256, row.duplicate_of or row.moved_to)
            e.inode = filing.inode(e.claim)
            e.report = report_path
            e.line = report.encode_line(row)
            e.sha256, e.moved_to, e.error = row.sha256, row.moved_to, row.error
            e.status = Status(row.status).value

    def folder_for(self, row: Row, now: datetime) -> Path:
        status = Status(row.status)
        if status is Status.ERROR or (status is Status.CORRECTED and not row.digits):
            return self.paths.failed  # unreadable, or a person said "not a number"
        readable = row.digits.replace(" ", "").isdigit()
        if status not in (Status.OK, Status.CORRECTED) or not readable:
            return self.paths.review
        if row.duplicate_of and self.cfg.filing.duplicates == "review":
            return self.paths.review
        sub = self.cfg.filing.layout.format(
            digit=row.digits,
            digits=row.digits,
            date=now.date().isoformat(),
            year=f"{now.year:04d}",
            month=f"{now.month:02d}",
            day=f"{now.day:02d}",
        )
        return self.paths.outbox / sub

    def free_name(self, folder: Path, name: str, taken: set[Path]) -> Path:
        # In failed/ and review/ the name leaves room for its note: a 255-byte name has none.
        noted = folder in (self.paths.failed, self.paths.review)
        limit = filing.NOTED_NAME_MAX if noted else filing.NAME_MAX
        return filing.free_name(folder, name, limit, taken)

    def relative(self, dest: Path) -> str:
        root = self.paths.data_root
        return str(dest) if root == Path(root.anchor) else os.fsdecode(dest.relative_to(root))

    def file_fresh(self, work: list[Work]) -> None:
        """The usual path: offset under the report's lock, journal, place, append, release."""
        assert work[0].entry.report is not None
        with report.Report(work[0].entry.report, bom=self.cfg.filing.report_bom) as rep:
            for w in work:
                w.entry.offset = rep.size
            self.record(classified=[w.entry for w in work])
            for w in work:
                w.entry.state = State.CLASSIFIED
            self.place(work)
            rep.append(w.entry.line for w in work if not w.gone and w.entry.line)
        self.release(work)

    def finish(self, work: list[Work]) -> None:
        """Steps 4-6 again, idempotently: after a retry, or for what a previous run left."""
        self.place(work)
        by_report: dict[Path, list[Work]] = {}
        for w in work:
            if not w.gone and w.entry.report is not None:
                by_report.setdefault(w.entry.report, []).append(w)
        for path, group in by_report.items():
            with report.Report(path, bom=self.cfg.filing.report_bom) as rep:
                since = min(w.entry.offset or 0 for w in group)
                rep.append(rep.missing((w.entry.line for w in group if w.entry.line), since))
        self.release(work)

    def place(self, work: list[Work]) -> None:
        """Link every claim at its destination (a new name if that one was taken meanwhile)."""
        for w in work:
            self.place_one(w)
        for folder in {w.entry.dest.parent for w in work if w.entry.dest is not None}:
            report.fsync_dir(folder)

    def place_one(self, w: Work) -> None:
        e = w.entry
        assert e.dest is not None
        while e.inode is None or filing.inode(e.dest) != e.inode:
            if e.inode is None or filing.inode(e.claim) != e.inode:
                log.error(
                    "%s vanished from %s before it was filed; no row written",
                    e.name,
                    self.paths.processing,
                )
                w.gone = True
                return
            try:
                filing.place(e.claim, e.dest)
            except FileExistsError:
                self.rename_destination(w)
        if e.status == Status.ERROR.value or e.error:  # failed/, or "not a number"
            filing.write_note(e.dest, self.note_text(e))
        elif e.dest.parent == self.paths.review:
            filing.write_note(e.dest, self.note_text(e), filing.REVIEW_SUFFIX)

    def rename_destination(self, w: Work) -> None:
        """The chosen name was taken by someone else: choose the next one and record it first."""
        e = w.entry
        assert e.dest is not None and e.line is not None
        e.dest = self.free_name(e.dest.parent, e.original.name, set())
        e.moved_to = self.relative(e.dest)
        if w.row is not None:
            w.row.moved_to = e.moved_to
            e.line = report.encode_line(w.row)
        else:  # finishing a previous run's file: only its recorded line is known
            e.line = report.replace_cell(e.line, "moved_to", e.moved_to)
        log.info("%s: the chosen name was taken meanwhile; filing it as %s", e.name, e.moved_to)
        self.journal.record(classified=[e])

    def note_text(self, e: Entry) -> str:
        """The note beside a failed or review file, from its report line (all a recovery has)."""
        cells = report.line_cells(e.line or b"")
        where, root = "the day's report", self.paths.data_root
        if e.report is not None:  # the reports folder need not be beside the filing folders
            inside = root in e.report.parents
            where = os.fsdecode(e.report.relative_to(root)) if inside else str(e.report)
        if e.status == Status.ERROR.value:
            return failed_note(e.name, e.error, where)
        return review_note(e.name, cells, where, self.cfg.recognition.min_confidence)

    def release(self, work: list[Work]) -> None:
        for w in work:
            if w.gone or w.entry.dest is None:
                continue
            if not filing.release(w.entry.claim, w.entry.dest):
                log.error(
                    "%s: %s no longer holds it; kept in %s",
                    w.entry.name,
                    w.entry.dest,
                    self.paths.processing,
                )

    def after_filing(self, work: list[Work]) -> None:
        # `digit-inbox status` should show these files soon, not a metrics interval later.
        self.next_metrics = min(self.next_metrics, time.monotonic() + FRESH_STATUS_SECONDS)
        now = time.time()
        for w in work:
            self.finished.append(w.entry.claim_id)
            if w.gone:
                continue
            self.counts[w.entry.status] += 1
            if w.row is None:
                log.info(
                    "%s -> %s (finished from the previous run)", w.entry.name, w.entry.moved_to
                )
                continue
            log.info("%s", describe(w.row))
            try:
                self.health.record(w.row, now - w.entry.noticed)
            except Exception:
                log.exception("could not record %s in the status", w.entry.name)

    # --- Recovery.

    def recover(self) -> None:
        """Finish what a previous run left half done, before anything new is taken."""
        resume: list[Entry] = []
        finish: list[Entry] = []
        for e in self.journal.unfinished():
            if e.state is State.CLASSIFIED:
                finish.append(e)
            elif os.path.lexists(e.claim):
                resume.append(e)
            else:
                self.forgotten.append(e.claim_id)
        adopted, foreign = self.orphan_claims({e.claim_id for e in resume + finish})
        resume += adopted
        if finish:
            log.info("finishing %s the previous run had read", plural(len(finish), "file"))
            work = [Work(e) for e in finish]
            self.retry(lambda: self.finish(work))
            self.after_filing(work)
        if resume:
            log.info("reading %s the previous run had claimed", plural(len(resume), "file"))
        size = self.cfg.recognition.batch_size
        for start in range(0, len(resume), size):
            self.resume(resume[start : start + size])
        if foreign:
            log.warning(
                "%s in %s claimed by another digit-inbox (another paths.state); "
                "that daemon finishes them when it runs again",
                plural(foreign, "file"),
                self.paths.processing,
            )

    def resume(self, batch: list[Entry]) -> None:
        """Read claimed files again; `attempts` counts how often that was started."""
        for e in batch:
            e.attempts += 1
        self.record(claimed=batch)
        work = []
        for e in batch:
            with contextlib.suppress(FileNotFoundError):
                work.append(Work(e, os.lstat(e.claim)))
        self.file_settled(self.read(work))

    def orphan_claims(self, known: set[str]) -> tuple[list[Entry], int]:
        """Claims of this journal it has no record of (adopted), and the count of others'."""
        adopted, foreign = [], 0
        with os.scandir(self.paths.processing) as entries:
            names = [entry.name for entry in entries]
        for name in sorted(names):
            parsed = filing.ClaimNames.parse(name)
            if parsed is None:
                continue
            claim_id, tag, original = parsed
            if claim_id in known or self.journal.knows(claim_id):
                continue  # resumed from the journal (even if paths.state moved since)
            if tag != self.tag:
                foreign += 1
            else:
                path = self.paths.processing / name
                adopted.append(
                    Entry(
                        claim_id,
                        path,
                        self.paths.inbox / original,
                        original,
                        time.time(),
                        attempts=0,
                    )
                )
        return adopted, foreign

    # --- Housekeeping.

    def record(self, **steps: Sequence[Entry]) -> None:
        """One journal transaction with these steps plus the deferred DONE marks and forgets.

        Retried while the failure is transient; the deferred ids are kept if it fails.
        """
        done, forget = self.finished, self.forgotten
        self.finished, self.forgotten = [], []
        try:
            self.retry(lambda: self.journal.record(done=done, forget=forget, **steps))
        except BaseException:
            self.finished[:0], self.forgotten[:0] = done, forget
            raise

    def mark_finished(self) -> None:
        if self.finished or self.forgotten:
            self.record()

    def retry(self, step: Callable[[], None]) -> None:
        """Run `step` until it succeeds: files stay claimed through a full disk or a lost
        mount instead of being failed for it; anything waiting cannot fix is raised."""
        attempt = 0
        while True:
            try:
                step()
                return
            except Exception as exc:
                if not transient(exc):
                    raise
                self.back_off(exc, attempt)
                attempt += 1

    def back_off(self, exc: BaseException, attempt: int) -> None:
        delay = min(MAX_BACKOFF, 0.5 * 2**attempt)
        log.warning("%s; retrying in %g s (files stay claimed meanwhile)", exc, delay)
        self.notifier.status(f"waiting: {exc}; retrying in {delay:g} s")
        deadline = time.monotonic() + delay
        while not self.stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.ping()
            self.stopping.wait(min(left, CHECK_SECONDS))
        raise Stopped()

    def idle_seconds(self, recheck: float | None) -> float:
        now = time.monotonic()
        moments = [
            now + CHECK_SECONDS,
            self.next_metrics,
            self.watcher.last_scan + self.cfg.watch.rescan_seconds,
        ]
        if self.notifier.watchdog_interval:
            moments.append(self.next_ping)
        if recheck is not None:
            moments.append(now + recheck)
        return max(0.01, min(moments) - now)

    def tick(self, *, drained: bool) -> None:
        now = time.monotonic()
        since_scan = now - self.watcher.last_scan
        if since_scan >= self.cfg.watch.rescan_seconds or (
            drained and self.busy_since_scan and since_scan >= DRAIN_RESCAN_SECONDS
        ):
            self.busy_since_scan = False
            found = self.watcher.rescan()
            log.debug("rescan: %s in the inbox", plural(found, "file"))
        if now >= self.next_metrics:
            self.next_metrics = now + self.cfg.metrics.interval_seconds
            self.write_health()
        if now >= self.next_status:
            self.next_status = now + STATUS_SECONDS
            self.notifier.status(self.status_text())
        self.ping()

    def ping(self) -> None:
        """WATCHDOG=1, but only from the loop (so a hung batch stops the pings)."""
        interval = self.notifier.watchdog_interval
        if interval and time.monotonic() >= self.next_ping:
            self.next_ping = time.monotonic() + interval
            self.notifier.watchdog()

    def write_health(self) -> None:
        try:
            self.health.set_queue_depth(len(self.pending))
            self.health.write()
        except OSError as exc:
            log.warning("cannot write the status file: %s", exc)

    def status_text(self) -> str:
        done = sum(self.counts.values())
        waiting = len(self.pending)
        return f"{plural(done, 'file')} filed, {waiting} waiting; watching {self.paths.inbox}"

    def shut_down(self) -> None:
        with contextlib.suppress(Exception):
            self.journal.record(done=self.finished, forget=self.forgotten)
        self.write_health()
        uptime = duration(time.monotonic() - self.started)
        filed = plural(sum(self.counts.values()), "file")
        log.info("stopped after %s: %s filed (%s)", uptime, filed, counts_text(self.counts))

    # --- Signals.

    def stop(self) -> None:
        """Finish the batch in hand and return from `run` (what SIGTERM does)."""
        self.stopping.set()
        self.pending.wake()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """SIGTERM/SIGINT: finish the batch in hand and stop. A second one stops at once."""

        def handler(signum: int, frame: FrameType | None) -> None:
            if self.stopping.is_set():
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            log.info("%s: finishing the batch in hand, then stopping", signal.Signals(signum).name)
            self.stopping.set()
            self.pending.wake()

        def reload(signum: int, frame: FrameType | None) -> None:
            log.info("SIGHUP: loading the model again after the batch in hand")
            self.reload_requested.set()
            self.pending.wake()

        if threading.current_thread() is not threading.main_thread():
            yield  # embedded in a test or a tool: the caller stops it with `stop()`
            return
        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)


def failed_note(name: str, error: str, report_name: str) -> str:
    return (
        f"{name} could not be read.\n"
        f"Reason: {error}\n"
        f"Report: {report_name}\n"
        "Fix the file and drop it into the inbox again; this copy and this note can then be "
        "deleted.\n"
    )


def review_note(name: str, cells: dict[str, str], report_name: str, min_confidence: float) -> str:
    """What a person checking review/ needs: the reading, the runner-up, why it is here."""
    status = cells.get("status", "")
    if status == Status.BLANK.value:
        reading = "nothing: no digit found"
    else:
        reading = f"{cells.get('digits') or '?'} (confidence {cells.get('confidence') or '-'})"
        if cells.get("runner_up"):
            reading += f"; runner-up {cells['runner_up']} ({cells.get('runner_up_confidence')})"
    reasons = []
    if status == Status.BLANK.value:
        reasons.append("blank page")
    confidence = cells.get("confidence", "")
    if status == Status.LOW_CONFIDENCE.value and confidence and float(confidence) < min_confidence:
        reasons.append(f"confidence under recognition.min_confidence ({min_confidence:g})")
    if cells.get("note"):
        reasons.append(cells["note"])
    if status == Status.OK.value and cells.get("duplicate_of"):
        reasons.append(f"same content as {cells['duplicate_of']} (filing.duplicates: review)")
    return (
        f"{name} needs a person to look at it.\n"
        f"Read as: {reading}\n"
        f"Why it is here: {'; '.join(reasons) or status.replace('_', ' ')}\n"
        f"Report: {report_name}\n"
        "File it where it belongs (or fix it and drop it into the inbox again); this note can then "
        "be deleted.\n"
    )


def not_a_scan_name(name: str) -> str:
    suffix = os.path.splitext(name)[1]
    kind = f"the extension {suffix} is not" if suffix else "a name without an extension is not"
    return (
        f"not opened: {kind} one of the scan formats read ({keys.EXTENSIONS}); save it as PNG, "
        "JPEG, TIFF or PDF and drop it again"
    )


def still_changing(w: Work) -> bool:
    """Whether the claim changed between claiming and now (its writer had not finished)."""
    assert w.st is not None
    try:
        now = os.lstat(w.entry.claim)
    except FileNotFoundError:
        return False
    return (now.st_size, now.st_mtime_ns) != (w.st.st_size, w.st.st_mtime_ns)


def transient(exc: BaseException) -> bool:
    """Whether waiting can fix `exc` (an operator frees space, fixes permissions, remounts)."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc).lower()
        return any(w in text for w in ("full", "i/o", "locked", "readonly", "read-only", "open"))
    return filing.is_transient(exc)


def describe(row: Row) -> str:
    """One log line per file: `3.png -> 3 (0.998) outbox/3/3.png`."""
    status = Status(row.status)
    if status is Status.OK:
        result = (
            f"{row.digits} ({row.confidence:.3f})" if row.confidence is not None else row.digits
        )
    elif status is Status.LOW_CONFIDENCE:
        result = f"{row.digits}? ({row.confidence or 0:.3f}, low confidence)"
    elif status is Status.BLANK:
        result = "blank"
    elif status is Status.CORRECTED:
        result = f"{row.digits or 'not a number'} (a person's decision; {row.note})"
    else:
        result = f"error: {row.error}"
    duplicate = f" (duplicate of {row.duplicate_of})" if row.duplicate_of else ""
    return f"{row.file} -> {result} {row.moved_to}{duplicate}"
