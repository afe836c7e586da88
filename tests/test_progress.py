"""classify's progress: a line redrawn in place on a terminal (files done, rate, ETA), nothing
when stderr is a file or a pipe, and a summary with the counts per status and files/s."""

from __future__ import annotations

import io

from digit_inbox.daemon import progress
from digit_inbox.daemon.progress import Progress, clock
from digit_inbox.daemon.rows import Status


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_shows_files_done_rate_and_eta(monkeypatch):
    monkeypatch.setattr(progress, "REDRAW_SECONDS", 0.0)
    screen = Terminal()
    bar = Progress(4, screen)
    bar.update(Status.OK)
    bar.update(Status.ERROR)
    text = screen.getvalue()
    assert text.startswith("\r1/4 files, ")
    assert "\r2/4 files, " in text and "files/s, ETA " in text and "1 errors" in text
    bar.close()
    assert screen.getvalue().endswith("\r\x1b[K")  # the line is wiped for the summary


def test_when_stderr_is_not_a_terminal_nothing_is_drawn():
    log_file = io.StringIO()
    bar = Progress(3, log_file)
    for status in (Status.OK, Status.BLANK, Status.OK):
        bar.update(status)
    bar.close()
    assert log_file.getvalue() == ""


def test_the_summary_counts_each_status_and_the_skipped_files():
    bar = Progress(4, io.StringIO())
    for status in (Status.OK, Status.OK, Status.LOW_CONFIDENCE, Status.BLANK):
        bar.update(status)
    text = bar.summary(skipped=7)
    assert text.startswith("4 files in ") and " files/s): " in text
    assert "2 ok, 1 low_confidence, 1 blank, 0 error; 7 files skipped" in text


def test_eta_reads_as_a_clock():
    assert clock(0) == "0:00:00"
    assert clock(3725.2) == "1:02:05"
    assert clock(float("inf")) == "--:--"
