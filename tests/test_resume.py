"""`classify --output FILE --resume`: stopped at any point, even killed, and run again, every file
ends with exactly one row in FILE, and no row is ever torn."""

from __future__ import annotations

import csv
import fcntl
import io
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from digit_inbox.daemon import cli, rows
from digit_inbox.daemon.errors import ExitCode
from digit_inbox.daemon.resume import Appender
from tests.helpers import daemon_env, digit_png, wait_until


def classify(*args: str | Path) -> int:
    return cli.main(["classify", "--workers", "0", *map(str, args)])


def read_csv(path: Path) -> list[dict[str, str]]:
    text = path.read_bytes().decode("utf-8")
    assert text.startswith(rows.header_line())
    assert text.endswith("\r\n"), "a torn last line"
    return list(csv.DictReader(io.StringIO(text)))


def files_of(path: Path) -> Counter[str]:
    return Counter(Path(r["file"]).name for r in read_csv(path))


@pytest.fixture(autouse=True)
def summaries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)  # the summary is logged at INFO


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(12):
        (folder / f"{i:03d}.png").write_bytes(digit_png(i)[0])
    return folder


def test_a_resumed_run_into_a_new_file_gives_the_same_rows_as_a_plain_run(scans, tmp_path):
    assert classify(scans, "-o", tmp_path / "plain.csv") == ExitCode.OK
    assert classify(scans, "-o", tmp_path / "resumed.csv", "--resume") == ExitCode.OK

    def stable(path: Path) -> list[tuple[str, ...]]:
        return [(r["file"], r["status"], r["digits"], r["sha256"]) for r in read_csv(path)]

    assert stable(tmp_path / "resumed.csv") == stable(tmp_path / "plain.csv")


def test_resuming_a_finished_run_reads_nothing_and_changes_nothing(scans, tmp_path, caplog):
    out = tmp_path / "rows.csv"
    classify(scans, "-o", out, "--resume")
    before = out.read_bytes()
    caplog.clear()
    assert classify(scans, "-o", out, "--resume") == ExitCode.OK
    assert out.read_bytes() == before
    assert "0 files in" in caplog.text and "12 files skipped" in caplog.text


def test_only_the_files_without_a_row_are_read(scans, tmp_path, caplog):
    out = tmp_path / "rows.csv"
    classify(scans, "-o", out, "--resume")
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:5]))  # the header and 4 rows: 8 files still to read
    caplog.clear()
    assert classify(scans, "-o", out, "--resume") == ExitCode.OK
    assert files_of(out) == Counter(f"{i:03d}.png" for i in range(12))
    assert "8 files in" in caplog.text and "4 files skipped" in caplog.text


def test_a_torn_last_row_is_cut_and_its_file_read_again(scans, tmp_path):
    out = tmp_path / "rows.csv"
    classify(scans, "-o", out, "--resume")
    data = out.read_bytes()
    out.write_bytes(data[: len(data) - 40])  # the last row loses its end, as in a crash
    assert classify(scans, "-o", out, "--resume") == ExitCode.OK
    assert files_of(out) == Counter(f"{i:03d}.png" for i in range(12))


def test_a_file_changed_since_its_row_is_read_again(scans, tmp_path, caplog):
    out = tmp_path / "rows.csv"
    classify(scans, "-o", out, "--resume")
    (scans / "003.png").write_bytes(digit_png(40)[0])
    caplog.clear()
    classify(scans, "-o", out, "--resume")
    found = [r for r in read_csv(out) if Path(r["file"]).name == "003.png"]
    assert [r["digits"] for r in found] == [str(digit_png(3)[1]), str(digit_png(40)[1])]
    assert "003.png changed since its row was written" in caplog.text


def test_resume_needs_an_output_file(scans, caplog):
    assert classify(scans, "--resume") == ExitCode.USAGE
    assert "--resume needs --output" in caplog.text


def test_a_csv_with_other_columns_is_refused_and_left_alone(scans, tmp_path, caplog):
    out = tmp_path / "other.csv"
    out.write_bytes(b"name,value\r\na,1\r\n")
    assert classify(scans, "-o", out, "--resume") == ExitCode.USAGE
    assert out.read_bytes() == b"name,value\r\na,1\r\n"
    assert "header differs" in caplog.text


def test_nothing_to_read_still_leaves_the_header(tmp_path):
    out = tmp_path / "rows.csv"
    (tmp_path / "empty").mkdir()
    assert classify(tmp_path / "empty", "-o", out, "--resume") == ExitCode.OK
    assert out.read_bytes().decode("utf-8") == rows.header_line()


def test_killed_mid_run_then_resumed_every_file_has_exactly_one_row(tmp_path):
    """SIGKILL leaves the rows fsynced so far, perhaps a torn last one; the resumed run cuts it
    and reads the rest."""
    scans = tmp_path / "many"
    scans.mkdir()
    names = [f"{i:04d}.png" for i in range(600)]
    for i, name in enumerate(names):
        (scans / name).write_bytes(digit_png(i % 60)[0])
    out = tmp_path / "rows.csv"
    command = [sys.executable, "-m", "digit_inbox.daemon", "classify", "--workers", "1"]
    command += ["--output", str(out), "--resume", str(scans)]
    proc = subprocess.Popen(command, env=daemon_env(), stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: out.exists() and out.stat().st_size > 2000, 60, "the first rows")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    written = len(read_csv_lenient(out))
    assert 0 < written < len(names), "the kill did not land mid-run"
    with open(out, "ab") as f:  # as if the kill had landed in the middle of a write
        f.write(b",0599.png,ok,3,0.99")
        os.fsync(f.fileno())
    assert subprocess.run(command, env=daemon_env(), check=False).returncode == ExitCode.OK
    assert files_of(out) == Counter(names)


def read_csv_lenient(path: Path) -> list[bytes]:
    """The complete rows, whatever the last line."""
    return path.read_bytes().split(b"\r\n")[1:-1]


def test_a_file_another_run_is_appending_to_is_refused_at_once(scans, tmp_path, caplog):
    out = tmp_path / "rows.csv"
    out.write_bytes(rows.header_line().encode())
    with open(out, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        assert classify(scans, "-o", out, "--resume") == ExitCode.USAGE
    assert "being appended to by another run" in caplog.text
    assert out.read_bytes() == rows.header_line().encode()


def test_a_file_gone_since_its_row_keeps_that_row_and_is_not_read_again(tmp_path):
    out = tmp_path / "rows.csv"
    (tmp_path / "a.png").write_bytes(digit_png(1)[0])
    classify(tmp_path / "a.png", "-o", out, "--resume")
    before = out.read_bytes()
    appender = Appender(out)
    try:  # collect() would refuse a missing PATH; a file gone from a folder looks like this
        assert appender.still_to_read([(tmp_path / "a.png", str(tmp_path / "a.png"))]) == []
        (tmp_path / "a.png").unlink()
        assert appender.still_to_read([(tmp_path / "a.png", str(tmp_path / "a.png"))]) == []
    finally:
        appender.close()
    assert out.read_bytes() == before
