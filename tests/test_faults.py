"""The daemon's promises under faults: kill -9 at random moments, a full disk, folders it may not
write, the inbox deleted under it, midnight, a clock that jumps, events the kernel dropped.

After each, every file dropped has exactly one report row and exactly one filed copy, by name
and content (`bench.torture.account`), and the CSV parses back to one row per line.

Real faults where this machine allows them (a small tmpfs for the full disk, `chattr +i` for
folders root may not write); where it does not, those tests skip and the injected versions of
the same faults (an OSError at the write boundary, in-process) still run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bench.torture import Feeder, Ledger, account, digit_png, read_reports
from digit_inbox.daemon import config, filing, journal, report, service, watcher
from digit_inbox.daemon.rows import Row, Status
from tests.helpers import Folders, wait_until, write_config

pytestmark = pytest.mark.slow

KILLS = int(os.environ.get("DIGIT_INBOX_FAULT_KILLS", "6"))


def assert_all_accounted(ledger: Ledger, folders: Any, reports: Sequence[Path]) -> None:
    result = account(ledger, folders, reports)
    assert result.problems == []
    assert result.accounted == len(ledger) > 0


# --- kill -9.


def test_kill_9_at_random_moments_while_files_stream_in_loses_and_repeats_nothing(
    start_daemon, tmp_path
):
    config_path = write_config(tmp_path, recognition={"batch_size": 8})
    folders = Folders.under(tmp_path)
    rng = random.Random(9)
    ledger = Ledger()
    daemon = start_daemon(config_path)
    with Feeder(folders.inbox, ledger, rate=40, seed=9):
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 2.0))  # any moment: claiming, reading, appending, filing
            daemon.kill()
            daemon = start_daemon(config_path)
    daemon.wait_rows(len(ledger), timeout=120)
    assert daemon.stop() == 0
    assert_all_accounted(ledger, folders, [folders.reports])


# --- A full disk.


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs: a disk that really fills up. Skips where mounting is not allowed."""
    point = tmp_path / "fs"
    point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()}); see the injected test")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(path: Path) -> None:
    """Write `path` until the disk is full, to the last byte."""
    with open(path, "wb", buffering=0) as f:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            while True:
                try:
                    f.write(b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break


@pytest.mark.parametrize("state", ["on-the-full-disk", "elsewhere"])
def test_a_full_disk_is_waited_out_and_nothing_is_lost_or_torn(
    start_daemon, tmp_path, small_tmpfs, state
):
    paths = {r: f"./fs/{r}" for r in ("inbox", "outbox", "review", "failed", "reports")}
    paths["state"] = "./fs/state" if state == "on-the-full-disk" else "./state"
    folders = Folders(**{r: tmp_path / p for r, p in paths.items()}, root=tmp_path)
    config_path = write_config(tmp_path, paths=paths, watch={"empty_timeout_seconds": 1})
    daemon = start_daemon(config_path)
    ledger = Ledger()
    for i in range(10):
        ledger.drop(folders.inbox, f"before-{i}.png".encode(), digit_png(i))
    daemon.folders = folders  # where its rows are
    daemon.wait_rows(10)
    staging = small_tmpfs / "staging"  # written now, renamed in once the disk is full
    staging.mkdir()
    waiting = {f"while-full-{i}.png": digit_png(100 + i) for i in range(30)}
    waiting["broken-while-full.png"] = b"not an image: its error note needs space too"
    for name, data in waiting.items():
        (staging / name).write_bytes(data)
    fill(small_tmpfs / "ballast")
    for name, data in waiting.items():
        os.rename(staging / name, folders.inbox / name)
        ledger.dropped[name.encode()] = hashlib.sha256(data).hexdigest()
    wait_until(lambda: daemon.log.count("retrying in") >= 2, 30, "retries while full")
    failed = {p.name for p in folders.failed.iterdir()}
    assert failed <= {"broken-while-full.png"}  # a good scan waits, never fails for it
    in_flight = [p for p in folders.inbox.iterdir() if not p.name.startswith(".")]
    in_flight += list((folders.inbox / ".digit-inbox" / "processing").iterdir())
    filed_rows = len(read_reports([folders.reports])[0])
    assert len(in_flight) + filed_rows >= len(ledger)  # each is in the inbox, claimed or filed

    (small_tmpfs / "ballast").unlink()  # space returns
    daemon.wait_rows(len(ledger), timeout=90)
    assert daemon.stop() == 0
    assert_all_accounted(ledger, folders, [folders.reports])
    assert (folders.failed / "broken-while-full.png.error.txt").exists()


# --- Folders root may not write.


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def immutable() -> Iterator[Callable[..., None]]:
    """`chattr +i` (which even root obeys) on paths, undone at the end; skips where the
    filesystem or the container refuses it."""
    made: list[Path] = []

    def make(*paths: Path) -> None:
        try:
            chattr("+i", *paths)
        except (OSError, subprocess.CalledProcessError) as exc:
            pytest.skip(f"chattr +i is not possible here ({exc}); see the injected test")
        made.extend(paths)

    yield make
    if made:
        chattr("-i", *made)


def test_outbox_failed_and_report_made_unwritable_while_running_are_waited_out(
    start_daemon, tmp_path, immutable
):
    daemon = start_daemon()
    folders = daemon.folders
    ledger = Ledger()
    ledger.drop(folders.inbox, b"first.png", digit_png(0))
    daemon.wait_rows(1)
    digit_folders = [folders.outbox / str(d) for d in range(10)]
    for folder in digit_folders:
        folder.mkdir(exist_ok=True)
    [report_file] = folders.reports.glob("*.csv")
    locked = [*digit_folders, folders.failed, folders.review, report_file]
    immutable(*locked)
    for i in range(12):
        ledger.drop(folders.inbox, f"locked-{i}.png".encode(), digit_png(200 + i))
    ledger.drop(folders.inbox, b"locked-broken.png", b"random bytes, not a scan")
    wait_until(lambda: daemon.log.count("Operation not permitted") >= 2, 30, "retried writes")
    assert len(daemon.folders.report_rows()) == 1
    chattr("-i", *locked)
    daemon.wait_rows(len(ledger), timeout=90)
    assert daemon.stop() == 0
    assert_all_accounted(ledger, folders, [folders.reports])


# --- The inbox deleted and recreated.


def test_the_inbox_deleted_and_recreated_exits_6_then_the_restart_reads_on(start_daemon, tmp_path):
    config_path = write_config(tmp_path)
    folders = Folders.under(tmp_path)
    daemon = start_daemon(config_path)
    ledger = Ledger()
    for i in range(20):
        ledger.drop(folders.inbox, f"before-{i}.png".encode(), digit_png(300 + i))
    daemon.wait_rows(20)
    shutil.rmtree(folders.inbox)
    folders.inbox.mkdir()
    assert daemon.proc.wait(30) == 6
    assert "removed or replaced" in daemon.log or "is gone" in daemon.log
    daemon = start_daemon(config_path)  # what systemd's Restart= does
    for i in range(20):
        ledger.drop(folders.inbox, f"after-{i}.png".encode(), digit_png(400 + i))
    daemon.wait_rows(40)
    assert daemon.stop() == 0
    assert_all_accounted(ledger, folders, [folders.reports])


# --- Midnight.


def tz_with_midnight_in(seconds: float) -> str:
    """A POSIX TZ whose local midnight comes `seconds` from now (offsets to the second)."""
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    target = datetime.combine(now.date(), datetime.min.time()) - timedelta(seconds=seconds)
    offset = int((now - target).total_seconds()) % 86400  # local = utc - offset (POSIX sign)
    if offset > 12 * 3600:
        offset -= 86400
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    minutes, secs = divmod(rest, 60)
    return f"XXX{sign}{hours:02d}:{minutes:02d}:{secs:02d}"


def test_the_report_rolls_over_at_local_midnight_with_each_row_once(start_daemon, tmp_path):
    folders = Folders.under(tmp_path)
    ledger = Ledger()
    tz = tz_with_midnight_in(8)
    daemon = start_daemon(TZ=tz)

    def rows_on_the_second_day() -> int:
        days = sorted(folders.reports.glob("*.csv"))
        return len(days[1].read_text().splitlines()) - 1 if len(days) > 1 else 0

    with Feeder(folders.inbox, ledger, rate=20, bad_every=0, seed=5):
        wait_until(lambda: rows_on_the_second_day() >= 10, 40, "rows on the second day")
    daemon.wait_rows(len(ledger))
    assert daemon.stop() == 0
    assert_all_accounted(ledger, folders, [folders.reports])
    days = sorted(folders.reports.glob("*.csv"))
    assert len(days) == 2
    for path in days:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("time,file,")  # one header per day, and only there
        assert {line[:10] for line in lines[1:]} == {path.stem}


# --- In-process faults: the daemon on a thread, a stand-in reader, injected errors.


class DigitReader:
    """Reads files whose bytes are `digit:<d>...`; anything else is an error row."""

    model_id = "stand-in"

    def read(self, items: Sequence[tuple[Path, str]]) -> list[Row]:
        rows = []
        for path, name in items:
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if data.startswith(b"digit:"):
                rows.append(Row(name, Status.OK, digits=data[6:7].decode(), sha256=sha))
            else:
                rows.append(Row(name, Status.ERROR, error="not a digit file", sha256=sha))
        return rows

    def close(self) -> None:
        pass


@dataclass
class Running:
    daemon: service.Daemon
    thread: threading.Thread

    def stop(self) -> None:
        self.daemon.stop()
        self.thread.join(30)
        assert not self.thread.is_alive()


@pytest.fixture
def daemon_thread(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    """Run a daemon with a DigitReader on a thread; stopped and joined at the end at the latest."""
    running: list[Running] = []

    def start(**sections: dict[str, object]) -> Running:
        cfg = config.load(write_config(tmp_path, **sections))
        daemon = service.Daemon(cfg, DigitReader)
        thread = threading.Thread(target=daemon.run, name="daemon")
        thread.start()
        wait_until(lambda: hasattr(daemon, "watcher") and daemon.watcher.observer, 10, "start")
        running.append(Running(daemon, thread))
        return running[-1]

    yield start
    for run in running:
        run.stop()


def drop_digits(inbox: Path, ledger: Ledger, count: int, prefix: str) -> None:
    for i in range(count):
        ledger.drop(
            inbox, f"{prefix}-{i:05d}.png".encode(), f"digit:{i % 10} {prefix} {i}".encode()
        )


def rows_reach(folders: Folders, count: int, timeout: float = 30) -> None:
    wait_until(lambda: len(folders.report_rows()) >= count, timeout, f"{count} rows")


class Faults:
    """Switch an errno on at the daemon's write boundary: linking and renaming into folders,
    appending to reports, writing notes, journal transactions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.errno: int | None = None
        self.hits = 0
        for owner, name in (
            (filing.os, "link"),
            (filing, "rename_noreplace"),
            (filing, "write_note"),
            (report.Report, "append"),
            (journal.Journal, "record"),
        ):
            monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name)))

    def wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def faulty(*args: Any, **kwargs: Any) -> Any:
            code = self.errno
            if code is not None and threading.current_thread().name != "MainThread":
                self.hits += 1
                raise OSError(code, os.strerror(code))
            return real(*args, **kwargs)

        return faulty


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EIO])
def test_write_errors_an_operator_can_fix_hold_files_until_fixed(
    daemon_thread, tmp_path, monkeypatch, code
):
    faults = Faults(monkeypatch)
    daemon = daemon_thread()
    folders = Folders.under(tmp_path)
    ledger = Ledger()
    drop_digits(folders.inbox, ledger, 5, "before")
    rows_reach(folders, 5)
    faults.errno = code
    drop_digits(folders.inbox, ledger, 20, "during")
    ledger.drop(folders.inbox, b"during-bad.png", b"no digit here")
    wait_until(lambda: faults.hits >= 2, 20, "retried writes")
    assert len(folders.report_rows()) == 5
    assert [p for p in folders.failed.iterdir()] == []
    faults.errno = None
    rows_reach(folders, len(ledger))
    daemon.stop()
    assert_all_accounted(ledger, folders, [folders.reports])


def test_events_the_kernel_dropped_are_found_by_the_rescan(daemon_thread, tmp_path, monkeypatch):
    """An inotify queue overflow loses events silently; here every event is lost."""
    monkeypatch.setattr(watcher.InboxHandler, "dispatch", lambda self, event: None)
    daemon = daemon_thread(watch={"rescan_seconds": 1})
    folders = Folders.under(tmp_path)
    ledger = Ledger()
    drop_digits(folders.inbox, ledger, 3000, "burst")
    rows_reach(folders, len(ledger), timeout=120)
    daemon.stop()
    assert_all_accounted(ledger, folders, [folders.reports])


class JumpingClock:
    """Wall-clock time that can jump, for the modules that read it; monotonic time runs on."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.monotonic = time.monotonic
        clock = self

        class Shifted(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
                return datetime.now(tz) + timedelta(seconds=clock.offset)

        self.datetime = Shifted

    def time(self) -> float:
        return time.time() + self.offset


@pytest.mark.parametrize("jump", [+86400.0, -86400.0, +3600.0 * 30 * 24])
def test_a_wall_clock_jump_neither_stalls_nor_repeats_anything(
    daemon_thread, tmp_path, monkeypatch, jump
):
    clock = JumpingClock()
    monkeypatch.setattr(watcher, "time", clock)
    monkeypatch.setattr(service, "time", clock)
    monkeypatch.setattr(service, "datetime", clock.datetime)
    daemon = daemon_thread(watch={"settle_seconds": 0.5})
    folders = Folders.under(tmp_path)
    ledger = Ledger()
    drop_digits(folders.inbox, ledger, 10, "before")
    rows_reach(folders, 10)
    slow = folders.inbox / "written-in-place.png"
    done = threading.Event()

    def write_slowly() -> None:
        with open(slow, "wb") as f:
            f.write(b"digit:7")
            for _ in range(15):
                f.flush()
                time.sleep(0.1)
                clock.offset = jump  # the clock jumps while a file is still being written
                f.write(b" more")
        done.set()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    drop_digits(folders.inbox, ledger, 10, "after")
    writer.join()
    assert done.is_set()
    content = b"digit:7" + b" more" * 15
    ledger.dropped[slow.name.encode()] = hashlib.sha256(content).hexdigest()  # read whole
    rows_reach(folders, len(ledger))
    daemon.stop()
    assert_all_accounted(ledger, folders, [folders.reports])
