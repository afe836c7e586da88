"""Progress of a long `classify` on a terminal, and the summary at the end.

The progress line is redrawn in place at most every REDRAW_SECONDS on stderr, and only when
stderr is a terminal: in a log file or a pipe it would be noise, and the summary says it all.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

from digit_inbox.daemon.health import counts_text, plural
from digit_inbox.daemon.rows import Status

REDRAW_SECONDS = 0.5


class Progress:
    """Files done of `total`, rate and ETA; counts per status for the summary."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.live = self.stream.isatty()
        self.counts: Counter[Status] = Counter()
        self.start = time.perf_counter()
        self.drawn_at = 0.0

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.start

    @property
    def rate(self) -> float:
        return self.done / max(self.seconds, 1e-9)

    def update(self, status: Status) -> None:
        self.counts[status] += 1
        if self.live and time.perf_counter() - self.drawn_at >= REDRAW_SECONDS:
            self.drawn_at = time.perf_counter()
            self.stream.write("\r" + self.line() + "\x1b[K")
            self.stream.flush()

    def line(self) -> str:
        eta = (self.total - self.done) / self.rate if self.rate > 0 else float("inf")
        return (
            f"{self.done:,}/{self.total:,} files, {self.rate:,.0f} files/s, "
            f"ETA {clock(eta)}, {self.counts[Status.ERROR]:,} errors"
        )

    def close(self) -> None:
        if self.live and self.drawn_at:
            self.stream.write("\r\x1b[K")  # the summary follows in the log
            self.stream.flush()

    def summary(self, skipped: int = 0) -> str:
        by_status = {status.value: n for status, n in self.counts.items()}
        text = (
            f"{plural(self.done, 'file')} in {self.seconds:.1f} s ({self.rate:,.1f} files/s): "
            f"{counts_text(by_status)}"
        )
        if skipped:
            text += f"; {plural(skipped, 'file')} skipped, already in the output"
        return text


def clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "--:--"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
