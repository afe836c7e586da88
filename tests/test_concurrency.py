"""Several daemons on one inbox (each with its own state folder, as config.yaml says), under a
stream of files: every file is claimed by exactly one of them, so each gets exactly one row in
one report and one place on disk, even when one of them is killed mid-stream."""

from __future__ import annotations

import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.torture import Feeder, Ledger, account, read_reports
from digit_inbox.daemon.config import WORK_DIR
from tests.helpers import wait_until, write_config

pytestmark = pytest.mark.slow

SHARED = ("inbox", "outbox", "review", "failed")


def configs(tmp_path: Path, count: int, *, shared_reports: bool) -> list[Path]:
    """`count` configs on tmp_path/shared's folders, each with its own state (and reports)."""
    made = []
    for i in range(count):
        root = tmp_path / f"daemon-{i}"
        root.mkdir()
        paths = {role: f"../shared/{role}" for role in SHARED}
        paths["reports"] = "../shared/reports" if shared_reports else "./reports"
        made.append(write_config(root, paths=paths, recognition={"batch_size": 8}))
    return made


def shared_folders(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(**{role: tmp_path / "shared" / role for role in SHARED})


def all_reports(tmp_path: Path) -> list[Path]:
    return [tmp_path / "shared" / "reports", *tmp_path.glob("daemon-*/reports")]


def row_count(tmp_path: Path) -> int:
    return len(read_reports(p for p in all_reports(tmp_path) if p.is_dir())[0])


@pytest.mark.parametrize(
    ("count", "shared_reports", "kill_one"), [(2, True, False), (4, False, True)]
)
def test_daemons_sharing_an_inbox_neither_duplicate_nor_lose_a_file(
    start_daemon, tmp_path, count, shared_reports, kill_one
):
    paths = configs(tmp_path, count, shared_reports=shared_reports)
    (tmp_path / "shared" / "inbox").mkdir(parents=True)
    folders = shared_folders(tmp_path)
    daemons = [start_daemon(p) for p in paths]
    ledger = Ledger()
    with Feeder(folders.inbox, ledger, rate=60, seed=count):
        wait_until(lambda: row_count(tmp_path) >= 60, 60, "the daemons to be busy")
        if kill_one:
            victim = random.Random(count).randrange(count)
            daemons[victim].kill()
            alone = row_count(tmp_path) + 20  # the others go on alone for a while
            wait_until(lambda: row_count(tmp_path) >= alone, 60, "the others to go on")
            daemons[victim] = start_daemon(paths[victim])
        wait_until(lambda: row_count(tmp_path) >= 200, 90, "more rows")
    wait_until(lambda: row_count(tmp_path) >= len(ledger), 90, "every row")
    for daemon in daemons:
        assert daemon.stop() == 0
    reports = [p for p in all_reports(tmp_path) if p.is_dir()]
    result = account(ledger, folders, reports)
    assert result.problems == []
    assert result.accounted == len(ledger)
    working = [p for p in reports if read_reports([p])[0]]
    assert shared_reports or len(working) == count, "a daemon did nothing"


def test_daemons_on_two_hosts_sharing_an_inbox_survive_one_killed(start_daemon, tmp_path):
    """Two machines on one NFS inbox, as far as one machine can fake it: each daemon has its own
    host name (in its claim names) and state folder; one is killed -9 mid-stream and restarted."""
    hosts = ("scanner-a", "scanner-b")
    paths = configs(tmp_path, len(hosts), shared_reports=True)
    (tmp_path / "shared" / "inbox").mkdir(parents=True)
    folders = shared_folders(tmp_path)
    daemons = [start_daemon(p, host=h) for p, h in zip(paths, hosts, strict=True)]
    processing = folders.inbox / WORK_DIR / "processing"
    claimed_by: set[str] = set()

    def rows_at_least(count: int) -> bool:
        if processing.is_dir():  # whose claims are in flight: host.pid.tag.counter_name
            claimed_by.update(name.split(".")[0] for name in os.listdir(processing))
        return row_count(tmp_path) >= count

    ledger = Ledger()
    with Feeder(folders.inbox, ledger, rate=60, seed=7):
        wait_until(lambda: rows_at_least(60), 60, "both daemons to be busy")
        daemons[1].kill()
        alone = row_count(tmp_path) + 20
        wait_until(lambda: rows_at_least(alone), 60, "the other host to go on alone")
        daemons[1] = start_daemon(paths[1], host=hosts[1])
        wait_until(lambda: rows_at_least(200), 90, "more rows")
    wait_until(lambda: rows_at_least(len(ledger)), 90, "every row")
    for daemon in daemons:
        assert daemon.stop() == 0
    result = account(ledger, folders, [tmp_path / "shared" / "reports"])
    assert result.problems == []
    assert result.accounted == len(ledger)
    assert claimed_by and claimed_by <= set(hosts), claimed_by
