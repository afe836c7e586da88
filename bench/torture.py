"""The daemon under abuse, at sizes too long for CI: kill -9 loops, huge bursts, several daemons on
one inbox, hostile files and huge scans. Every file dropped must be accounted for afterwards:
exactly one report row and exactly one file in outbox/, review/ or failed/, by name and content.

Cases: `hostile` (every kind of bad file at once, with a real 12000 x 12000 scan and a zlib
bomb), `slow` (writers finishing a file one byte a second for 10 s), `kill` (kill -9 at random
moments while files stream in, restarted at once), `daemons` (several daemons on one inbox under
a stream, one of them killed -9 every few seconds) and `burst` (files renamed in faster than
inotify can queue their events). Needs MNIST ($DIGIT_INBOX_MNIST_DIR) for the scans.

Prints a markdown table (case, files dropped, files accounted for, crashes, problems) headed by
the command that reproduces it; exits 1 if anything was not accounted for. Run by hand, not in
CI (the defaults take about 7 minutes on two busy cores):

    python bench/torture.py [--kills 50] [--burst 50000] [--daemons 4] [--daemon-seconds 60]
        [--rate 30] [--slow 4] [--no-huge] [--only hostile,slow,kill,daemons,burst]
        [--seed 1] [--work-dir DIR]

The pieces (`hostile_corpus`, `Ledger`, `account`, `Feeder`) are shared with the tests in
tests/test_hostile_inputs.py, tests/test_faults.py and tests/test_concurrency.py.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import os
import random
import shlex
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import yaml
from PIL import Image

from digit_inbox.daemon import report, rows
from digit_inbox.daemon.config import ROLES

try:
    from bench.scans import STORE_TRANSPOSE
except ImportError:  # run as a script: bench/ itself is on sys.path, the repo root is not
    from scans import STORE_TRANSPOSE  # type: ignore[no-redef]


# --- Scans.


@functools.cache
def mnist_test() -> tuple[np.ndarray, np.ndarray]:
    """MNIST test images and labels (from $DIGIT_INBOX_MNIST_DIR); never used for training."""
    from digit_inbox.export import mnist

    split = mnist.load_split(mnist.resolve_data_dir(None), "test")
    return split.images, split.labels


def digit_image(index: int, scale: int = 3) -> Image.Image:
    """MNIST test digit `index` as a scan shows it: dark ink on white paper, mode L."""
    images, _ = mnist_test()
    pixels = 255 - images[index % len(images)]
    return Image.fromarray(pixels).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)


def encode(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def digit_png(index: int) -> bytes:
    return encode(digit_image(index))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_declaring(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A tiny PNG whose header declares `width` x `height` grey pixels (a decompression bomb
    when large: the pixels would only be allocated by decoding it)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def zlib_bomb_png(side: int) -> bytes:
    """A real `side` x `side` white PNG that compresses to almost nothing."""
    row = b"\0" + b"\xff" * side
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row) for _ in range(side)]
    return png_declaring(side, side, b"".join(chunks) + compressor.flush())


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF header declaring a huge logical screen and one tiny frame."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b";"


def jpeg_with_exif(image: Image.Image, exif: bytes) -> bytes:
    """A JPEG with `exif` as its APP1 Exif payload (after the 'Exif\\0\\0' marker)."""
    data = encode(image, "JPEG", quality=95)
    payload = b"Exif\0\0" + exif
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment + data[2:]


def oriented_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG storing `upright` turned so that a viewer honouring EXIF `orientation` shows it
    upright again."""
    transform = STORE_TRANSPOSE.get(orientation)  # orientation 1 is stored as is
    stored = upright if transform is None else upright.transpose(transform)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def tall_digit(index: int) -> Image.Image:
    """A digit on a page taller than wide, so that a wrong rotation shows in width/height."""
    page = Image.new("L", (84, 120), 255)
    page.paste(digit_image(index), (0, 18))
    return page


# --- The hostile corpus.


@dataclass
class Case:
    """One hostile thing to drop into the inbox, and how it must end.

    `expect` is "error" (failed/ with `reason` in the row's error), "read" (a result row: ok,
    low_confidence or blank, with `note` in its note) or "gone" (no row at all).
    """

    name: bytes  # the file name, as bytes: some are not UTF-8
    expect: str
    reason: str = ""
    note: str = ""
    data: bytes | None = None  # the content, for regular files
    make: Callable[[Path], None] | None = None  # creates something other than a regular file
    width: int | None = None  # expected row width/height, when the case checks them
    height: int | None = None

    @property
    def text(self) -> str:
        return os.fsdecode(self.name)


def file_case(name: str | bytes, data: bytes, expect: str, reason: str = "", **kw: Any) -> Case:
    return Case(os.fsencode(name), expect, reason, data=data, **kw)


def hostile_corpus(max_pixels: int, *, huge: bool = False) -> list[Case]:
    """Bad, strange and malicious files; `max_pixels` is the daemon's configured limit.

    `huge` adds a real 12000 x 12000 scan (a 144 MP decode; for the torture bench).
    """
    rng = random.Random(6)
    good = digit_png(0)
    image = digit_image(1)
    jpeg = encode(image, "JPEG", quality=90)
    over = int((max_pixels * 1.2) ** 0.5) + 1  # a real image just over the limit
    frames = [digit_image(i) for i in (2, 3, 4)]
    sixteen = Image.fromarray(np.asarray(digit_image(5), np.uint16) * 257)
    palette = digit_image(6).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    white = palette.getpixel((0, 0))
    cases = [
        # Content.
        file_case("truncated.png", good[: len(good) // 2], "error", "truncated PNG"),
        file_case("truncated.jpg", jpeg[: len(jpeg) // 2], "error", "JPEG"),
        file_case("header-only.png", good[:40], "error", "corrupt image header"),
        file_case("random.png", rng.randbytes(4096), "error", "not an image"),
        file_case("random.jpg", b"\xff\xd8\xff" + rng.randbytes(3000), "error", "corrupt"),
        file_case("page.png", b"<!DOCTYPE html><html><body>Login</body></html>", "error", "HTML"),
        file_case(
            "doc.png", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "error", "PDF"
        ),
        file_case("archive.png", b"PK\x03\x04" + rng.randbytes(200), "error", "ZIP"),
        file_case("text.jpg", b"hello, this is not a picture\n" * 20, "error", "text"),
        file_case("jpeg-inside.png", jpeg, "read", note="JPEG content despite the .png name"),
        file_case("png-inside.tif", good, "read", note="PNG content despite the .tif name"),
        # Sizes.
        file_case("bomb.png", png_declaring(100_000, 100_000), "error", "MP"),
        file_case("bomb-just-over.png", png_declaring(over, over), "error", "MP"),
        file_case("bomb.gif", gif_declaring(65_535, 65_535), "error", "MP"),
        file_case("over-limit.png", encode(Image.new("L", (over, over), 255)), "error", "limit"),
        file_case("one-pixel.png", encode(Image.new("L", (1, 1), 0)), "error", "too small"),
        file_case("strip.png", encode(Image.new("L", (3000, 10), 255)), "error", "elongated"),
        # Encodings: each is read.
        file_case("sixteen-bit.png", encode(sixteen), "read"),
        file_case("cmyk.jpg", encode(digit_image(7).convert("CMYK"), "JPEG"), "read"),
        file_case("cmyk.tif", encode(digit_image(7).convert("CMYK"), "TIFF"), "read"),
        file_case("palette-alpha.png", encode(palette, transparency=white), "read"),
        file_case(
            "animated.gif",
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
            "read",
            note="first of 3 frames",
        ),
        file_case(
            "multipage.tif",
            encode(frames[0], "TIFF", save_all=True, append_images=frames[1:2]),
            "read",
            note="first of 2 frames",
        ),
        file_case("corrupt-exif.jpg", jpeg_with_exif(image, rng.randbytes(300)), "read"),
        file_case("looping-exif.jpg", jpeg_with_exif(image, b"II*\0\x08\0\0\0" * 40), "read"),
    ]
    upright = tall_digit(8)
    for orientation in range(1, 9):
        data = oriented_jpeg(upright, orientation)
        cases.append(file_case(f"exif-{orientation}.jpg", data, "read", width=84, height=120))
    if huge:
        side = 12_000
        big = Image.new("L", (side, side), 255)
        big.paste(digit_image(9, scale=40), (side // 3, side // 3))
        cases.append(file_case("huge-12000.png", encode(big, compress_level=1), "read"))
        cases.append(file_case("zlib-bomb.png", zlib_bomb_png(6_000), "read"))
    # Names: unicode, spaces, newlines, quotes, commas, formula prefixes, not UTF-8, 255 bytes.
    for name in (
        "ünïcödé 数字 ✓.png",
        "with  spaces .png",
        "new\nline.png",
        "carriage\rreturn.png",
        "tab\there.png",
        "quotes \"double\" 'single'.png",
        "comma, separated,.png",
        '=HYPERLINK("x";"y").png',
        "+1+1.png",
        "-2-2.png",
        "@SUM(A1).png",
        "=cmd|' -C calc'!A0.png",
        b"not-utf8-\xff\xfe.png",
        "x" * 251 + ".png",
        "é" * 125 + "x.png",  # 255 bytes in two-byte characters
    ):
        cases.append(file_case(name, digit_png(10 + len(cases)), "read"))
    # A bad file with a 255-byte name: its error note must fit beside it.
    cases.append(file_case("y" * 251 + ".png", rng.randbytes(100), "error", "not an image"))
    # Things that are not regular files: never opened, never followed.
    cases += [
        Case(b"passwd.png", "error", "symbolic link", make=symlink_to("/etc/passwd")),
        Case(b"folder-link.png", "error", "symbolic link", make=symlink_to("/")),
        Case(b"dangling.png", "error", "symbolic link", make=symlink_to("/nonexistent/x.png")),
        Case(b"pipe.png", "error", "pipe", make=os.mkfifo),
        Case(b"sub-folder", "error", "folder", make=folder_with_a_scan(good)),
    ]
    return cases


def symlink_to(target: str) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        os.symlink(target, path)

    return make


def folder_with_a_scan(data: bytes) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        path.mkdir()
        (path / "inside.png").write_bytes(data)

    return make


class Feeder:
    """Drops scans into an inbox from a thread at a steady pace until stopped: most renamed in,
    every third written in place, every `bad_every`-th random bytes. Names are unique."""

    def __init__(
        self,
        inbox: Path,
        ledger: Ledger,
        *,
        rate: float = 50.0,
        prefix: str = "stream",
        bad_every: int = 10,
        seed: int = 0,
    ) -> None:
        self.inbox, self.ledger, self.rate, self.prefix = inbox, ledger, rate, prefix
        self.bad_every = bad_every
        self.rng = random.Random(seed)
        self.count = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="feeder", daemon=True)

    def __enter__(self) -> Feeder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()

    def run(self) -> None:
        while not self.stopping.is_set():
            i = self.count
            if self.bad_every and i % self.bad_every == self.bad_every - 1:
                data = self.rng.randbytes(self.rng.randint(1, 3000))
            else:
                data = digit_png(self.rng.randrange(10_000))
            name = f"{self.prefix}-{i:06d}.png".encode()
            try:
                self.ledger.drop(self.inbox, name, data, rename=i % 3 != 0)
            except FileNotFoundError:  # no inbox right now: nothing was dropped
                self.stopping.wait(0.05)
                continue
            self.count += 1
            self.stopping.wait(1 / self.rate)


# --- Dropping and accounting.


@dataclass
class Ledger:
    """Every file dropped into an inbox: name -> sha256 (None for things that are not files)."""

    dropped: dict[bytes, str | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __len__(self) -> int:
        return len(self.dropped)

    def drop(self, inbox: Path, name: bytes, data: bytes, *, rename: bool = True) -> None:
        """Write `data` as `name`: aside then renamed in (careful writers), or in place.

        Recorded once it is there: FileNotFoundError (no inbox) drops nothing.
        """
        target = os.path.join(os.fsencode(inbox), name)
        if rename:
            aside = os.path.join(
                os.fsencode(inbox.parent), b".incoming-" + os.urandom(6).hex().encode()
            )
            with open(aside, "wb") as f:
                f.write(data)
            try:
                os.rename(aside, target)
            except OSError:
                os.unlink(aside)
                raise
        else:
            with open(target, "wb") as f:
                f.write(data)
        with self.lock:
            assert name not in self.dropped, name
            self.dropped[name] = hashlib.sha256(data).hexdigest()

    def drop_case(self, inbox: Path, case: Case) -> None:
        if case.data is not None:
            self.drop(inbox, case.name, case.data)
            return
        assert case.make is not None
        with self.lock:
            self.dropped[case.name] = None
        case.make(Path(os.fsdecode(os.path.join(os.fsencode(inbox), case.name))))


def report_cell(name: str) -> str:
    """The `file` cell a report holds for a file called `name` (escaped, neutralised)."""
    line = report.encode_line(rows.Row(file=name, status=rows.Status.OK))
    return next(csv.reader(io.StringIO(line.decode(report.ENCODING))))[rows.COLUMNS.index("file")]


def read_reports(folders: Iterable[Path]) -> tuple[list[dict[str, str]], list[str]]:
    """Every row of every report in `folders`, and the problems of the files themselves (a torn
    line, a line count that does not match the row count, a repeated header)."""
    found: list[dict[str, str]] = []
    problems = []
    for folder in folders:
        for path in sorted(folder.glob("*.csv")):
            data = path.read_bytes()
            if data and not data.endswith(b"\r\n"):
                problems.append(f"{path.name}: torn last line")
            text = data.decode(report.ENCODING)
            parsed = list(csv.DictReader(io.StringIO(text, newline="")))
            lines = text.count("\n") - 1  # what a naive line-by-line reader sees
            if len(parsed) != lines:
                problems.append(f"{path.name}: {len(parsed)} rows in {lines} lines")
            if any(r["time"] == "time" for r in parsed):
                problems.append(f"{path.name}: a repeated header")
            found += parsed
    return found, problems


def sha256_of(path: Path) -> str | None:
    """The content's sha256, for regular files only (links, pipes and folders are not read)."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        return None
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def filed(outbox: Path, flat: Iterable[Path]) -> list[Path]:
    """Everything filed: the outbox's files at any depth (its folders are the layout's), and
    whatever is directly in review/ and failed/ (a failed sub-folder counts as one), without
    the error notes."""
    found = [Path(d) / n for d, _, names in os.walk(outbox) for n in names]
    for folder in flat:
        found += folder.iterdir() if folder.is_dir() else []
    return sorted(p for p in found if not p.name.endswith((".error.txt", ".review.txt")))


class Folders(Protocol):
    inbox: Path
    outbox: Path
    review: Path
    failed: Path


@dataclass
class Account:
    dropped: int
    accounted: int
    problems: list[str]


def account(ledger: Ledger, folders: Folders, reports: Iterable[Path]) -> Account:
    """Check every dropped file has exactly one row and exactly one copy in the filing folders,
    with the content it was dropped with, and that nothing is left in the inbox or claimed.

    `reports`: every reports folder the daemons on this inbox write.
    """
    found, problems = read_reports(reports)
    by_cell: dict[str, list[dict[str, str]]] = {}
    for row in found:
        by_cell.setdefault(row["file"], []).append(row)
    on_disk = Counter(
        sha256_of(p) or f"special:{p.name}"
        for p in filed(folders.outbox, (folders.review, folders.failed))
    )
    root = Path(os.path.commonpath([folders.outbox, folders.review, folders.failed]))
    wanted: Counter[str] = Counter()
    accounted = 0
    for name, sha in ledger.dropped.items():
        text = os.fsdecode(name)
        matches = by_cell.pop(report_cell(text), [])
        if len(matches) != 1:
            problems.append(f"{text!r}: {len(matches)} rows")
            continue
        row = matches[0]
        if sha is not None:
            wanted[sha] += 1
            if row["sha256"] and row["sha256"] != sha:
                problems.append(f"{text!r}: the row's sha256 is not the dropped file's")
                continue
        escaped = report_cell(text) != text  # such a moved_to cannot be looked up
        if not escaped and not os.path.lexists(root / row["moved_to"]):
            problems.append(f"{text!r}: nothing at {row['moved_to']}")
            continue
        accounted += 1
    for cell, extra in by_cell.items():
        problems.append(f"{len(extra)} row(s) for {cell!r}, which was never dropped")
    for sha, count in wanted.items():
        if on_disk[sha] != count:
            problems.append(f"content {sha[:12]}: {on_disk[sha]} file(s) filed, {count} dropped")
    left = [p.name for p in folders.inbox.iterdir() if not p.name.startswith(".")]
    if left:
        problems.append(f"{len(left)} left in the inbox, e.g. {left[:3]}")
    processing = folders.inbox / ".digit-inbox" / "processing"
    claimed = list(processing.iterdir()) if processing.is_dir() else []
    if claimed:
        problems.append(f"{len(claimed)} left claimed in processing/")
    return Account(len(ledger), accounted, problems)


# --- Real daemons.


def write_config(root: Path, paths: dict[str, str] | None = None, **sections: Any) -> Path:
    """A config under `root`: folders in root/var (or `paths`), defaults otherwise."""
    document: dict[str, Any] = {"paths": {r: f"./var/{r}" for r in ROLES} | (paths or {})}
    document["metrics"] = {"interval_seconds": 2}
    for name, values in sections.items():
        document.setdefault(name, {}).update(values)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass
class Layout:
    """The folders of a config (the shared ones when several daemons use one inbox)."""

    inbox: Path
    outbox: Path
    review: Path
    failed: Path

    @classmethod
    def under(cls, var: Path) -> Layout:
        return cls(var / "inbox", var / "outbox", var / "review", var / "failed")


class Daemon:
    """`digit-inbox run` as a subprocess; every start's log is kept, exits are counted."""

    def __init__(self, config: Path, name: str = "daemon") -> None:
        self.config, self.name = config, name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.crashes: list[str] = []  # exits nobody asked for, tracebacks

    @property
    def log_path(self) -> Path:
        return self.config.parent / f"{self.name}-{self.starts}.log"

    def start(self, timeout: float = 120) -> None:
        self.starts += 1
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "digit_inbox.daemon", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.config.parent,
            )
        deadline = time.monotonic() + timeout
        while b"ready:" not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.crashes.append(f"{self.log_path.name}: did not start")
                return
            time.sleep(0.05)

    def check(self) -> None:
        """Note a daemon that exited on its own."""
        if self.proc is not None and self.proc.poll() is not None:
            self.crashes.append(f"{self.log_path.name}: exited with {self.proc.returncode}")
            self.proc = None

    def kill(self) -> None:
        self.check()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        self.check()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            code = self.proc.wait(300)
            if code != 0:
                self.crashes.append(f"{self.log_path.name}: SIGTERM gave exit {code}")
            self.proc = None
        for i in range(1, self.starts + 1):
            log = (self.config.parent / f"{self.name}-{i}.log").read_text(errors="replace")
            if "Traceback" in log:
                self.crashes.append(f"{self.name}-{i}.log: a traceback")


def wait_for(condition: Callable[[], bool], timeout: float, daemons: Iterable[Daemon]) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        for daemon in daemons:
            daemon.check()
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def row_count(reports: Iterable[Path]) -> int:
    """Rows in the reports so far (lines, less one header per file; cheap enough to poll)."""
    total = 0
    for folder in reports:
        for path in folder.glob("*.csv"):
            with open(path, "rb") as f:
                lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
                total += max(0, lines - 1)
    return total


# --- The cases.


@dataclass
class Result:
    case: str
    detail: str
    dropped: int = 0
    accounted: int = 0
    crashes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def finish(
    result: Result, ledger: Ledger, layout: Layout, reports: list[Path], daemons: list[Daemon]
) -> Result:
    """Wait for every row (or give up after a quiet spell), stop the daemons, account."""
    last, quiet_since = -1, time.monotonic()
    while (count := row_count(reports)) < len(ledger):
        for daemon in daemons:
            daemon.check()
        if count != last:
            last, quiet_since = count, time.monotonic()
        elif time.monotonic() - quiet_since > 120:
            result.problems.append(f"stalled at {count} of {len(ledger)} rows")
            break
        time.sleep(0.5)
    for daemon in daemons:
        daemon.stop()
        result.crashes += daemon.crashes
    outcome = account(ledger, layout, reports)
    result.dropped, result.accounted = outcome.dropped, outcome.accounted
    result.problems += outcome.problems
    return result


def kill_loop(work: Path, kills: int, rate: float, rng: random.Random) -> Result:
    """kill -9 at random moments while files stream in; restart at once, like systemd."""
    config = write_config(work, recognition={"batch_size": 8})
    layout, reports = Layout.under(work / "var"), [work / "var" / "reports"]
    result = Result("kill -9 loop", f"{kills} kills at random moments, {rate:g} files/s streaming")
    daemon, ledger = Daemon(config), Ledger()
    daemon.start()
    with Feeder(layout.inbox, ledger, rate=rate, seed=rng.randrange(1 << 30)):
        for _ in range(kills):
            time.sleep(rng.uniform(0.1, 3.0))
            daemon.kill()
            daemon.start()
    return finish(result, ledger, layout, reports, [daemon])


def burst(work: Path, count: int, rng: random.Random) -> Result:
    """`count` files renamed into the inbox as fast as possible while the daemon runs: far
    more events than the kernel queues (16384 by default), so the rescans must find the rest."""
    config = write_config(work)
    layout, reports = Layout.under(work / "var"), [work / "var" / "reports"]
    queue = Path("/proc/sys/fs/inotify/max_queued_events").read_text().strip()
    result = Result("burst", f"{count} files renamed in at once (inotify queue: {queue} events)")
    daemon, ledger = Daemon(config), Ledger()
    daemon.start()
    staging = work / "staging"
    staging.mkdir()
    pool = [digit_png(rng.randrange(10_000)) for _ in range(500)]  # repeats are duplicates
    names = []
    for i in range(count):
        name = f"burst-{i:06d}.png"
        (staging / name).write_bytes(pool[i % len(pool)])
        names.append(name)
    for i, name in enumerate(names):
        os.rename(staging / name, layout.inbox / name)
        ledger.dropped[name.encode()] = hashlib.sha256(pool[i % len(pool)]).hexdigest()
    return finish(result, ledger, layout, reports, [daemon])


def several_daemons(
    work: Path, count: int, seconds: float, rate: float, rng: random.Random
) -> Result:
    """`count` daemons on one inbox (own state and reports each) under a stream; one of them
    is killed -9 and restarted every few seconds."""
    shared = work / "shared"
    daemons = []
    for i in range(count):
        root = work / f"daemon-{i}"
        root.mkdir()
        paths = {role: f"../shared/{role}" for role in ("inbox", "outbox", "review", "failed")}
        daemons.append(Daemon(write_config(root, paths=paths, recognition={"workers": 1})))
    layout = Layout.under(shared)
    reports = [work / f"daemon-{i}" / "var" / "reports" for i in range(count)]
    result = Result(
        f"{count} daemons, one inbox",
        f"{seconds:g} s of {rate:g} files/s; one daemon killed -9 every ~5 s",
    )
    for daemon in daemons:
        daemon.start()
    ledger = Ledger()
    with Feeder(layout.inbox, ledger, rate=rate, seed=rng.randrange(1 << 30)):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(2, 8))
            victim = rng.choice(daemons)
            victim.kill()
            victim.start()
    return finish(result, ledger, layout, reports, daemons)


def hostile(work: Path, huge: bool) -> Result:
    """Every hostile case at once, with the daemon's default limits (a 12000x12000 scan is over
    them: refused); with `huge`, a second daemon whose limit lets it decode the huge scan."""
    max_pixels = 150_000_000 if huge else 40_000_000
    config = write_config(
        work, watch={"empty_timeout_seconds": 5}, recognition={"max_pixels": max_pixels}
    )
    layout, reports = Layout.under(work / "var"), [work / "var" / "reports"]
    corpus = hostile_corpus(max_pixels, huge=huge)
    result = Result(
        "hostile files" + (" + huge scans" if huge else ""),
        f"{len(corpus) + 1} kinds; max_pixels {max_pixels / 1e6:g} MP",
    )
    daemon, ledger = Daemon(config), Ledger()
    daemon.start()
    for case in corpus:
        ledger.drop_case(layout.inbox, case)
    ledger.drop(layout.inbox, b"empty.png", b"", rename=False)
    outcome = finish(result, ledger, layout, reports, [daemon])
    rows_by_cell = {r["file"]: r for r in read_reports(reports)[0]}
    for case in corpus:
        row = rows_by_cell.get(report_cell(case.text))
        if row is None:
            continue
        is_error = row["status"] == "error"
        if is_error != (case.expect == "error") or case.reason not in row["error"]:
            outcome.problems.append(f"{case.text[:40]!r}: {row['status']} {row['error']!r}")
    return outcome


def slow_writers(work: Path, writers: int, seconds: int, settle: float) -> Result:
    """Writers finishing their files one byte a second (a slow scanner on a network share)."""
    config = write_config(work, watch={"settle_seconds": settle})
    layout, reports = Layout.under(work / "var"), [work / "var" / "reports"]
    result = Result(
        "slow writers",
        f"{writers} files written 1 byte/s for {seconds} s; settle_seconds {settle:g}",
    )
    daemon, ledger = Daemon(config), Ledger()
    daemon.start()

    def write(i: int) -> None:
        data = digit_png(5000 + i)
        with open(layout.inbox / f"slow-{i}.png", "wb") as f:
            f.write(data[:-seconds])
            for k in range(len(data) - seconds, len(data)):
                f.flush()
                time.sleep(1)
                f.write(data[k : k + 1])
        with ledger.lock:
            ledger.dropped[f"slow-{i}.png".encode()] = hashlib.sha256(data).hexdigest()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return finish(result, ledger, layout, reports, [daemon])


# --- The table.


def table(results: list[Result], command: str) -> str:
    lines = [
        f"`{command}`",
        "",
        "| case | what | files dropped | accounted for | crashes | problems | time |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for r in results:
        problems = "; ".join(r.problems[:3]) + (" ..." if len(r.problems) > 3 else "")
        lines.append(
            f"| {r.case} | {r.detail} | {r.dropped} | {r.accounted} | {len(r.crashes)} | "
            f"{problems or 'none'} | {r.seconds:.0f} s |"
        )
    total = Result("**all**", f"{len(results)} cases")
    for r in results:
        total.dropped += r.dropped
        total.accounted += r.accounted
        total.crashes += r.crashes
        total.problems += r.problems
        total.seconds += r.seconds
    lines.append(
        f"| {total.case} | {total.detail} | {total.dropped} | {total.accounted} | "
        f"{len(total.crashes)} | {len(total.problems)} | {total.seconds:.0f} s |"
    )
    return "\n".join(lines)


CASES = ("hostile", "slow", "kill", "daemons", "burst")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="kill -9 loops")
    parser.add_argument("--rate", type=float, default=30, help="files/s the feeders drop")
    parser.add_argument("--burst", type=int, default=50_000, help="files in the burst")
    parser.add_argument("--daemons", type=int, default=4, help="daemons on one inbox")
    parser.add_argument("--daemon-seconds", type=float, default=60, help="their stream's length")
    parser.add_argument("--slow", type=int, default=4, help="slow writers")
    parser.add_argument("--no-huge", action="store_true", help="skip the 12000x12000 scans")
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--work-dir", type=Path, help="default: a new temp folder, removed after")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    command = shlex.join(["python", "bench/torture.py", *sys.argv[1:]])
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="digit-inbox-torture-"))
    print(command, file=sys.stderr)
    runs: dict[str, Callable[[Path], Result]] = {
        "hostile": lambda w: hostile(w, huge=not args.no_huge),
        "slow": lambda w: slow_writers(w, args.slow, 10, settle=2.0),
        "kill": lambda w: kill_loop(w, args.kills, args.rate, rng),
        "daemons": lambda w: several_daemons(w, args.daemons, args.daemon_seconds, args.rate, rng),
        "burst": lambda w: burst(w, args.burst, rng),
    }
    results = []
    for name in args.only.split(","):
        folder = work / name
        folder.mkdir(parents=True)
        start = time.monotonic()
        print(f"{name}...", file=sys.stderr, flush=True)
        result = runs[name](folder)
        result.seconds = time.monotonic() - start
        print(f"{name}: {result}", file=sys.stderr, flush=True)
        results.append(result)
    print(table(results, command))
    if args.work_dir is None and not any(r.problems or r.crashes for r in results):
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(r.problems or r.crashes for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
