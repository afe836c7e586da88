"""Noticing files: watchdog events and rescans feed one set of pending paths.

Events are hints, never facts. The handler only records a path in `Pending` (it never raises,
never touches the file), and the daemon's loop decides, from `lstat`, when a path is ready:
- renamed into the inbox (the writer's way of saying "done"): at once, if it is not empty;
- closed after writing: once unchanged for a quarter of `settle_seconds`;
- otherwise: once size, mtime and inode are unchanged for `settle_seconds` (on local disks a
  file whose mtime is that old already counts, so a backlog found at start goes at once);
- empty: never while it may still be written; after `empty_timeout_seconds` it is taken anyway
  (and reported as an empty file) so it cannot sit in the inbox forever unnoticed;
- not a regular file (symlink, pipe, socket, device; a folder when not recursive): taken as is,
  never opened, and failed with the reason.
A full rescan at start, every `rescan_seconds` and whenever the queue drains catches whatever the
events missed (an inotify queue overflow drops events silently).

The inbox is always watched recursively so that the daemon's own claims (renames into
`.digit-inbox/processing/`) pair up as moves inside the watch; an unpaired move-out would hold
back every later event by half a second in watchdog's move grouping. Without `recursive`, events
below sub-folders are simply ignored.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import BaseObserver

from digit_inbox.daemon import config
from digit_inbox.daemon.errors import RuntimeFault

log = logging.getLogger(__name__)

# Filesystems where inotify sees only this host's changes (or none at all): poll them instead.
REMOTE_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs"}
REMOTE_FILESYSTEMS |= {"lustre", "gpfs", "vboxsf", "virtiofs", "davfs"}
# Wall-clock drift from monotonic time beyond this since a file was noticed is a clock step.
CLOCK_SLACK = 0.25
EVENTS: list[type[FileSystemEvent]] = [
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
]


# --- Which observer.


def mount_of(path: Path, mountinfo: str) -> tuple[str, str]:
    """(mount point, filesystem type) holding `path`, from /proc/self/mountinfo's text."""
    best = ("/", "unknown")
    target = os.path.realpath(path)
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        dash = fields.index("-")
        if len(fields) <= dash + 1 or len(fields) < 5:
            continue
        point = fields[4].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best[0]):
            best = (point, fields[dash + 1])
    return best


def is_remote(fstype: str) -> bool:
    return fstype in REMOTE_FILESYSTEMS or fstype.startswith("fuse")


def choose_observer(watch: config.Watch, inbox: Path) -> tuple[str, str]:
    """ "inotify" or "polling" for `inbox`, and why (for the log)."""
    interval = watch.polling_interval_seconds
    if watch.observer == "polling":
        return "polling", f"polling every {interval:g} s (watch.observer: polling)"
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            point, fstype = mount_of(inbox, f.read())
    except OSError:
        point, fstype = "?", "unknown"
    if watch.observer == "auto" and is_remote(fstype):
        return "polling", (
            f"polling every {interval:g} s: the inbox is on {fstype} ({point}), where inotify "
            "misses changes made by other machines"
        )
    return "inotify", f"inotify ({fstype} at {point})"


def make_observer(kind: str, watch: config.Watch) -> tuple[BaseObserver, str]:
    """A new observer of `kind`; polling instead, with the reason, if inotify is unavailable."""
    from watchdog.observers.polling import PollingObserver

    reason = ""
    if kind == "inotify":
        try:
            from watchdog.observers.inotify import InotifyObserver

            # Full events: a file moved in from outside is a move (fast), not a creation.
            return InotifyObserver(generate_full_events=True), ""
        except Exception as exc:  # not Linux, or no inotify in this libc
            reason = f"polling: inotify is unavailable ({exc})"
    return PollingObserver(timeout=watch.polling_interval_seconds), reason


# --- Pending paths.


@dataclass(slots=True)
class Candidate:
    """What has been seen so far of a path that may become ready (slots: a backlog of 100,000
    paths costs about 25 MB)."""

    noticed: float  # Unix time first seen
    first_seen: float  # monotonic
    renamed_in: bool = False
    closed: bool = False
    must_settle: bool = False  # put back after it changed while read: no fast path
    last: tuple[int, int, int] | None = None  # (size, mtime_ns, inode) at the last look
    unchanged_since: float = 0.0  # monotonic time `last` was first seen


@dataclass
class Ready:
    """A path to claim now, with the lstat that made it ready."""

    path: Path
    noticed: float
    st: os.stat_result


class Pending:
    """Paths noticed in the inbox and not yet taken; thread-safe, paths only (memory stays flat)."""

    def __init__(self, watch: config.Watch, *, trust_mtime: bool) -> None:
        self.watch = watch
        self.trust_mtime = trust_mtime  # mtimes come from this host's clock (local disks)
        self._items: dict[str, Candidate] = {}  # insertion order: oldest first
        self._cond = threading.Condition()
        self._wakeup = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def add(
        self,
        path: Path,
        *,
        renamed_in: bool = False,
        closed: bool = False,
        must_settle: bool = False,
    ) -> None:
        key = str(path)
        with self._cond:
            item = self._items.get(key)
            if item is None:
                self._items[key] = Candidate(
                    time.time(), time.monotonic(), renamed_in, closed, must_settle
                )
            else:
                item.renamed_in |= renamed_in
                item.closed |= closed
                item.must_settle |= must_settle
            self._wakeup = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Make `wait` return now (a stop was requested, or the loop has other work)."""
        with self._cond:
            self._wakeup = True
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        """Sleep until a path is added, `wake` is called, or `timeout` seconds pass."""
        with self._cond:
            if not self._wakeup:
                self._cond.wait(timeout)
            self._wakeup = False

    def take(self, limit: int) -> tuple[list[Ready], float | None]:
        """Up to `limit` ready paths, oldest first, and when to look again at the others."""
        ready: list[Ready] = []
        recheck: float | None = None
        now, wall = time.monotonic(), time.time()
        with self._cond:
            for key, item in list(self._items.items()):
                if len(ready) >= limit:
                    break
                try:
                    st = os.lstat(key)
                except FileNotFoundError:
                    del self._items[key]  # gone (moved out, or another daemon claimed it)
                    continue
                except OSError as exc:
                    log.warning("cannot look at %s: %s; will try again", key, exc.strerror)
                    continue
                wait = self._wait_for(item, st, now, wall)
                if wait <= 0:
                    del self._items[key]
                    ready.append(Ready(Path(key), item.noticed, st))
                else:
                    recheck = wait if recheck is None else min(recheck, wait)
        return ready, recheck

    def _wait_for(self, item: Candidate, st: os.stat_result, now: float, wall: float) -> float:
        """Seconds until `item` may be ready (<= 0: ready now)."""
        mode = st.st_mode
        if stat.S_ISDIR(mode):  # only sub-folders that will be failed get here: wait for quiet
            return max(self.watch.settle_seconds - (wall - st.st_mtime), 0.0)
        if not stat.S_ISREG(mode):
            return 0.0
        if st.st_size == 0:
            return self.watch.empty_timeout_seconds - (now - item.first_seen)
        if item.renamed_in and not item.must_settle:
            return 0.0
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        if key != item.last:
            item.last, item.unchanged_since = key, now
        settle = self.watch.settle_seconds
        if item.closed and not item.must_settle:
            settle /= 4
        # The mtime counts only while the wall clock ran in step since the file was noticed:
        # after a step (NTP, a resumed VM) a file still being written can look old.
        steady = abs((wall - item.noticed) - (now - item.first_seen)) < CLOCK_SLACK
        if self.trust_mtime and steady and wall - st.st_mtime >= settle:
            return 0.0  # untouched for `settle` by this host's clock
        return settle - (now - item.unchanged_since)


# --- What is a candidate.


class Triage:
    """Decides which names in the inbox to take: all but temporary, hidden and configured ones
    (and sub-folders' files unless recursive); says once about the others."""

    def __init__(self, watch: config.Watch, inbox: Path, skip: set[Path]) -> None:
        self.watch = watch
        self.inbox = inbox
        self.skip = skip  # configured folders that happen to be inside the inbox
        self._told: set[Path] = set()
        self._told_limit = 10_000

    def wanted(self, path: Path, *, is_dir: bool) -> bool:
        """Whether `path` (inside the inbox) should be taken: read, or failed as a non-file or a
        file without one of watch.extensions."""
        try:
            relative = path.relative_to(self.inbox)
        except ValueError:
            return False
        parts = relative.parts
        if not parts or any(p.startswith(".") for p in parts) or path in self.skip:
            return False
        if not self.watch.recursive and len(parts) > 1:
            return False
        name = parts[-1]
        if config.is_ignored(name, self.watch):
            self._tell(path, logging.DEBUG, "a temporary or system file")
            return False
        if is_dir:
            return not self.watch.recursive  # a folder is failed when folders are not read
        return True  # without a scan extension too: it gets an error row, not silence

    def _tell(self, path: Path, level: int, why: str) -> None:
        if path not in self._told and len(self._told) < self._told_limit:
            self._told.add(path)
            log.log(level, "leaving %s in the inbox untouched: %s", path.name, why)


def scan(inbox: Path, triage: Triage) -> Iterator[tuple[Path, float]]:
    """Every wanted path in the inbox with its mtime; sub-folders too when recursive."""
    folders = [inbox]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(folder) as entries:
                found = list(entries)
        except FileNotFoundError:
            continue
        for entry in found:
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if is_dir and triage.watch.recursive:
                if not entry.name.startswith(".") and path not in triage.skip:
                    folders.append(path)
                continue
            if triage.wanted(path, is_dir=is_dir):
                yield path, mtime


# --- Events.


class InboxHandler(FileSystemEventHandler):
    """Turns watchdog events into pending paths. Never raises: a bad event must not stop the
    observer thread, so everything is caught and logged."""

    def __init__(self, pending: Pending, triage: Triage, on_inbox_gone: Callable[[], None]) -> None:
        self.pending = pending
        self.triage = triage
        self.on_inbox_gone = on_inbox_gone

    def dispatch(self, event: FileSystemEvent) -> None:
        try:
            self._dispatch(event)
        except Exception:
            log.exception("ignored an error while handling %r", event)

    def _dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, DirDeletedEvent) and Path(os.fsdecode(event.src_path)) == (
            self.triage.inbox
        ):
            self.on_inbox_gone()
            return
        if isinstance(event, FileMovedEvent | DirMovedEvent):
            if not event.dest_path:
                return  # moved out of the inbox
            path, renamed_in = Path(os.fsdecode(event.dest_path)), True
        elif isinstance(event, FileCreatedEvent | DirCreatedEvent | FileModifiedEvent):
            path, renamed_in = Path(os.fsdecode(event.src_path)), False
        elif isinstance(event, FileClosedEvent):
            path = Path(os.fsdecode(event.src_path))
            if self.triage.wanted(path, is_dir=False):
                self.pending.add(path, closed=True)
            return
        else:
            return
        if self.triage.wanted(path, is_dir=event.is_directory):
            self.pending.add(path, renamed_in=renamed_in)


class Watcher:
    """The observer on the inbox, its pending set and the rescans; a context manager that always
    stops and joins the observer's threads."""

    def __init__(self, cfg: config.Config, triage: Triage) -> None:
        self.cfg = cfg
        self.inbox = cfg.paths.inbox
        self.triage = triage
        self.kind, self.reason = choose_observer(cfg.watch, self.inbox)
        # Only a local disk's mtimes come from this host's clock and can stand for settling.
        self.pending = Pending(cfg.watch, trust_mtime=self.kind == "inotify")
        self.inbox_id = self._inbox_id()
        self.observer: BaseObserver | None = None
        self.gone = False
        self.last_scan = 0.0

    def _inbox_id(self) -> tuple[int, int]:
        try:
            st = os.stat(self.inbox)
        except OSError as exc:
            raise RuntimeFault(
                f"the inbox {self.inbox} is gone ({exc.strerror}); re-create it or fix "
                "paths.inbox, then restart"
            ) from exc
        return st.st_dev, st.st_ino

    def _inbox_gone(self) -> None:
        self.gone = True
        self.pending.wake()

    def __enter__(self) -> Watcher:
        observer, fallback = make_observer(self.kind, self.cfg.watch)
        self.observer = observer
        if fallback:
            self.kind, self.reason = "polling", fallback
            self.pending.trust_mtime = False
        handler = InboxHandler(self.pending, self.triage, self._inbox_gone)
        try:
            observer.schedule(handler, str(self.inbox), recursive=True, event_filter=EVENTS)
            observer.start()
        except BaseException:
            self.__exit__()
            raise
        log.info("watching %s with %s", self.inbox, self.reason)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.observer is not None:
            self.observer.stop()
            if self.observer.is_alive():
                self.observer.join(timeout=10)
            self.observer = None

    def rescan(self) -> int:
        """Add everything in the inbox to the pending set (oldest first); how many were found."""
        self.last_scan = time.monotonic()
        found = sorted(scan(self.inbox, self.triage), key=lambda pair: pair[1])
        for path, _ in found:
            self.pending.add(path)
        return len(found)

    def check(self) -> None:
        """RuntimeFault if the observer died or the inbox vanished: the supervisor restarts us."""
        if self.gone or self._inbox_id() != self.inbox_id:
            raise RuntimeFault(
                f"the inbox {self.inbox} was removed or replaced; restarting to watch it again"
            )
        observer = self.observer
        dead = observer is None or not observer.is_alive()
        if observer is not None and not dead:
            dead = any(not emitter.is_alive() for emitter in observer.emitters)
        if dead:
            raise RuntimeFault(
                f"the watcher thread on {self.inbox} stopped; restarting to watch it again"
            )
