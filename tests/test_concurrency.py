"""Several daemons on one inbox (each with its own state folder, as config.yaml says), under a
stream of files: every file is claimed by exactly one of them, so each gets exactly one row in
one report and one place on disk, even when one of them is killed mid-stream."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench.torture import Feeder, Ledger, account, read_reports
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
