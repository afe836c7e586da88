"""Noticing files: which names are taken, when a file counts as written, and events as hints."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from watchdog.events import FileCreatedEvent, FileMovedEvent

from digit_inbox.daemon import config
from digit_inbox.daemon.errors import RuntimeFault
from digit_inbox.daemon.watcher import (
    InboxHandler,
    Pending,
    Triage,
    Watcher,
    choose_observer,
    mount_of,
    scan,
)
from tests.helpers import wait_until

MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
40 22 0:50 / /srv/scans rw,relatime - nfs4 nas:/scans rw,vers=4.2
41 40 0:51 / /srv/scans/local rw,relatime - ext4 /dev/sdb1 rw
42 22 0:52 / /mnt/my\\040drive rw - fuse.sshfs host: rw
"""


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    (tmp_path / "config.yaml").write_text(
        "watch: {settle_seconds: 0.3, empty_timeout_seconds: 1}\n"
    )
    cfg = config.load(tmp_path / "config.yaml")
    config.make_folders(cfg)
    return cfg


def pending_for(cfg: config.Config, trust_mtime: bool = False) -> Pending:
    return Pending(cfg.watch, trust_mtime=trust_mtime)


def taken(pending: Pending) -> list[str]:
    return [r.path.name for r in pending.take(100)[0]]


def test_the_mount_holding_a_path_is_the_longest_matching_mount_point():
    assert mount_of(Path("/srv/scans/inbox"), MOUNTINFO) == ("/srv/scans", "nfs4")
    assert mount_of(Path("/srv/scans/local/in"), MOUNTINFO) == ("/srv/scans/local", "ext4")
    assert mount_of(Path("/srv/scansx"), MOUNTINFO) == ("/", "ext4")
    assert mount_of(Path("/mnt/my drive/in"), MOUNTINFO) == ("/mnt/my drive", "fuse.sshfs")


def test_a_local_inbox_is_watched_with_inotify_unless_polling_is_configured(cfg):
    assert choose_observer(cfg.watch, cfg.paths.inbox)[0] == "inotify"
    polling = replace(cfg.watch, observer="polling")
    assert choose_observer(polling, cfg.paths.inbox)[0] == "polling"


def test_a_file_renamed_in_is_ready_at_once(cfg):
    pending = pending_for(cfg)
    path = cfg.paths.inbox / "scan.png"
    path.write_bytes(b"data")
    pending.add(path, renamed_in=True)
    assert taken(pending) == ["scan.png"]
    assert len(pending) == 0


def test_a_file_put_back_to_settle_gets_no_fast_path_even_when_renamed_in(cfg):
    pending = pending_for(cfg)
    path = cfg.paths.inbox / "growing.png"
    path.write_bytes(b"data")
    pending.add(path, must_settle=True)
    pending.add(path, renamed_in=True, closed=True)  # the events of the rename back
    assert taken(pending) == []
    assert pending.take(10)[1] == pytest.approx(0.3, abs=0.05)


def test_a_created_file_waits_until_unchanged_for_settle_seconds(cfg):
    pending = pending_for(cfg)
    path = cfg.paths.inbox / "scan.png"
    path.write_bytes(b"part")
    pending.add(path)
    assert taken(pending) == []
    time.sleep(0.1)
    with open(path, "ab") as f:
        f.write(b" more")  # still being written: the clock starts again
    rewritten = time.monotonic()
    assert taken(pending) == []
    ready_at = wait_until(lambda: taken(pending) and time.monotonic(), 5, "settling")
    assert ready_at - rewritten >= cfg.watch.settle_seconds
    assert len(pending) == 0


def test_a_file_closed_by_its_writer_settles_four_times_faster(cfg):
    slow, fast = pending_for(cfg), pending_for(cfg)
    a, b = cfg.paths.inbox / "a.png", cfg.paths.inbox / "b.png"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    slow.add(a)
    fast.add(b, closed=True)
    _, slow_wait = slow.take(10)
    _, fast_wait = fast.take(10)
    assert slow_wait == pytest.approx(0.3, abs=0.05)
    assert fast_wait == pytest.approx(0.075, abs=0.03)


def test_an_old_file_found_by_a_scan_is_ready_at_once_on_a_local_disk(cfg):
    pending = pending_for(cfg, trust_mtime=True)
    path = cfg.paths.inbox / "old.png"
    path.write_bytes(b"x")
    os.utime(path, (time.time() - 60, time.time() - 60))
    pending.add(path)
    assert taken(pending) == ["old.png"]


def test_an_empty_file_is_never_taken_until_its_timeout(cfg):
    pending = pending_for(cfg, trust_mtime=True)
    path = cfg.paths.inbox / "empty.png"
    path.touch()
    os.utime(path, (time.time() - 60, time.time() - 60))
    pending.add(path, renamed_in=True)
    assert taken(pending) == []
    wait_until(lambda: taken(pending) == ["empty.png"], 5, "the empty-file timeout")


def test_symlinks_and_fifos_are_ready_at_once_and_never_opened(cfg):
    pending = pending_for(cfg)
    link, fifo = cfg.paths.inbox / "link.png", cfg.paths.inbox / "fifo.png"
    link.symlink_to("/etc/passwd")
    os.mkfifo(fifo)
    pending.add(link)
    pending.add(fifo)
    assert sorted(taken(pending)) == ["fifo.png", "link.png"]


def test_a_path_that_vanished_is_dropped(cfg):
    pending = pending_for(cfg)
    pending.add(cfg.paths.inbox / "gone.png")
    assert pending.take(10) == ([], None)
    assert len(pending) == 0


def test_take_returns_at_most_the_limit_oldest_first(cfg):
    pending = pending_for(cfg)
    for i in range(5):
        (cfg.paths.inbox / f"{i}.png").write_bytes(b"x")
        pending.add(cfg.paths.inbox / f"{i}.png", renamed_in=True)
    assert [r.path.name for r in pending.take(3)[0]] == ["0.png", "1.png", "2.png"]
    assert len(pending) == 2


def test_triage_takes_every_file_but_temporary_hidden_and_system_ones(cfg, caplog):
    caplog.set_level(logging.DEBUG)
    triage = Triage(cfg.watch, cfg.paths.inbox, set())
    inbox = cfg.paths.inbox
    assert triage.wanted(inbox / "scan.PNG", is_dir=False)
    assert triage.wanted(inbox / "notes.txt", is_dir=False)  # to be failed with a reason
    notes = ("scan.png.error.txt", "scan.png.review.txt")  # dropped back with their file
    for name in (".hidden.png", "scan.png.part", "~lock.png", "Thumbs.db", *notes):
        assert not triage.wanted(inbox / name, is_dir=False), name
    assert not triage.wanted(inbox / "sub" / "scan.png", is_dir=False)
    assert triage.wanted(inbox / "sub", is_dir=True)  # failed: folders are not read
    assert not triage.wanted(inbox / ".digit-inbox" / "processing" / "x.png", is_dir=False)
    assert not triage.wanted(cfg.paths.outbox / "x.png", is_dir=False)
    triage.wanted(inbox / "~lock.png", is_dir=False)
    assert caplog.text.count("leaving ~lock.png in the inbox untouched") == 1


def test_recursive_triage_reads_sub_folders_but_not_configured_folders_inside(cfg):
    watch = replace(cfg.watch, recursive=True)
    inside = cfg.paths.inbox / "done"
    triage = Triage(watch, cfg.paths.inbox, {inside})
    (cfg.paths.inbox / "a" / "b").mkdir(parents=True)
    (cfg.paths.inbox / "a" / "b" / "deep.png").write_bytes(b"x")
    inside.mkdir()
    (inside / "filed.png").write_bytes(b"x")
    (cfg.paths.inbox / "top.png").write_bytes(b"x")
    found = sorted(
        p.relative_to(cfg.paths.inbox).as_posix() for p, _ in scan(cfg.paths.inbox, triage)
    )
    assert found == ["a/b/deep.png", "top.png"]


def test_the_handler_never_raises(cfg, caplog):
    class Broken(Pending):
        def add(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("boom")

    handler = InboxHandler(Broken(cfg.watch, trust_mtime=False),
                           Triage(cfg.watch, cfg.paths.inbox, set()), lambda: None)  # fmt: skip
    handler.dispatch(FileCreatedEvent(str(cfg.paths.inbox / "a.png")))
    assert "boom" in caplog.text


def test_moves_into_the_inbox_are_fast_and_moves_out_are_ignored(cfg):
    pending = pending_for(cfg)
    handler = InboxHandler(pending, Triage(cfg.watch, cfg.paths.inbox, set()), lambda: None)
    (cfg.paths.inbox / "in.png").write_bytes(b"x")
    handler.dispatch(FileMovedEvent("", str(cfg.paths.inbox / "in.png")))
    handler.dispatch(FileMovedEvent(str(cfg.paths.inbox / "out.png"), ""))
    assert taken(pending) == ["in.png"]


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_the_watcher_notices_created_and_renamed_files(cfg, observer, tmp_path):
    cfg = replace(cfg, watch=replace(cfg.watch, observer=observer, polling_interval_seconds=0.1))
    with Watcher(cfg, Triage(cfg.watch, cfg.paths.inbox, set())) as watcher:
        (cfg.paths.inbox / "written.png").write_bytes(b"x")
        aside = tmp_path / "aside.png"
        aside.write_bytes(b"y")
        os.rename(aside, cfg.paths.inbox / "renamed.png")
        names: set[str] = set()

        def both() -> bool:
            names.update(taken(watcher.pending))
            return names == {"written.png", "renamed.png"}

        wait_until(both, 10, "both files")
        watcher.check()


def test_a_rescan_finds_files_whose_events_were_missed(cfg):
    watcher = Watcher(cfg, Triage(cfg.watch, cfg.paths.inbox, set()))
    (cfg.paths.inbox / "a.png").write_bytes(b"x")
    (cfg.paths.inbox / "b.txt").write_bytes(b"x")
    (cfg.paths.inbox / "c.tmp").write_bytes(b"x")
    assert watcher.rescan() == 2
    assert len(watcher.pending) == 2


def test_losing_the_inbox_is_a_runtime_fault(cfg):
    with Watcher(cfg, Triage(cfg.watch, cfg.paths.inbox, set())) as watcher:
        shutil.rmtree(cfg.paths.inbox)

        def faulted() -> bool:
            try:
                watcher.check()
            except RuntimeFault as exc:
                return "removed or replaced" in str(exc) or "is gone" in str(exc)
            return False

        wait_until(faulted, 10, "the fault")
