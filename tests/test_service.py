"""The daemon's loop in-process with a stand-in reader: the rare paths that real files cannot
easily provoke (a full disk, a name taken at the last moment, a reader that crashes)."""

from __future__ import annotations

import csv
import errno
import hashlib
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from digit_inbox.daemon import config, health, report, service
from digit_inbox.daemon.contract import DEFAULT_MIN_CONFIDENCE
from digit_inbox.daemon.rows import Row, Status
from tests.helpers import Folders, StandIn, drop, wait_until, write_config


class FakeReader:
    """Reads files whose bytes are `digit:<d>`; anything else is an error row."""

    model_id = "fake"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.fail_on: set[str] = set()  # names whose presence makes `read` raise

    def read(self, items: Sequence[tuple[Path, str]]) -> list[Row]:
        self.calls.append([name for _, name in items])
        if any(name in self.fail_on for _, name in items):
            raise RuntimeError("reader crashed")
        rows = []
        for path, name in items:
            data = path.read_bytes()
            sha = hashlib.sha256(data).hexdigest()
            if data.startswith(b"digit:"):
                digit = data[6:7].decode()
                rows.append(Row(name, Status.OK, digits=digit, confidence=0.9, sha256=sha))
            else:
                rows.append(Row(name, Status.ERROR, error="not a digit file", sha256=sha))
        return rows

    def close(self) -> None:
        pass


@pytest.fixture
def run_daemon(tmp_path: Path) -> Iterator[Callable[..., tuple[service.Daemon, FakeReader]]]:
    """Start a daemon on a thread with a FakeReader; it is stopped and joined at the end."""
    running: list[tuple[service.Daemon, threading.Thread]] = []

    def start(**sections: dict[str, object]) -> tuple[service.Daemon, FakeReader]:
        cfg = config.load(write_config(tmp_path, **sections))
        reader = FakeReader()
        daemon = service.Daemon(cfg, lambda: reader)
        thread = threading.Thread(target=daemon.run)
        thread.start()
        wait_until(lambda: hasattr(daemon, "watcher") and daemon.watcher.observer, 10, "start")
        running.append((daemon, thread))
        return daemon, reader

    yield start
    for daemon, thread in running:
        daemon.stop()
        thread.join(30)


def rows_of(tmp_path: Path, count: int) -> list[dict[str, str]]:
    folders = Folders.under(tmp_path)

    def enough() -> list[dict[str, str]] | None:
        rows = folders.report_rows()
        return rows if len(rows) >= count else None

    return wait_until(enough, 20, f"{count} rows")  # type: ignore[no-any-return]


def fill_the_disk(monkeypatch: pytest.MonkeyPatch, appends: int) -> dict[str, int]:
    """The report's next `appends` appends fail as on a full disk; later ones go through.
    Returns the count of failures still to come."""
    failures = {"left": appends}
    real_append = report.Report.append

    def append(self: report.Report, lines: object) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(self, lines)  # type: ignore[arg-type]

    monkeypatch.setattr(report.Report, "append", append)
    return failures


def test_a_full_disk_is_waited_out_and_the_file_stays_claimed_meanwhile(
    run_daemon, tmp_path, monkeypatch
):
    failures = fill_the_disk(monkeypatch, appends=2)
    daemon, _ = run_daemon()
    drop(daemon.paths.inbox, "a.png", b"digit:4")
    wait_until(lambda: failures["left"] == 1, 10, "the first failure")
    assert len(list(daemon.paths.processing.iterdir())) == 1  # claimed, not lost
    [row] = rows_of(tmp_path, 1)
    assert row["status"] == "ok" and row["moved_to"] == "outbox/4/a.png"
    assert failures["left"] == 0
    # The row is appended just before the claim is released: wait for the release.
    wait_until(lambda: not any(daemon.paths.processing.iterdir()), 10, "the claim's release")
    assert not daemon.paths.failed.exists() or not any(daemon.paths.failed.iterdir())


def test_a_name_taken_at_the_last_moment_gets_the_next_number_in_file_and_row(
    run_daemon, tmp_path, monkeypatch
):
    real_place = service.filing.place

    def place(claimed: Path, dest: Path) -> None:
        if dest.name == "a.png" and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(b"someone else's")  # appears between choosing and linking
        real_place(claimed, dest)

    monkeypatch.setattr(service.filing, "place", place)
    daemon, _ = run_daemon()
    drop(daemon.paths.inbox, "a.png", b"digit:2")
    [row] = rows_of(tmp_path, 1)
    assert row["moved_to"] == "outbox/2/a_1.png"
    assert (daemon.paths.outbox / "2" / "a.png").read_bytes() == b"someone else's"
    assert (daemon.paths.outbox / "2" / "a_1.png").read_bytes() == b"digit:2"


def test_a_reader_crash_fails_only_the_file_that_causes_it(run_daemon, tmp_path):
    daemon, reader = run_daemon(recognition={"batch_size": 8})
    reader.fail_on = {"poison.png"}
    for name in ("a.png", "poison.png", "b.png"):
        (daemon.paths.inbox.parent / name).write_bytes(b"digit:1")
    for name in ("a.png", "poison.png", "b.png"):  # one batch: all three at once
        (daemon.paths.inbox.parent / name).rename(daemon.paths.inbox / name)
    rows = {r["file"]: r for r in rows_of(tmp_path, 3)}
    assert rows["poison.png"]["status"] == "error"
    assert "reader failed" in rows["poison.png"]["error"]
    assert rows["a.png"]["status"] == rows["b.png"]["status"] == "ok"


def test_duplicates_are_flagged_and_with_the_review_policy_sent_to_review(run_daemon, tmp_path):
    daemon, _ = run_daemon(filing={"duplicates": "review"})
    drop(daemon.paths.inbox, "first.png", b"digit:5")
    rows_of(tmp_path, 1)
    drop(daemon.paths.inbox, "again.png", b"digit:5")
    rows = {r["file"]: r for r in rows_of(tmp_path, 2)}
    assert rows["first.png"]["duplicate_of"] == ""
    assert rows["again.png"]["duplicate_of"] == "outbox/5/first.png"
    assert rows["again.png"]["moved_to"] == "review/again.png"


def test_a_file_without_a_scan_extension_gets_an_error_row_and_goes_to_failed(run_daemon, tmp_path):
    daemon, reader = run_daemon()
    drop(daemon.paths.inbox, "minutes.docx", b"digit:4")  # never read, whatever it holds
    drop(daemon.paths.inbox, "README", b"digit:4")
    rows = {r["file"]: r for r in rows_of(tmp_path, 2)}
    assert rows["minutes.docx"]["status"] == "error"
    assert (
        "the extension .docx is not one of the scan formats read (watch.extensions)"
        in (rows["minutes.docx"]["error"])
    )
    assert "a name without an extension is not one" in rows["README"]["error"]
    assert {r["moved_to"] for r in rows.values()} == {"failed/minutes.docx", "failed/README"}
    note = (daemon.paths.failed / "minutes.docx.error.txt").read_text()
    assert rows["minutes.docx"]["error"] in note
    assert f"Report: reports/{rows['README']['time'][:10]}.csv" in note
    assert "claim" not in note and "sha256" not in note  # no internals
    assert reader.calls == []
    assert [p.name for p in daemon.paths.inbox.iterdir() if not p.name.startswith(".")] == []


def test_a_file_in_review_has_a_note_with_the_reading_the_runner_up_and_why(run_daemon, tmp_path):
    daemon, reader = run_daemon(filing={"duplicates": "review"})
    real_read = reader.read

    def unsure(items: Sequence[tuple[Path, str]]) -> list[Row]:
        rows = real_read(items)
        for row in rows:
            if row.file == "unsure.png":
                row.status, row.confidence = Status.LOW_CONFIDENCE, 0.41
                row.runner_up, row.runner_up_confidence = "1", 0.32
        return rows

    reader.read = unsure  # type: ignore[method-assign]
    drop(daemon.paths.inbox, "unsure.png", b"digit:7")
    drop(daemon.paths.inbox, "=again.png", b"digit:7")
    rows = {r["file"]: r for r in rows_of(tmp_path, 2)}
    assert rows["unsure.png"]["moved_to"] == "review/unsure.png"
    note = (daemon.paths.review / "unsure.png.review.txt").read_text()
    assert "Read as: 7 (confidence 0.4100); runner-up 1 (0.3200)" in note
    why = f"Why it is here: confidence under recognition.min_confidence ({DEFAULT_MIN_CONFIDENCE})"
    assert why in note
    assert f"Report: reports/{rows['unsure.png']['time'][:10]}.csv" in note
    assert "claim" not in note and "sha256" not in note  # no internals
    again = (daemon.paths.review / "=again.png.review.txt").read_text()
    assert again.startswith("=again.png needs a person")  # the name, not its CSV guard
    assert "same content as review/unsure.png (filing.duplicates: review)" in again


def test_the_outbox_layout_can_file_by_date(run_daemon, tmp_path):
    daemon, _ = run_daemon(filing={"layout": "{date}/{digit}"})
    drop(daemon.paths.inbox, "a.png", b"digit:7")
    [row] = rows_of(tmp_path, 1)
    day = row["time"][:10]
    assert row["moved_to"] == f"outbox/{day}/7/a.png"
    assert (daemon.paths.outbox / day / "7" / "a.png").exists()


def test_same_names_from_different_sub_folders_never_overwrite_each_other(run_daemon, tmp_path):
    daemon, _ = run_daemon(watch={"recursive": True})
    for folder in ("x", "y"):
        (daemon.paths.inbox / folder).mkdir()
        drop(daemon.paths.inbox / folder, "scan.png", b"digit:3")
    rows = rows_of(tmp_path, 2)
    assert sorted(r["file"] for r in rows) == ["x/scan.png", "y/scan.png"]
    assert sorted(r["moved_to"] for r in rows) == ["outbox/3/scan.png", "outbox/3/scan_1.png"]


def test_a_file_written_to_while_it_is_read_goes_back_to_settle(run_daemon, tmp_path):
    daemon, reader = run_daemon()
    path = daemon.paths.inbox / "growing.png"
    real_read = reader.read

    def read_while_the_writer_appends(items: Sequence[tuple[Path, str]]) -> list[Row]:
        rows = real_read(items)
        if len(reader.calls) == 1:
            with open(items[0][0], "ab") as f:  # the writer still had the file open
                f.write(b"...more")
        return rows

    reader.read = read_while_the_writer_appends  # type: ignore[method-assign]
    drop(daemon.paths.inbox, "growing.png", b"digit:8")
    [row] = rows_of(tmp_path, 1)
    assert len(reader.calls) == 2  # read again once it had settled
    assert row["sha256"] == hashlib.sha256(b"digit:8...more").hexdigest()
    assert not path.exists()


def test_stop_finishes_the_batch_in_hand(run_daemon, tmp_path):
    daemon, reader = run_daemon()
    started, release = threading.Event(), threading.Event()
    real_read = reader.read

    def slow_read(items: Sequence[tuple[Path, str]]) -> list[Row]:
        started.set()
        release.wait(10)
        return real_read(items)

    reader.read = slow_read  # type: ignore[method-assign]
    drop(daemon.paths.inbox, "a.png", b"digit:1")
    assert started.wait(10)
    daemon.stop()
    release.set()
    [row] = rows_of(tmp_path, 1)
    assert row["file"] == "a.png" and (daemon.paths.outbox / "1" / "a.png").exists()


def test_the_claim_names_belong_to_this_journal(tmp_path):
    cfg = config.load(write_config(tmp_path))
    a = service.Daemon(cfg, FakeReader)
    b = service.Daemon(replace(cfg, paths=replace(cfg.paths, state=tmp_path / "other")), FakeReader)
    assert a.tag != b.tag
    assert a.names.next_id().split(".")[2] == a.tag


def test_claims_of_a_lost_journal_are_read_and_other_daemons_claims_left_alone(
    run_daemon, tmp_path
):
    cfg = config.load(write_config(tmp_path))
    tag = service.Daemon(cfg, FakeReader).tag
    config.make_folders(cfg)
    mine = cfg.paths.processing / f"host.1.{tag}.00000001_mine.png"
    theirs = cfg.paths.processing / "host.1.0ther0ne.00000001_theirs.png"
    mine.write_bytes(b"digit:6")
    theirs.write_bytes(b"digit:9")
    run_daemon()
    [row] = rows_of(tmp_path, 1)
    assert row["file"] == "mine.png" and row["moved_to"] == "outbox/6/mine.png"
    assert theirs.read_bytes() == b"digit:9"


def test_a_full_disk_while_finishing_the_previous_run_is_waited_out_under_systemd(
    run_daemon, tmp_path, monkeypatch
):
    """Recovery runs before the loop: its retries ping the watchdog like the loop's do."""
    receiver = StandIn(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(receiver.path))
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    cfg = config.load(write_config(tmp_path))
    tag = service.Daemon(cfg, FakeReader).tag
    config.make_folders(cfg)
    (cfg.paths.processing / f"host.1.{tag}.00000001_left.png").write_bytes(b"digit:2")
    fill_the_disk(monkeypatch, appends=1)
    try:
        run_daemon()
        receiver.wait_for("READY=1", 20)
        [row] = rows_of(tmp_path, 1)
        assert row["file"] == "left.png" and row["moved_to"] == "outbox/2/left.png"
        assert any("waiting: " in line for _, message in receiver.messages for line in message)
    finally:
        receiver.sock.close()


def test_the_stop_summary_counts_like_status_does(run_daemon, tmp_path, caplog):
    caplog.set_level("INFO", logger="digit_inbox.daemon.service")
    daemon, _ = run_daemon()
    drop(daemon.paths.inbox, "a.png", b"digit:4")
    drop(daemon.paths.inbox, "b.png", b"not a digit")
    rows_of(tmp_path, 2)
    # Counted just after the rows are appended: wait for that, not only for the rows.
    wait_until(lambda: daemon.status_text().startswith("2 files filed, 0 waiting"), 10, "counts")
    daemon.stop()
    wait_until(lambda: "stopped after" in caplog.text, 10, "the stop summary")
    [summary] = [r.getMessage() for r in caplog.records if "stopped after" in r.getMessage()]
    counts = health.counts_text({"ok": 1, "error": 1})
    assert counts == "1 ok, 0 low_confidence, 0 blank, 1 error"
    assert re.fullmatch(rf"stopped after \d+s: 2 files filed \({counts}\)", summary)


def test_filing_report_bom_starts_the_days_report_with_a_byte_order_mark(run_daemon, tmp_path):
    daemon, _ = run_daemon(filing={"report_bom": True})
    drop(daemon.paths.inbox, "März.png", b"digit:3")
    rows_of(tmp_path, 1)
    [path] = daemon.paths.reports.glob("*.csv")
    assert path.read_bytes().startswith(b"\xef\xbb\xbftime,")
    with open(path, newline="", encoding="utf-8-sig") as f:
        assert [r["file"] for r in csv.DictReader(f)] == ["März.png"]


def test_notes_name_a_report_kept_apart_from_the_filing_folders_by_its_full_path(
    run_daemon, tmp_path
):
    daemon, _ = run_daemon(paths={"reports": "./elsewhere/reports"})
    drop(daemon.paths.inbox, "bad.png", b"not a digit")
    note = daemon.paths.failed / "bad.png.error.txt"
    wait_until(note.exists, 20, "the note")
    [report_path] = daemon.paths.reports.glob("*.csv")
    assert f"Report: {report_path}\n" in note.read_text()
    assert (daemon.paths.failed / "bad.png").exists()


def test_the_status_file_shows_filed_files_within_seconds_not_a_metrics_interval(
    run_daemon, tmp_path
):
    daemon, _ = run_daemon(metrics={"interval_seconds": 3600})
    drop(daemon.paths.inbox, "a.png", b"digit:4")
    rows_of(tmp_path, 1)

    def counted() -> bool:
        state = health.read_state(daemon.cfg.status_file)
        return bool(state["counts"]["total"]["ok"] == 1)

    wait_until(counted, 10, "the status file to count the file")
