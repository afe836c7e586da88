"""The result row: one per scanned file, the same schema for `classify` and the daemon's reports.

Defined once here so the CSV header can never differ between the two. Readers index columns
by name. Since numbers are read, `digits` holds the digit string (lines separated by one space)
and `digit_confidences` one probability per digit; reports written before have a `digit`
column instead, which tells a reader which schema a file uses.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from dataclasses import dataclass
from enum import Enum
from typing import IO


class Status(str, Enum):
    OK = "ok"
    LOW_CONFIDENCE = "low_confidence"
    BLANK = "blank"
    ERROR = "error"
    CORRECTED = "corrected"  # a person's decision (`digit-inbox correct`, the review page)

    def __str__(self) -> str:
        return self.value


@dataclass
class Row:
    file: str  # path as given to `classify`, or relative to the inbox for the daemon
    status: Status
    time: str = ""  # daemon only: ISO 8601 with UTC offset, when the row was written
    digits: str = ""  # the digit string read, "7", "4021", "12 345"; empty for blank and error
    confidence: float | None = None  # the string's: the product of its digits' probabilities
    runner_up: str = ""  # the likeliest other string: the weakest digit swapped for its second
    runner_up_confidence: float | None = None
    digit_confidences: str = ""  # one probability per digit, space separated
    note: str = ""  # e.g. "first of 3 frames"
    error: str = ""  # one-line reason when status is error
    width: int | None = None
    height: int | None = None
    sha256: str = ""
    model: str = ""
    ms: float | None = None  # decode + preprocess + classify time for this file
    moved_to: str = ""  # daemon only: where the file went, relative to the data root
    duplicate_of: str = ""  # daemon only: earlier file with the same sha256


# `time` leads in the CSV so a day's report reads chronologically.
COLUMNS = ["time"] + [f.name for f in dataclasses.fields(Row) if f.name != "time"]
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(cell: str) -> str:
    """Stop spreadsheets from running a cell as a formula (CSV injection) by quoting it as text."""
    return "'" + cell if cell.startswith(FORMULA_PREFIXES) else cell


def unneutralise(cell: str) -> str:
    return cell[1:] if cell.startswith("'") and cell[1:].startswith(FORMULA_PREFIXES) else cell


def cells(row: Row) -> list[str]:
    out = []
    for name in COLUMNS:
        value = getattr(row, name)
        if value is None:
            text = ""
        elif isinstance(value, float):
            text = f"{value:.4f}" if name != "ms" else f"{value:.1f}"
        else:
            text = str(value)
        # Newlines in file names would split a row for naive readers; keep one row per line.
        text = text.replace("\r", "\\r").replace("\n", "\\n")
        out.append(neutralise(text))
    return out


def writer(stream: IO[str]) -> csv.Writer:  # type: ignore[name-defined]
    return csv.writer(stream, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)


def header_line() -> str:
    buffer = io.StringIO()
    writer(buffer).writerow(COLUMNS)
    return buffer.getvalue()


def format_rows(rows: list[Row]) -> str:
    buffer = io.StringIO()
    w = writer(buffer)
    for row in rows:
        w.writerow(cells(row))
    return buffer.getvalue()
