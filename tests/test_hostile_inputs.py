"""Anyone who can write to the inbox can hand the daemon anything: broken and malicious files,
bombs, odd encodings, names built to break CSV files and spreadsheets, links, pipes, folders,
files that change under it. Each must end as exactly one report row and one filed thing (failed/
with a one-line reason, or a proper result), and the daemon must keep going."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from bench.torture import Ledger, account, digit_png, hostile_corpus, read_reports, report_cell
from digit_inbox.daemon import decode, recognize
from digit_inbox.daemon.filing import NAME_MAX
from tests.helpers import write_config

pytestmark = pytest.mark.slow

FUZZ = Path(__file__).parent / "data" / "fuzz"
MAX_PIXELS = 1_000_000  # lowered so that a real image over it stays small


def test_every_hostile_file_ends_as_one_row_and_one_filed_thing(start_daemon, tmp_path):
    config = write_config(
        tmp_path,
        watch={"empty_timeout_seconds": 1},
        recognition={"max_pixels": MAX_PIXELS, "workers": 2, "batch_size": 8},
    )
    daemon = start_daemon(config)
    folders = daemon.folders
    corpus = hostile_corpus(MAX_PIXELS)
    ledger = Ledger()
    for case in corpus:
        ledger.drop_case(folders.inbox, case)
    ledger.drop(folders.inbox, b"empty.png", b"", rename=False)
    daemon.wait_rows(len(ledger), timeout=120)

    rows = {r["file"]: r for r in folders.report_rows()}
    for case in corpus:
        row = rows[report_cell(case.text)]
        if case.expect == "error":
            assert row["status"] == "error", (case.text, row)
            assert case.reason in row["error"] and "\n" not in row["error"], (case.text, row)
            note = folders.root / "var" / f"{row['moved_to']}.error.txt"
            assert row["error"] in note.read_text(errors="replace"), case.text
        else:
            assert row["status"] in ("ok", "low_confidence", "blank"), (case.text, row)
            assert case.note in row["note"], (case.text, row)
        if case.width is not None:
            assert (int(row["width"]), int(row["height"])) == (case.width, case.height)
    assert "empty" in rows["empty.png"]["error"]
    result = account(ledger, folders, [folders.reports])
    assert result.problems == []
    assert result.accounted == len(ledger)

    good = digit_png(1)
    (folders.inbox / "after.png").write_bytes(good)  # and the daemon is still reading
    assert daemon.wait_rows(len(ledger) + 1)[-1]["file"] == "after.png"
    assert daemon.stop() == 0


def test_names_that_would_run_as_formulas_or_split_rows_are_neutralised(tmp_path):
    corpus = {c.text for c in hostile_corpus(MAX_PIXELS)}
    for name in ("=cmd|' -C calc'!A0.png", "+1+1.png", "-2-2.png", "@SUM(A1).png"):
        assert name in corpus
        assert report_cell(name) == "'" + name
    assert report_cell("new\nline.png") == "new\\nline.png"
    assert report_cell("carriage\rreturn.png") == "carriage\\rreturn.png"
    assert report_cell(os.fsdecode(b"not-utf8-\xff\xfe.png")) == "not-utf8-\\xff\\xfe.png"


def test_every_exif_orientation_reads_the_same_digit_as_the_upright_scan(start_daemon, tmp_path):
    daemon = start_daemon()
    cases = [c for c in hostile_corpus(MAX_PIXELS) if c.text.startswith("exif-")]
    assert len(cases) == 8
    ledger = Ledger()
    for case in cases:
        ledger.drop_case(daemon.folders.inbox, case)
    rows = daemon.wait_rows(8)
    assert daemon.stop() == 0
    [upright] = [r for r in rows if r["file"] == "exif-1.jpg"]
    assert upright["status"] == "ok"
    assert {r["digits"] for r in rows} == {upright["digits"]}
    assert {(r["width"], r["height"]) for r in rows} == {("84", "120")}


def test_names_that_collide_in_the_outbox_are_numbered_within_name_max(start_daemon, tmp_path):
    daemon = start_daemon()
    long = "x" * (NAME_MAX - 4) + ".png"
    data = digit_png(7)
    for round_ in range(3):  # the same names again once the first ones are filed
        for name in ("scan.png", long):
            (daemon.folders.inbox / name).write_bytes(data)
        daemon.wait_rows(2 * (round_ + 1))
    assert daemon.stop() == 0
    rows = daemon.folders.report_rows()
    places = [r["moved_to"] for r in rows]
    assert len(set(places)) == 6
    names = [p.name for p in daemon.folders.filed()]
    assert {"scan.png", "scan_1.png", "scan_2.png"} <= set(names)
    assert all(len(os.fsencode(n)) <= NAME_MAX for n in names)
    assert sum(n.startswith("xxxx") and n.endswith(".png") for n in names) == 3


def test_the_same_content_dropped_100_times_gives_100_rows_and_100_files(start_daemon, tmp_path):
    daemon = start_daemon()
    data = digit_png(9)
    ledger = Ledger()
    for i in range(100):
        ledger.drop(daemon.folders.inbox, f"copy-{i:03d}.png".encode(), data)
    rows = daemon.wait_rows(100)
    assert daemon.stop() == 0
    assert account(ledger, daemon.folders, [daemon.folders.reports]).problems == []
    originals = [r for r in rows if not r["duplicate_of"]]
    assert len(originals) == 1
    assert {r["duplicate_of"] for r in rows} == {"", originals[0]["moved_to"]}
    assert len(daemon.folders.filed()) == 100


def test_hard_links_into_the_inbox_are_filed_and_the_other_name_is_left_alone(
    start_daemon, tmp_path
):
    daemon = start_daemon()
    outside = tmp_path / "kept-elsewhere.png"
    outside.write_bytes(digit_png(11))
    os.link(outside, daemon.folders.inbox / "linked.png")
    os.link(outside, daemon.folders.inbox / "linked-twice.png")
    rows = daemon.wait_rows(2)
    assert daemon.stop() == 0
    assert {r["file"] for r in rows} == {"linked.png", "linked-twice.png"}
    assert outside.read_bytes() == digit_png(11)
    assert [p.name for p in daemon.folders.filed()] == ["linked-twice.png", "linked.png"]
    assert os.stat(outside).st_nlink == 3  # its own name plus the two filed ones


def test_a_file_deleted_or_replaced_before_it_is_claimed(start_daemon, tmp_path):
    config = write_config(tmp_path, watch={"settle_seconds": 1.0})
    daemon = start_daemon(config)
    inbox = daemon.folders.inbox
    (inbox / "deleted.png").write_bytes(digit_png(12))  # written in place: waits to settle
    (inbox / "deleted.png").unlink()
    (inbox / "replaced.png").write_bytes(b"the first, broken version")
    replacement = digit_png(13)
    (tmp_path / "aside.png").write_bytes(replacement)
    os.rename(tmp_path / "aside.png", inbox / "replaced.png")
    [row] = daemon.wait_rows(1)
    (inbox / "next.png").write_bytes(digit_png(14))
    rows = daemon.wait_rows(2)
    assert daemon.stop() == 0
    assert row["file"] == "replaced.png" and row["status"] == "ok"
    assert row["sha256"] == hashlib.sha256(replacement).hexdigest()
    assert [r["file"] for r in rows] == ["replaced.png", "next.png"]
    assert "Traceback" not in daemon.log


@pytest.mark.parametrize(("pause", "settle"), [(1.0, 1.5)])
def test_a_slow_writer_is_never_read_half_written(start_daemon, tmp_path, pause, settle):
    """A scanner writing its last bytes one a second, pausing less than settle_seconds."""
    daemon = start_daemon(write_config(tmp_path, watch={"settle_seconds": settle}))
    data = digit_png(15)
    done = threading.Event()

    def write_slowly() -> None:
        with open(daemon.folders.inbox / "slow.png", "wb") as f:
            f.write(data[:-6])
            f.flush()
            for i in range(len(data) - 6, len(data)):
                time.sleep(pause)
                f.write(data[i : i + 1])
                f.flush()
        done.set()

    writer = threading.Thread(target=write_slowly)
    writer.start()
    try:
        [row] = daemon.wait_rows(1, timeout=60)
    finally:
        writer.join()
    assert done.is_set()
    assert row["sha256"] == hashlib.sha256(data).hexdigest()
    assert row["status"] == "ok"
    assert daemon.stop() == 0


def test_every_report_parses_back_to_one_row_per_line(tmp_path):
    """The accounting's own CSV check: a torn or split line is caught."""
    reports = tmp_path / "reports"
    reports.mkdir()
    header = b"time,file\r\n"
    (reports / "whole.csv").write_bytes(header + b'1,a.png\r\n2,"b\nc.png"\r\n')
    (reports / "torn.csv").write_bytes(header + b"1,a.png\r\n2,b.p")
    _, problems = read_reports([reports])
    assert any("torn.csv: torn last line" in p for p in problems)
    assert any(p.startswith("whole.csv: 2 rows") for p in problems)


# --- The fuzzer's findings, replayed.


def fuzz_inputs() -> list[Path]:
    return sorted(p for p in FUZZ.iterdir() if p.is_file() and p.name != "README.md")


@pytest.mark.parametrize("path", fuzz_inputs(), ids=lambda p: p.name)
def test_what_the_fuzzer_found_is_read_or_refused_cleanly(path, tmp_path):
    """Inputs bench/fuzz_decode.py turned up: each ends as a row within seconds, never an
    internal error."""
    start = time.monotonic()
    prepared = recognize.prepare_file(path, max_pixels=MAX_PIXELS)
    assert time.monotonic() - start < 5
    if prepared.error:
        assert "internal error" not in prepared.error
        assert "\n" not in prepared.error
    else:
        assert prepared.image is None or prepared.image.shape == (28, 28)


def test_a_name_swapped_for_a_pipe_after_any_check_never_blocks_the_read(tmp_path, monkeypatch):
    """Someone who can write the inbox may swap a claimed file for a FIFO between a check by
    name and the open: a read that opened the pipe blocking would hang a decoding worker."""
    path = tmp_path / "claimed.png"
    path.write_bytes(digit_png(3))
    swapped = threading.Event()

    def swap_after(real):
        def check(target, *args, **kwargs):
            result = real(target, *args, **kwargs)
            if os.fspath(target) == os.fspath(path) and not swapped.is_set():
                swapped.set()
                os.unlink(path)
                os.mkfifo(path)
            return result

        return check

    monkeypatch.setattr(os, "stat", swap_after(os.stat))
    monkeypatch.setattr(os, "lstat", swap_after(os.lstat))
    monkeypatch.setattr(Path, "stat", lambda self, **kw: os.stat(self, **kw))
    outcome: list[object] = []
    reader = threading.Thread(target=lambda: outcome.append(read_or_refuse(path)))
    reader.start()
    reader.join(10)
    if reader.is_alive():  # blocked on the pipe: unblock it, then fail
        with open(path, "wb"):
            pass
        reader.join()
        pytest.fail("reading blocked on a pipe swapped in after the check")
    assert outcome and outcome[0] in (digit_png(3), "refused")


def read_or_refuse(path: Path) -> bytes | str:
    try:
        return decode.read_bytes(path)
    except decode.DecodeError:
        return "refused"
