"""`digit-inbox correct`: a person's decision files the scan once, writes one `corrected` row,
and keeps the model's input for learning, whatever instant it is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from digit_inbox.daemon import config, corrections, filing, report, service
from digit_inbox.daemon.classifier import Classifier, embedded_model
from digit_inbox.daemon.cli import main
from digit_inbox.daemon.errors import UsageError
from digit_inbox.daemon.rows import Status
from tests.helpers import Folders, digit_png, drop, number_png, unsure_in_review, write_config


class Crash(BaseException):
    """Stands for kill -9: nothing after it runs, no handler catches it."""


@pytest.fixture
def office(tmp_path: Path) -> tuple[Path, Folders]:
    """A config whose review/ holds two scans the daemon was unsure of, with their rows."""
    return unsure_in_review(tmp_path, [("a.png", 0), ("b.png", 1)], confidence=0.55)


def corrected_rows(folders: Folders) -> list[dict[str, str]]:
    return [r for r in folders.report_rows() if r["status"] == "corrected"]


def test_a_correction_files_the_scan_where_the_daemon_would_and_writes_one_row(office):
    cfg_path, folders = office
    assert main(["correct", "--config", str(cfg_path), str(folders.review / "a.png"), "7"]) == 0
    assert (folders.outbox / "7" / "a.png").is_file()
    assert not (folders.review / "a.png").exists()
    (row,) = corrected_rows(folders)
    assert row["digits"] == "7"
    assert row["file"] == "a.png"
    assert row["note"] == "model read 1 (0.5500)"
    assert row["moved_to"] == "outbox/7/a.png"
    assert row["sha256"] == corrections.sha256_of(folders.outbox / "7" / "a.png")
    (sample,) = corrections.samples(config.load(cfg_path))
    assert (sample.label, sample.kind, sample.model_reading) == ("7", "corrected", "1")
    assert sample.images is not None and sample.images.shape == (1, 28, 28)
    assert sample.images.max() > 0.5  # the digit's ink, not an empty input


def test_a_settled_file_leaves_no_review_note_behind(office):
    cfg_path, folders = office
    note = folders.review / "a.png.review.txt"
    note.write_text("a.png needs a person to look at it.\n")
    assert main(["correct", "--config", str(cfg_path), str(folders.review / "a.png"), "7"]) == 0
    assert not note.exists()
    assert (folders.outbox / "7" / "a.png").is_file()


def test_not_a_number_goes_to_failed_with_the_reason(office):
    cfg_path, folders = office
    assert main(["correct", "-c", str(cfg_path), "b.png", "none"]) == 0
    assert (folders.failed / "b.png").is_file()
    assert "not a number" in (folders.failed / "b.png.error.txt").read_text()
    (row,) = corrected_rows(folders)
    assert (row["digits"], row["moved_to"]) == ("", "failed/b.png")
    assert row["note"].startswith("not a number; model read 1")


def test_a_confirmation_is_recorded_and_kept_for_learning(office):
    cfg_path, folders = office
    main(["correct", "-c", str(cfg_path), "a.png", "1"])
    (row,) = corrected_rows(folders)
    assert row["note"] == "confirmed: model read 1 (0.5500)"
    (sample,) = corrections.samples(config.load(cfg_path))
    assert sample.kind == "confirmed"


def test_a_multi_digit_reading_files_under_its_digits(office):
    cfg_path, folders = office
    main(["correct", "-c", str(cfg_path), "a.png", "42"])
    assert (folders.outbox / "42" / "a.png").is_file()


def test_a_numbers_correction_keeps_one_input_per_digit_when_its_marks_are_its_digits(office):
    cfg_path, folders = office
    data, digits = number_png(3, 2, 1)  # three MNIST test digits side by side
    path = drop(folders.review, "n.png", data)
    assert main(["correct", "-c", str(cfg_path), str(path), digits]) == 0
    (sample,) = corrections.samples(config.load(cfg_path))
    assert sample.label == digits
    assert sample.images is not None and sample.images.shape == (3, 28, 28)
    read = Classifier(embedded_model()).predict(sample.images).argmax(1)
    assert "".join(map(str, read)) == digits  # each input is its digit, in reading order


def test_a_reading_with_more_digits_than_marks_keeps_no_input(office):
    cfg_path, _ = office
    assert main(["correct", "-c", str(cfg_path), "a.png", "11"]) == 0  # one mark, two digits
    (sample,) = corrections.samples(config.load(cfg_path))
    assert sample.label == "11" and sample.images is None


def test_running_the_same_correction_again_adds_nothing(office):
    cfg_path, folders = office
    for _ in range(2):
        assert main(["correct", "-c", str(cfg_path), "a.png", "7"]) == 0
    assert main(["correct", "-c", str(cfg_path), str(folders.review / "a.png"), "7"]) == 0
    assert len(corrected_rows(folders)) == 1
    assert len(corrections.samples(config.load(cfg_path))) == 1


def test_a_second_decision_about_the_same_file_is_a_new_row(office):
    """An undo is a new decision, never an edited row."""
    cfg_path, folders = office
    main(["correct", "-c", str(cfg_path), "a.png", "7"])
    main(["correct", "-c", str(cfg_path), "a.png", "9"])
    assert [r["digits"] for r in corrected_rows(folders)] == ["7", "9"]
    assert (folders.outbox / "9" / "a.png").is_file()
    assert not (folders.outbox / "7" / "a.png").exists()


def test_a_taken_name_is_never_overwritten(office):
    cfg_path, folders = office
    (folders.outbox / "7").mkdir(parents=True)
    (folders.outbox / "7" / "a.png").write_bytes(b"someone else's scan")
    main(["correct", "-c", str(cfg_path), "a.png", "7"])
    assert (folders.outbox / "7" / "a.png").read_bytes() == b"someone else's scan"
    assert (folders.outbox / "7" / "a_1.png").is_file()


@pytest.mark.parametrize("digits", ["seven", "", "7a", "-1"])
def test_digits_that_are_not_digits_are_refused(office, digits):
    cfg_path, folders = office
    assert main(["correct", "-c", str(cfg_path), "a.png", digits]) == 2
    assert (folders.review / "a.png").is_file()
    assert corrected_rows(folders) == []


def test_only_files_in_review_or_the_outbox_can_be_corrected(office, tmp_path):
    cfg_path, folders = office
    outside = tmp_path / "secret.png"
    outside.write_bytes(digit_png(2)[0])
    (folders.review / "link.png").symlink_to(outside)
    (folders.review / "sub").symlink_to(tmp_path)
    for file in (
        str(outside),
        str(folders.review / "link.png"),
        str(folders.review / "sub" / "secret.png"),
        str(folders.review / ".." / ".." / "secret.png"),
        str(folders.inbox),
        "no-such.png",
    ):
        assert main(["correct", "-c", str(cfg_path), file, "7"]) == 2, file
    assert outside.is_file() and corrected_rows(folders) == []


CRASH_POINTS = {
    "after the sample": (corrections.Corrector, "record"),
    "after CLAIMED": (filing, "claim"),
    "after the claim": (service.Daemon, "decide"),
    "after CLASSIFIED": (service.Daemon, "place"),
    "after placing": (report.Report, "append"),
    "after the row": (filing, "release"),
    "before DONE": (corrections.Corrector, "mark_finished"),
}


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_killed_at_any_step_and_run_again_gives_one_row_and_one_file(office, point, monkeypatch):
    cfg_path, folders = office
    owner, name = CRASH_POINTS[point]

    def crash(*args, **kwargs):
        raise Crash(point)

    with monkeypatch.context() as patch:
        patch.setattr(owner, name, crash)
        with pytest.raises(Crash):
            main(["correct", "-c", str(cfg_path), str(folders.review / "a.png"), "7"])
    assert main(["correct", "-c", str(cfg_path), str(folders.review / "a.png"), "7"]) == 0
    assert [r["digits"] for r in corrected_rows(folders)] == ["7"]
    assert (folders.outbox / "7" / "a.png").is_file()
    assert folders.filed() == sorted([folders.outbox / "7" / "a.png", folders.review / "b.png"])
    assert os.listdir(folders.processing) == []
    assert [s.label for s in corrections.samples(config.load(cfg_path))] == ["7"]


def test_the_next_correction_finishes_a_killed_one(office, monkeypatch):
    cfg_path, folders = office
    with monkeypatch.context() as patch:
        patch.setattr(report.Report, "append", lambda *a: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            main(["correct", "-c", str(cfg_path), "a.png", "7"])
    main(["correct", "-c", str(cfg_path), "b.png", "3"])
    assert sorted(r["digits"] for r in corrected_rows(folders)) == ["3", "7"]
    assert not list(folders.review.iterdir())


def test_a_decision_row_without_a_report_row_says_the_reading_is_unknown(tmp_path):
    row = corrections.decision_row(None, "x.png", "abc", "5")
    assert (row.file, row.digits, row.status) == ("x.png", "5", Status.CORRECTED)
    assert "unknown" in row.note


def test_parse_digits_reads_none_as_not_a_number():
    assert corrections.parse_digits(" NONE ") == ""
    assert corrections.parse_digits("042") == "042"
    with pytest.raises(UsageError):
        corrections.parse_digits("4 2")


@pytest.mark.slow
def test_corrections_killed_with_sigkill_beside_a_running_daemon_are_filed_once(
    tmp_path, start_daemon
):
    """Real processes: the daemon files three scans into review/, each correction is killed
    at some instant and run again; one row and one file each, and the daemon keeps going."""
    cfg_path = write_config(tmp_path, recognition={"min_confidence": 1.0})
    daemon = start_daemon(cfg_path)
    folders = daemon.folders
    for index in range(3):
        drop(folders.inbox, f"s{index}.png", digit_png(10 + index)[0])
    daemon.wait_rows(3)
    command = [sys.executable, "-m", "digit_inbox.daemon", "correct", "-c", str(cfg_path)]
    for index, delay in enumerate((0.3, 0.6, 0.9)):
        args = [*command, f"s{index}.png", str(index)]
        victim = subprocess.Popen(args, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            victim.wait(delay)
        except subprocess.TimeoutExpired:
            victim.send_signal(signal.SIGKILL)
            victim.wait()
        subprocess.run(args, check=True, capture_output=True)
    assert sorted(r["digits"] for r in corrected_rows(folders)) == ["0", "1", "2"]
    assert folders.filed() == [folders.outbox / f"{i}" / f"s{i}.png" for i in range(3)]
    drop(folders.inbox, "after.png", digit_png(20)[0])
    daemon.wait_rows(7)
    assert daemon.stop() == 0


def test_an_undo_is_a_new_row_that_returns_the_file_to_review(office):
    cfg_path, folders = office
    cfg = config.load(cfg_path)
    with corrections.Corrector(cfg) as corrector:
        corrector.correct("a.png", "7")
        corrector.undo(str(folders.outbox / "7" / "a.png"))
    assert (folders.review / "a.png").is_file()
    assert [(r["digits"], r["moved_to"]) for r in corrected_rows(folders)] == [
        ("7", "outbox/7/a.png"),
        ("", "review/a.png"),
    ]
    assert corrected_rows(folders)[1]["note"].startswith(corrections.UNDO_NOTE)
    assert learn_labels(cfg) == []  # the decision taken back is not learnt from


def learn_labels(cfg: config.Config) -> list[int]:
    from digit_inbox.daemon import learn

    return learn.usable(corrections.samples(cfg))[1].tolist()
