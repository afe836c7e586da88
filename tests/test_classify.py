"""`digit-inbox classify` end to end through the CLI: files and folders in, one CSV row per file
out (exact header), exit status 0 when every file was read and 1 when any could not be."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digit_inbox.daemon import cli, rows
from digit_inbox.daemon.errors import ExitCode
from tests.helpers import digit_png, number_png

SCANS = Path(__file__).parent / "data" / "scans"


def classify(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["classify", "--workers", "0", *args])
    out, err = capsys.readouterr()
    return code, out, err


def parse(text: str) -> list[dict[str, str]]:
    assert text.startswith(rows.header_line())
    return list(csv.DictReader(io.StringIO(text)))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two digits at the top, one in a subfolder, and things a folder scan must skip."""
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    (scans / "b.png").write_bytes(digit_png(0)[0])
    (scans / "a.png").write_bytes(digit_png(1)[0])
    (scans / "sub" / "c.png").write_bytes(digit_png(2)[0])
    (scans / ".hidden.png").write_bytes(digit_png(3)[0])
    (scans / ".cache").mkdir()
    (scans / ".cache" / "d.png").write_bytes(digit_png(4)[0])
    (scans / "notes.txt").write_text("not a scan")
    return scans


def test_a_folder_gives_one_row_per_image_in_sorted_order(capsys, folder, monkeypatch):
    monkeypatch.chdir(folder.parent)
    code, out, _ = classify(capsys, "scans")
    assert code == ExitCode.OK
    found = parse(out)
    assert [r["file"] for r in found] == ["scans/a.png", "scans/b.png", "scans/sub/c.png"]
    labels = {
        "scans/a.png": digit_png(1)[1],
        "scans/b.png": digit_png(0)[1],
        "scans/sub/c.png": digit_png(2)[1],
    }
    for row in found:
        assert row["status"] == "ok"
        assert row["digits"] == str(labels[row["file"]])
        assert row["sha256"] and row["model"] and row["width"] == "84"


def test_a_file_named_explicitly_is_always_tried(capsys, folder):
    code, out, _ = classify(capsys, str(folder / "notes.txt"), str(folder / "a.png"))
    assert code == ExitCode.FILES_FAILED
    notes, good = parse(out)
    assert notes["file"] == str(folder / "notes.txt") and notes["status"] == "error"
    assert "text" in notes["error"]
    assert good["file"] == str(folder / "a.png") and good["status"] == "ok"


def test_one_unreadable_file_makes_exit_status_1_and_the_rest_are_read(capsys, folder, monkeypatch):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    monkeypatch.chdir(folder)
    code, out, _ = classify(capsys, ".")
    assert code == ExitCode.FILES_FAILED
    statuses = {r["file"]: r["status"] for r in parse(out)}
    assert statuses == {"a.png": "ok", "b.png": "ok", "broken.png": "error", "sub/c.png": "ok"}


def test_a_blank_page_is_read_as_blank_with_exit_status_0(capsys, tmp_path):
    Image.new("L", (200, 200), 250).save(tmp_path / "blank.png")
    code, out, _ = classify(capsys, str(tmp_path / "blank.png"))
    assert code == ExitCode.OK
    (row,) = parse(out)
    assert row["status"] == "blank" and row["digits"] == ""


def test_a_number_of_two_digits_is_read_as_a_number(capsys, tmp_path):
    data, _ = number_png(4, 1)  # labels 4 and 2
    (tmp_path / "42.png").write_bytes(data)
    code, out, _ = classify(capsys, str(tmp_path / "42.png"))
    (row,) = parse(out)
    assert code == ExitCode.OK
    assert row["status"] == "ok" and row["digits"] == "42"
    first, second = (float(c) for c in row["digit_confidences"].split())
    assert float(row["confidence"]) == pytest.approx(first * second, abs=2e-4)
    assert len(row["runner_up"]) == 2 and row["runner_up"] != "42"


NUMBERS = Path(__file__).parent / "data" / "number-samples"


def test_committed_numbers_are_read_whole_with_the_documented_header(capsys):
    text = (NUMBERS / "labels.csv").read_text()
    labels = {r["file"]: r["digits"] for r in csv.DictReader(io.StringIO(text))}
    code, out, _ = classify(capsys, str(NUMBERS))
    assert code == ExitCode.OK
    assert out.splitlines()[0] == (
        "time,file,status,digits,confidence,runner_up,runner_up_confidence,"
        "digit_confidences,note,error,width,height,sha256,model,ms,moved_to,duplicate_of"
    )
    found = {Path(row["file"]).name: row for row in parse(out)}
    assert {name: row["digits"] for name, row in found.items()} == labels
    for row in found.values():
        confidences = [float(c) for c in row["digit_confidences"].split()]
        assert len(confidences) == len(row["digits"].replace(" ", ""))
        assert float(row["confidence"]) == pytest.approx(np.prod(confidences), abs=5e-4)


def test_a_reading_of_another_length_than_expected_goes_to_review(capsys, tmp_path):
    four = Image.open(io.BytesIO(digit_png(4)[0]))
    four.save(tmp_path / "4.png")
    code, out, _ = classify(capsys, str(tmp_path / "4.png"), "--digits", "2-3")
    assert code == ExitCode.OK
    (row,) = parse(out)
    assert row["status"] == "low_confidence" and row["digits"] == "4"
    assert "expected 2 to 3 digits, read 1" in row["note"]


def test_a_bad_expected_length_is_a_usage_error(capsys, caplog, tmp_path):
    code, _, _ = classify(capsys, str(tmp_path), "--digits", "six")
    assert code == ExitCode.USAGE and "--digits must be auto" in caplog.text


def test_a_missing_path_is_a_usage_error_before_any_work(capsys, caplog, folder):
    code, out, _ = classify(capsys, str(folder), str(folder / "nope"))
    assert code == ExitCode.USAGE
    assert out == ""
    assert "no such file or folder" in caplog.text and "nope" in caplog.text


def test_output_file_is_written_whole_and_nothing_else_is_left(capsys, folder, tmp_path):
    target = tmp_path / "out" / "report.csv"
    target.parent.mkdir()
    code, out, _ = classify(capsys, str(folder), "--output", str(target))
    assert code == ExitCode.OK and out == ""
    with open(target, encoding="utf-8", newline="") as f:
        assert len(parse(f.read())) == 3
    assert [p.name for p in target.parent.iterdir()] == ["report.csv"]


def test_output_into_a_missing_folder_is_a_usage_error(capsys, caplog, folder, tmp_path):
    code, _, _ = classify(capsys, str(folder), "-o", str(tmp_path / "no" / "such" / "r.csv"))
    assert code == ExitCode.USAGE and "cannot write" in caplog.text


def test_debug_dir_gets_a_strip_per_file_named_after_it(capsys, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = classify(capsys, "scans", "--debug-dir", "debug")
    assert code == ExitCode.OK
    strips = sorted(p.name for p in (tmp_path / "debug").iterdir())
    assert strips == ["scans__a_png.png", "scans__b_png.png", "scans__sub__c_png.png"]


def test_two_folders_with_the_same_file_name_give_two_rows_and_two_strips(
    capsys, tmp_path, monkeypatch
):
    for side in ("left", "right"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "scan.png").write_bytes(digit_png(7)[0])
    (tmp_path / "scan png.png").write_bytes(digit_png(7)[0])  # flattens like scan_png.png
    (tmp_path / "scan_png.png").write_bytes(digit_png(7)[0])
    monkeypatch.chdir(tmp_path)
    named = ["left", "right", "left/scan.png", "scan png.png", "scan_png.png"]
    code, out, _ = classify(capsys, *named, "--debug-dir", "debug")
    assert code == ExitCode.OK
    files = [r["file"] for r in parse(out)]
    assert files == ["left/scan.png", "right/scan.png", "scan png.png", "scan_png.png"]
    strips = sorted(p.name for p in (tmp_path / "debug").iterdir())
    assert strips == [
        "left__scan_png.png",
        "right__scan_png.png",
        "scan_png_png-2.png",
        "scan_png_png.png",
    ]


def test_a_file_named_by_its_full_path_gets_a_readable_strip_name(capsys, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "scan.jpg").write_bytes(digit_png(7)[0])
    classify(capsys, str(tmp_path / "x" / "scan.jpg"), "--debug-dir", str(tmp_path / "debug"))
    [strip] = (tmp_path / "debug").iterdir()
    assert strip.name.endswith("__x__scan_jpg.png") and not strip.name.startswith("_")
    assert strip.name.count(".") == 1


def test_an_empty_folder_gives_the_header_only(capsys, caplog, tmp_path):
    code, out, _ = classify(capsys, str(tmp_path))
    assert code == ExitCode.OK
    assert out == rows.header_line()
    assert "no image files" in caplog.text


def test_bad_options_are_usage_errors(capsys, folder):
    assert classify(capsys, str(folder), "--min-confidence", "1.5")[0] == ExitCode.USAGE
    assert classify(capsys, str(folder), "--max-pixels", "0")[0] == ExitCode.USAGE


def test_help_explains_the_exit_status(capsys):
    with pytest.raises(SystemExit):
        cli.main(["classify", "--help"])
    text = capsys.readouterr().out
    assert "exit status:\n  0 " in text and "1    `classify`: some file could not be read" in text


def test_the_worker_pool_gives_the_same_csv(capsys, folder):
    _, alone, _ = classify(capsys, str(folder))
    code = cli.main(["classify", "--workers", "2", str(folder)])
    pooled = capsys.readouterr().out
    assert code == ExitCode.OK

    def stable(text: str) -> list[tuple[str, ...]]:
        return [(r["file"], r["status"], r["digits"], r["sha256"]) for r in parse(text)]

    assert stable(pooled) == stable(alone)


@pytest.mark.skipif(not (SCANS / "labels.csv").exists(), reason="no sample scans committed")
def test_the_committed_sample_scans_are_read_accurately(capsys, monkeypatch):
    monkeypatch.chdir(SCANS)
    code, out, _ = classify(capsys, ".")
    assert out.startswith(rows.header_line())
    with open(SCANS / "labels.csv", newline="") as f:
        labels = {r["file"]: r["label"] for r in csv.DictReader(f)}
    found = {r["file"]: r for r in parse(out)}
    assert set(found) == set(labels)
    assert code == ExitCode.OK
    correct = sum(found[name]["digits"] == label for name, label in labels.items())
    assert correct / len(labels) >= 0.85


def test_the_summary_counts_files_in_words_and_statuses_in_the_shared_order(
    capsys, caplog, tmp_path
):
    one = tmp_path / "one.png"
    one.write_bytes(digit_png(5)[0])
    caplog.set_level("INFO")
    classify(capsys, str(one))
    [summary] = [r.getMessage() for r in caplog.records if " in " in r.getMessage()]
    assert summary.startswith("1 file in ")
    assert summary.endswith(": 1 ok, 0 low_confidence, 0 blank, 0 error")
