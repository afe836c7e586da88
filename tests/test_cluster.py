"""Reading on a Dask cluster: a real LocalCluster of two worker processes on 127.0.0.1 (one per
module: it takes seconds to start) reads like `classify`, survives a worker killed mid-run with
exactly one row per file, and a worker that cannot see the scans stops the run with a clear
usage error."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from digit_inbox.daemon import cli, cluster, rows
from digit_inbox.daemon.errors import ExitCode
from tests.helpers import daemon_env, digit_png, threads_left

distributed = pytest.importorskip("distributed")


@contextlib.contextmanager
def local_client() -> Iterator[distributed.Client]:
    """A client of a new LocalCluster: two worker processes, one thread each, 127.0.0.1 only."""
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            worker_dashboard_address="127.0.0.1:0",
        ) as local,
        distributed.Client(local) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    with local_client() as c:
        yield c


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """As conftest's, except Dask's offload thread: one per process, started on first use."""
    before = set(threading.enumerate())
    yield
    leaked = threads_left(before, ignore=lambda t: t.name.startswith("Dask-Offload"))
    assert not leaked, f"threads left running: {leaked}"


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    (folder / "sub").mkdir(parents=True)
    for i in range(10):
        (folder / ("sub" if i % 3 == 0 else ".") / f"{i:03d}.png").write_bytes(digit_png(i)[0])
    return folder


def parse(path: Path) -> list[dict[str, str]]:
    text = path.read_bytes().decode("utf-8")
    assert text.startswith(rows.header_line())
    return list(csv.DictReader(io.StringIO(text)))


def stable(found: list[dict[str, str]]) -> list[tuple[str, ...]]:
    return sorted((r["file"], r["status"], r["digits"], r["sha256"]) for r in found)


def test_classify_on_the_cluster_gives_the_rows_of_a_local_run(client, scans, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    address = client.scheduler.address
    here, there = tmp_path / "here.csv", tmp_path / "there.csv"
    assert cli.main(["classify", "--workers", "0", "-o", str(here), str(scans)]) == ExitCode.OK
    code = cli.main(["classify", "--scheduler", address, "-o", str(there), "--resume", str(scans)])
    assert code == ExitCode.OK
    assert stable(parse(there)) == stable(parse(here))
    assert "10 files in" in caplog.text
    # Resumable the same way: a second run reads nothing.
    before = there.read_bytes()
    again = ["classify", "--scheduler", address, "-o", str(there), "--resume", str(scans)]
    assert cli.main(again) == ExitCode.OK
    assert there.read_bytes() == before


def test_each_worker_process_loads_the_model_once(client, scans):
    items = [(scans / f"{i:03d}.png", f"{i:03d}.png") for i in range(1, 10) if i % 3]
    list(cluster.read(client, items * 4, chunk_files=2))
    loaded = client.run(lambda: len(cluster._readers))
    assert set(loaded.values()) == {1}


@pytest.mark.slow
def test_a_worker_killed_mid_run_leaves_every_file_exactly_one_row(tmp_path):
    """On a cluster of its own: the replaced worker's threads end with that cluster."""
    folder = tmp_path / "many"
    folder.mkdir()
    items, labels = [], {}
    for i in range(240):
        png, labels[f"{i:03d}.png"] = digit_png(i % 40)
        (folder / f"{i:03d}.png").write_bytes(png)
        items.append((folder / f"{i:03d}.png", f"{i:03d}.png"))
    seen: Counter[str] = Counter()
    read = {rows.Status.OK, rows.Status.LOW_CONFIDENCE}  # a digit was read (review or not)
    with local_client() as client:
        victim = next(iter(client.run(os.getpid).values()))
        for row in cluster.read(client, items, chunk_files=4):
            seen[row.file] += 1
            assert row.status in read and row.digits == str(labels[row.file]), row
            if len(seen) == 20:
                os.kill(victim, signal.SIGKILL)
        assert victim not in client.run(os.getpid).values()  # it really died (and was replaced)
    assert seen == Counter(name for _, name in items)


def test_a_worker_that_cannot_see_a_folder_stops_the_run_with_a_usage_error(client, tmp_path):
    unseen = tmp_path / "only-on-the-client" / "a.png"
    with pytest.raises(cluster.FolderNotShared) as caught:
        list(cluster.read(client, [(unseen, "a.png")]))
    assert caught.value.exit_code == ExitCode.USAGE
    assert str(unseen.parent) in str(caught.value) and "same path" in str(caught.value)


def test_workers_and_scheduler_together_are_a_usage_error(scans, caplog):
    code = cli.main(["classify", "--scheduler", "tcp://127.0.0.1:1", "--workers", "2", str(scans)])
    assert code == ExitCode.USAGE and "--workers is for this machine" in caplog.text


def test_a_model_the_workers_cannot_load_is_a_model_error(client, scans, tmp_path, caplog):
    command = ["classify", "--scheduler", client.scheduler.address, str(scans)]
    assert cli.main([*command, "--model", str(tmp_path / "none.onnx")]) == ExitCode.MODEL
    assert "cannot load the model" in caplog.text


def test_an_unreachable_scheduler_is_a_usage_error(scans):
    """In a process of its own: a client that never connected keeps its IO thread running."""
    command = [sys.executable, "-m", "digit_inbox.daemon", "classify", str(scans)]
    command += ["--scheduler", "tcp://127.0.0.1:9"]
    env = daemon_env(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT="1s")
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in done.stderr
    assert done.stdout == ""
