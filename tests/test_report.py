"""Daily reports: header once, whole lines only, formulas neutralised, durable appends."""

from __future__ import annotations

import csv
import os
from datetime import date
from pathlib import Path

import pytest

from digit_inbox.daemon import report, rows
from digit_inbox.daemon.rows import Row, Status


def line(name: str, digit: str = "3") -> bytes:
    return report.encode_line(Row(file=name, status=Status.OK, digits=digit, confidence=0.99))


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_reports_are_named_by_local_date(tmp_path):
    assert report.path_for(tmp_path, date(2026, 3, 9)) == tmp_path / "2026-03-09.csv"


def test_the_header_is_written_once_per_file(tmp_path):
    path = tmp_path / "r.csv"
    with report.Report(path) as rep:
        rep.append([line("a.png")])
    with report.Report(path) as rep:
        rep.append([line("b.png"), line("c.png")])
    data = path.read_bytes()
    assert data.startswith(rows.header_line().encode())
    assert data.count(rows.header_line().encode()) == 1
    assert [r["file"] for r in read_rows(path)] == ["a.png", "b.png", "c.png"]
    assert all(raw.endswith(b"\r\n") for raw in data.splitlines(keepends=True))


def test_a_torn_last_line_is_cut_before_appending(tmp_path, caplog):
    path = tmp_path / "r.csv"
    with report.Report(path) as rep:
        rep.append([line("a.png")])
    whole = path.stat().st_size
    with open(path, "ab") as f:
        f.write(line("torn.png")[:17])  # a crash in the middle of a write
    with report.Report(path) as rep:
        assert rep.size == whole
        rep.append([line("b.png")])
    assert [r["file"] for r in read_rows(path)] == ["a.png", "b.png"]
    assert "cut a torn last line (17 bytes)" in caplog.text


def test_a_torn_header_is_cut_and_written_again(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(rows.header_line().encode()[:10])
    with report.Report(path) as rep:
        assert rep.size == 0
        rep.append([line("a.png")])
    assert [r["file"] for r in read_rows(path)] == ["a.png"]


def test_formula_like_names_are_neutralised_and_newlines_cannot_split_a_row(tmp_path):
    path = tmp_path / "r.csv"
    with report.Report(path) as rep:
        rep.append([line("=HYPERLINK(evil).png"), line("two\nlines.png"), line("-1+2.png")])
    names = [r["file"] for r in read_rows(path)]
    assert names == ["'=HYPERLINK(evil).png", "two\\nlines.png", "'-1+2.png"]
    assert path.read_bytes().count(b"\r\n") == 4


def test_names_with_undecodable_bytes_are_written_as_valid_utf8(tmp_path):
    path = tmp_path / "r.csv"
    with report.Report(path) as rep:
        rep.append([line(os.fsdecode(b"scan-\xff.png"))])
    assert read_rows(path)[0]["file"] == "scan-\\xff.png"


def test_missing_finds_only_lines_not_written_since_an_offset(tmp_path):
    path = tmp_path / "r.csv"
    with report.Report(path) as rep:
        rep.append([line("old.png")])
        offset = rep.size
        rep.append([line("a.png")])
    with report.Report(path) as rep:
        assert rep.missing([line("a.png"), line("b.png")], offset) == [line("b.png")]
        # A line before the offset belongs to an earlier batch: it does not count.
        assert rep.missing([line("old.png")], offset) == [line("old.png")]


def test_replace_cell_changes_one_cell_and_keeps_the_others_byte_for_byte(tmp_path):
    original = report.encode_line(
        Row(file='a "quoted", name.png', status=Status.OK, digits="3", moved_to="outbox/3/a.png")
    )
    changed = report.replace_cell(original, "moved_to", "outbox/3/a_1.png")
    assert changed == original.replace(b"outbox/3/a.png", b"outbox/3/a_1.png")


def test_every_append_is_fsynced_and_a_new_report_fsyncs_its_folder(tmp_path, monkeypatch):
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    with report.Report(tmp_path / "new.csv") as rep:
        assert len(synced) == 1  # the folder, for the new name
        rep.append([line("a.png")])
        assert len(synced) == 2
        assert synced[-1] == rep.fd


def test_a_report_is_locked_while_open(tmp_path):
    import fcntl

    path = tmp_path / "r.csv"
    with report.Report(path), open(path, "rb") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_a_removed_reports_folder_is_made_again(tmp_path):
    path = tmp_path / "reports" / "r.csv"
    with report.Report(path) as rep:
        rep.append([line("a.png")])
    assert [r["file"] for r in read_rows(path)] == ["a.png"]


def test_by_default_a_report_starts_with_its_header_and_no_byte_order_mark(tmp_path):
    path = tmp_path / "r.csv"
    with report.Report(path) as rep:
        rep.append([line("März.png")])
    assert path.read_bytes().startswith(b"time,file,")


def test_with_a_bom_excel_reads_utf_8_and_csv_readers_still_read_every_row(tmp_path):
    path = tmp_path / "r.csv"
    with report.Report(path, bom=True) as rep:
        rep.append([line("März.png")])
    with report.Report(path, bom=True) as rep:  # appending later adds no second mark
        rep.append([line("b.png")])
    data = path.read_bytes()
    assert data.startswith(b"\xef\xbb\xbftime,file,") and data.count(b"\xef\xbb\xbf") == 1
    with open(path, newline="", encoding="utf-8-sig") as f:
        found = list(csv.DictReader(f))
    assert next(iter(found[0])) == "time"  # the mark is not part of the first column's name
    assert [r["file"] for r in found] == ["März.png", "b.png"]
    assert data.decode("utf-8-sig").splitlines()[0] == rows.header_line().rstrip("\r\n")
