"""The real daemon, as a subprocess, on real files: every file dropped gets exactly one row and
ends up in exactly one place, through bursts, crashes, restarts, rivals and bad input.

The burst size is DIGIT_INBOX_E2E_BURST (default 2000; run 20000 by hand for the full check).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import (
    Folders,
    digit_png,
    drop,
    number_png,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.slow

BURST = int(os.environ.get("DIGIT_INBOX_E2E_BURST", "2000"))


def drop_digits(inbox: Path, indices: range, *, prefix: str = "scan") -> dict[str, str]:
    """Drop MNIST test digits renamed in; their names and sha256s."""
    dropped = {}
    for i in indices:
        data, _ = digit_png(i % 10_000, scale=3 + i // 10_000)  # MNIST has 10,000 test digits
        name = f"{prefix}-{i:05d}.png"
        drop(inbox, name, data)
        dropped[name] = hashlib.sha256(data).hexdigest()
    return dropped


def assert_each_exactly_once(
    folders: Folders, names: set[str], reports_too: Folders | None = None
) -> None:
    """One row per name (in `folders`' reports plus `reports_too`'s), one file per name in the
    filing folders, nothing left in the inbox or claimed in processing."""
    rows = Counter(r["file"] for r in folders.report_rows())
    if reports_too is not None:
        rows.update(r["file"] for r in reports_too.report_rows())
    assert set(rows) == names, f"missing rows: {sorted(names - set(rows))[:5]}"
    assert [n for n, c in rows.items() if c > 1] == []
    placed = Counter(p.name for p in folders.filed())
    assert set(placed) == names, f"missing files: {sorted(names - set(placed))[:5]}"
    assert [n for n, c in placed.items() if c > 1] == []
    assert [p.name for p in folders.inbox.iterdir() if not p.name.startswith(".")] == []
    assert list((folders.inbox / ".digit-inbox" / "processing").iterdir()) == []


def test_a_number_is_filed_in_the_folder_of_its_digits_with_one_row(start_daemon, tmp_path):
    daemon = start_daemon(write_config(tmp_path, filing={"layout": "{date}/{digits}"}))
    data, digits = number_png(4, 1)  # MNIST test digits 4 and 2
    assert digits == "42"
    drop(daemon.folders.inbox, "42.png", data)
    (row,) = daemon.wait_rows(1)
    assert row["status"] == "ok" and row["digits"] == "42"
    first, second = (float(c) for c in row["digit_confidences"].split())
    assert float(row["confidence"]) == pytest.approx(first * second, abs=2e-4)
    folder = Path(row["moved_to"]).parent
    assert folder.name == "42" and folder.parent.parent.name == "outbox"
    assert (daemon.folders.root / "var" / row["moved_to"]).is_file()
    assert daemon.stop() == 0


def test_copied_renamed_and_slowly_written_files_are_each_read_whole_once(start_daemon, tmp_path):
    daemon = start_daemon()
    inbox = daemon.folders.inbox
    copied, _ = digit_png(0)
    (inbox / "copied.png").write_bytes(copied)
    renamed, _ = digit_png(1)
    drop(inbox, "renamed.png", renamed)
    slow, slow_label = digit_png(2, scale=12)
    with open(inbox / "slow.png", "wb") as f:  # a slow writer with pauses shorter than settling
        for start in range(0, len(slow), 256):
            f.write(slow[start : start + 256])
            f.flush()
            time.sleep(0.05)
    rows = {r["file"]: r for r in daemon.wait_rows(3)}
    assert rows["slow.png"]["sha256"] == hashlib.sha256(slow).hexdigest()
    assert rows["slow.png"]["status"] == "ok" and rows["slow.png"]["digits"] == str(slow_label)
    assert rows["renamed.png"]["sha256"] == hashlib.sha256(renamed).hexdigest()
    for row in rows.values():
        assert (daemon.folders.root / "var" / row["moved_to"]).is_file()
        assert row["time"] and row["model"]
    assert daemon.stop() == 0
    assert_each_exactly_once(daemon.folders, {"copied.png", "renamed.png", "slow.png"})
    assert "copied.png -> " in daemon.log


def test_a_burst_of_files_gets_exactly_one_row_and_one_place_each(start_daemon, tmp_path):
    daemon = start_daemon(write_config(tmp_path, recognition={"workers": 2}))
    names = set(drop_digits(daemon.folders.inbox, range(BURST)))
    daemon.wait_rows(BURST, timeout=max(120, BURST / 10))
    assert daemon.stop() == 0
    assert_each_exactly_once(daemon.folders, names)
    rows = daemon.folders.report_rows()
    accuracy = sum(r["status"] == "ok" for r in rows) / len(rows)
    assert accuracy > 0.8  # a sane floor: these are clean MNIST test digits


def test_kill_9_at_any_point_then_restart_loses_and_repeats_nothing(start_daemon, tmp_path):
    config = write_config(tmp_path, recognition={"batch_size": 8})
    folders = Folders.under(tmp_path)
    daemon = start_daemon(config)
    names = set(drop_digits(folders.inbox, range(600)))
    rng = random.Random(4)
    for _ in range(4):  # kill at random moments: mid-claim, mid-read, mid-append, mid-filing
        seen = len(folders.report_rows())
        wait_until(lambda s=seen: len(folders.report_rows()) > s + 20, 120, "progress")
        time.sleep(rng.uniform(0, 0.2))
        daemon.kill()
        daemon = start_daemon(config)
    daemon.wait_rows(len(names), timeout=180)
    assert daemon.stop() == 0
    assert_each_exactly_once(folders, names)


def test_two_daemons_on_one_inbox_share_the_work_without_duplicates(start_daemon, tmp_path):
    shared = tmp_path / "shared"
    configs, folders = [], []
    for name in ("a", "b"):
        root = tmp_path / name
        root.mkdir()
        paths = {r: f"../shared/{r}" for r in ("inbox", "outbox", "review", "failed")}
        configs.append(write_config(root, paths={**paths, "reports": "./reports"}))
        folders.append(
            Folders(
                *(shared / r for r in ("inbox", "outbox", "review", "failed")),
                root / "reports",
                root / "var" / "state",
                root=root,
            )
        )
    first, second = (start_daemon(c) for c in configs)
    names = set(drop_digits(shared / "inbox", range(400)))

    def all_rows() -> list[dict[str, str]]:
        return folders[0].report_rows() + folders[1].report_rows()

    wait_until(lambda: len(all_rows()) >= len(names), 120, "all rows from both daemons")
    assert first.stop() == 0 and second.stop() == 0
    assert_each_exactly_once(folders[0], names, reports_too=folders[1])
    assert folders[0].report_rows() and folders[1].report_rows(), "one daemon did nothing"


def test_bad_files_are_failed_with_their_reason_and_the_daemon_keeps_going(start_daemon, tmp_path):
    config = write_config(tmp_path, watch={"empty_timeout_seconds": 1, "settle_seconds": 0.2})
    daemon = start_daemon(config)
    inbox = daemon.folders.inbox
    good, _ = digit_png(3)
    drop(inbox, "random.png", random.Random(1).randbytes(5000))
    drop(inbox, "page.png", b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    drop(inbox, "truncated.png", good[: len(good) // 2])
    (inbox / "empty.png").touch()
    (inbox / "link.png").symlink_to(tmp_path / "config.yaml")
    os.mkfifo(inbox / "fifo.png")
    bad = {"random.png", "page.png", "truncated.png", "empty.png", "link.png", "fifo.png"}
    rows = {r["file"]: r for r in daemon.wait_rows(len(bad), timeout=60)}
    assert set(rows) == bad
    for name, row in rows.items():
        assert row["status"] == "error" and row["error"], name
        note = daemon.folders.failed / f"{name}.error.txt"
        assert row["error"] in note.read_text(), name
        assert row["moved_to"] == f"failed/{name}"
    assert "empty" in rows["empty.png"]["error"] and "symbolic link" in rows["link.png"]["error"]
    assert (daemon.folders.failed / "link.png").is_symlink()
    assert (tmp_path / "config.yaml").exists()  # the link's target was never touched
    drop(inbox, "after.png", good)
    assert daemon.wait_rows(len(bad) + 1)[-1]["file"] == "after.png"
    assert daemon.stop() == 0


def test_sigterm_finishes_the_batch_in_hand_and_exits_0_with_nothing_half_done(start_daemon):
    daemon = start_daemon()
    names = set(drop_digits(daemon.folders.inbox, range(3000, 3500)))
    wait_until(lambda: len(daemon.folders.report_rows()) >= 40, 60, "the daemon to be busy")
    assert daemon.stop(signal.SIGTERM) == 0
    rows = Counter(r["file"] for r in daemon.folders.report_rows())
    placed = Counter(p.name for p in daemon.folders.filed())
    waiting = {p.name for p in daemon.folders.inbox.iterdir() if not p.name.startswith(".")}
    assert max(rows.values()) == 1 and set(rows) == set(placed)
    assert set(rows) | waiting == names and not set(rows) & waiting
    assert list((daemon.folders.inbox / ".digit-inbox" / "processing").iterdir()) == []
    assert "stopped after" in daemon.log
    # ...and the next start reads the rest.
    daemon = start_daemon(daemon.config)
    daemon.wait_rows(len(names))
    assert daemon.stop() == 0
    assert_each_exactly_once(daemon.folders, names)


def test_a_second_daemon_on_the_same_state_folder_exits_7_naming_the_config_and_the_first(
    start_daemon,
):
    first = start_daemon()
    second = start_daemon(first.config, wait=False)
    assert second.proc.wait(60) == 7
    assert f"{first.config}: another digit-inbox (pid {first.proc.pid}) is already" in second.log
    assert first.stop() == 0


def test_an_invalid_config_exits_3_without_starting(start_daemon, tmp_path):
    config = write_config(tmp_path, watch={"settle_seconds": "soon"})
    daemon = start_daemon(config, wait=False)
    assert daemon.proc.wait(60) == 3
    assert "watch.settle_seconds: must be a number" in daemon.log
    assert not (tmp_path / "var").exists()


def test_losing_the_inbox_exits_6_so_the_supervisor_restarts_the_daemon(start_daemon):
    daemon = start_daemon()
    os.rename(daemon.folders.inbox, daemon.folders.inbox.with_name("moved-away"))
    assert daemon.proc.wait(30) == 6
    last = daemon.log.strip().splitlines()[-1]
    assert "ERROR" in last and str(daemon.folders.inbox) in last


def test_readiness_watchdog_and_stopping_reach_systemd(start_daemon, tmp_path):
    path = tmp_path / "notify.sock"
    messages: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.2)

        def receive() -> None:
            while True:
                try:
                    messages.append(sock.recv(4096).decode())
                except TimeoutError:
                    if daemon_done.is_set():
                        return

        daemon_done = threading.Event()
        thread = threading.Thread(target=receive)
        thread.start()
        try:
            daemon = start_daemon(NOTIFY_SOCKET=str(path), WATCHDOG_USEC="400000")
            wait_until(lambda: any("WATCHDOG=1" in m for m in messages), 10, "a watchdog ping")
            assert daemon.stop() == 0
        finally:
            daemon_done.set()
            thread.join()
    text = "\n".join(messages)
    assert text.index("READY=1") < text.index("WATCHDOG=1") < text.index("STOPPING=1")
    assert "STATUS=" in text
