"""The daemon under abuse, at sizes too long for CI: kill -9 loops, huge bursts, several daemons on
one inbox, hostile files and huge scans. Every file dropped must be accounted for afterwards:
exactly one report row and exactly one file in outbox/, review/ or failed/, by name and content.

Prints a markdown table (case, runs, files dropped, files accounted for, crashes) headed by the
command that reproduces it. Run by hand, not in CI:

    python bench/torture.py [--kills 50] [--burst 50000] [--daemons 4] [--stream 2000]
        [--only kill,burst,daemons,hostile,huge,slow] [--seed 1] [--work-dir DIR]

The pieces (`hostile_corpus`, `Ledger`, `account`, `Feeder`) are shared with the tests in
tests/test_hostile_inputs.py, tests/test_faults.py and tests/test_concurrency.py.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import random
import stat
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from digit_inbox.daemon import report, rows

ROLES = ("inbox", "outbox", "review", "failed", "reports", "state")


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


# EXIF orientation N: the stored picture is the upright one with the inverse of N's transform.
STORED_AS = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def oriented_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG storing `upright` turned so that a viewer honouring EXIF `orientation` shows it
    upright again."""
    transform = STORED_AS[orientation]
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
    return sorted(p for p in found if not p.name.endswith(".error.txt"))


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
