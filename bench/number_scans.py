"""Scan-like images of handwritten *numbers* built from MNIST test digits, with their labels.

People write numbers, not single digits: a score of 17, a quantity of 250, an amount of
19.272 with a separator, a ticket number, a page of several numbers. This module strings
MNIST *test* digits (never training ones: the model learnt those) into such numbers and puts
them on the pages of `scans.py` (its paper, inks, light, clutter and file encodings), so the
whole pipeline can be scored on the string it reads.

What a number can look like, each recorded as a tag:

- `length:N` 1-10 digits per line; `lines:2|3` several numbers on one page, one per line;
- `spacing:` normal, tight, touching (strokes of neighbours meet) or overlap (they cross a
  little), for at least one pair of neighbours and about half of them (the rest tight);
- `sep:` dot, comma (thousands or decimal, a small mark on the baseline), dash (mid-height,
  between groups), slashdash (`/-` after an amount), equals (`=` after it), trail (`-` after
  it): drawn with the pen, never part of the expected digits;
- `underline` (drawn by hand under the number), `sizes:mixed` (digits of one number differ
  in height by up to ~40 %), `printed` with `printed:left|above` (a printed form label such
  as "Amount:" or "No." near the number, which must not be read);
- plus `scans.py`'s tags for the page (`size:`, `ink:`, `paper:`, `clutter:`, `light:`,
  `geom:`, `format:`, `mode:` ...).

labels.csv: `file,digits,written,mnist_indices,tags`. `digits` is what a reader should
report: the digits in reading order, lines separated by one space ("19272", "12 345");
`written` is what the pen drew, separators included ("19.272", "12 345/-").

Every choice comes from a numpy Generator seeded per file, so a set is reproducible from
(seed, count, preset, kinds) alone, whatever the number of worker processes.

    python bench/number_scans.py --out DIR --count N --seed S [--preset clean|varied] [--kind K,...]
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import itertools
import math
import multiprocessing
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont, ImageOps

from digit_inbox.export import mnist

try:
    from bench import scans
except ImportError:  # run as a script: bench/ itself is on sys.path, the repo root is not
    import scans  # type: ignore[no-redef]

PRESETS = scans.PRESETS
# What each file of a set shows. "mixed" draws every feature at random; the others isolate
# one, and "four" and "touching" are the sets the targets are stated on.
KINDS = {
    "mixed": "any length 1-10, any spacing, separators, underline, lines, label, sizes",
    "four": "4 digits, normal spacing, one line, nothing else",
    "touching": "2 digits whose strokes touch or overlap",
    "short": "1-3 digits, normal spacing",
    "amount": "2-8 digits with a separator or a trailing dash",
    "lines": "two or three numbers, one per line",
    "label": "a number next to a printed label",
    "underline": "a number underlined by hand",
    "photo": "one to three numbers on a sheet, photographed with a phone on a table",
}
SPACINGS = {"normal": 0.5, "tight": 0.2, "touching": 0.15, "overlap": 0.15}
SEPARATORS = {"dot": ".", "comma": ",", "dash": "-", "slashdash": "/-", "equals": "=",
              "trail": "-"}  # fmt: skip
FORM_LABELS = ("Amount:", "No.", "Score", "Total:", "Qty", "Ref.", "Page", "Marks:",
               "Invoice No.", "Account", "Row", "Ticket")  # fmt: skip
STREAMS = ("spec", "mnist", "page")  # what each of a file's random generators decides
FONT_FILES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
              "LiberationSans-Regular.ttf")  # fmt: skip


@dataclass(frozen=True)
class Label:
    """One row of labels.csv."""

    file: str
    digits: str  # the expected reading: digits only, lines separated by one space
    written: str  # what was drawn, separators included
    mnist_indices: tuple[int, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Spec:
    """What a file shows, before any pixel is drawn."""

    lines: tuple[str, ...]  # written text per line, e.g. ("19.272",) or ("12", "345/-")
    spacing: str = "normal"
    underline: bool = False
    mixed_sizes: bool = False
    printed: str | None = None  # "left" or "above"
    tags: tuple[str, ...] = ()

    @property
    def digits(self) -> str:
        return " ".join("".join(c for c in line if c.isdigit()) for line in self.lines)


def expected_digits(written: str) -> str:
    """The reading a written text should give: separators dropped, lines joined by a space."""
    return " ".join("".join(c for c in line if c.isdigit()) for line in written.split())


# ---------------------------------------------------------------------------------------------
# What to write


def digit_pairs(written: str) -> int:
    """How many neighbours in `written` are both digits (where spacing applies)."""
    return sum(a.isdigit() and b.isdigit() for a, b in itertools.pairwise(written))


def random_digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, n))


def with_separator(digits: str, rng: np.random.Generator) -> str:
    """`digits` written as an amount or a code: a thousands or decimal mark, a dash between
    groups, or a dash after the amount."""
    n = len(digits)
    choices = ["slashdash", "equals", "trail"]
    if n >= 3:
        choices += ["dot", "comma"]
    if n >= 4:
        choices.append("dash")
    sep = choices[rng.integers(len(choices))]
    mark = SEPARATORS[sep]
    if sep in ("dot", "comma"):
        if n >= 4 and rng.random() < 0.6:  # thousands: 1.234.567
            head = n % 3 or 3
            groups = [digits[:head]] + [digits[i : i + 3] for i in range(head, n, 3)]
            return mark.join(groups)
        return digits[:-2] + mark + digits[-2:]  # decimal: 12.50
    if sep == "dash":
        cut = int(rng.integers(1, n))
        return digits[:cut] + mark + digits[cut:]
    return digits + mark


def marks(written: str) -> list[str]:
    """`written` (one line) as the pen draws it: each digit, and each separator by name."""
    out = []
    i = 0
    while i < len(written):
        char = written[i]
        if char.isdigit():
            out.append(char)
        elif written.startswith("/-", i):
            out.append("slashdash")
            i += 1
        elif char in ".,=":
            out.append({".": "dot", ",": "comma", "=": "equals"}[char])
        elif char == "-":
            out.append("trail" if i == len(written) - 1 else "dash")
        else:
            raise ValueError(f"cannot write {char!r}: digits and . , - /- = only")
        i += 1
    return out


def make_spec(
    lines: Sequence[str],
    spacing: str = "normal",
    underline: bool = False,
    mixed_sizes: bool = False,
    printed: str | None = None,
) -> Spec:
    """A Spec and its tags, which are read off the text and the features."""
    tags = [
        f"length:{len(expected_digits(lines[0]))}" if len(lines) == 1 else f"lines:{len(lines)}"
    ]
    if any(digit_pairs(line) for line in lines):
        tags.append(f"spacing:{spacing}")
    seps = [m for line in lines for m in marks(line) if not m.isdigit()]
    tags += [f"sep:{s}" for s in dict.fromkeys(seps)]
    if underline:
        tags.append("underline")
    if mixed_sizes:
        tags.append("sizes:mixed")
    if printed:
        tags += ["printed", f"printed:{printed}"]
    return Spec(tuple(lines), spacing, underline, mixed_sizes, printed, tuple(tags))


def draw_spec(rng: np.random.Generator, kind: str, text: str | None = None) -> Spec:
    """A random Spec of `kind` (see KINDS); `text` (lines separated by spaces) replaces the
    random number, the kind still choosing spacing, underline, label and sizes."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, not {kind!r}")
    spacing, underline, mixed, printed = "normal", False, False, None
    n_lines = 1
    if kind == "mixed":
        spacing = scans.pick(rng, SPACINGS)
        n_lines = int(rng.choice([1, 2, 3], p=[0.8, 0.13, 0.07]))
        underline = rng.random() < 0.2
        mixed = rng.random() < 0.25
        printed = str(rng.choice(["left", "above"])) if rng.random() < 0.3 else None
    elif kind == "touching":
        spacing = "touching" if rng.random() < 0.6 else "overlap"
    elif kind == "lines":
        n_lines = int(rng.integers(2, 4))
    elif kind == "photo":
        n_lines = int(rng.integers(1, 4))
    elif kind == "label":
        printed = str(rng.choice(["left", "above"]))
    elif kind == "underline":
        underline = True
    lines = []
    for _ in range(n_lines):
        if kind == "four":
            n = 4
        elif kind == "touching":
            n = 2
        elif kind == "short":
            n = int(rng.integers(1, 4))
        elif kind == "amount":
            n = int(rng.integers(2, 9))
        elif n_lines > 1 or kind == "photo":
            n = int(rng.integers(1, 7))
        else:
            n = int(rng.integers(1, 11))
        written = random_digits(rng, n)
        if kind == "amount" or (kind == "mixed" and rng.random() < 0.25):
            written = with_separator(written, rng)
        lines.append(written)
    if text is not None:
        lines = text.split()
        marks(" ".join(lines).replace(" ", ""))  # refuse what cannot be written, now
    spec = make_spec(lines, spacing, underline, mixed, printed)
    return dataclasses.replace(spec, tags=(*spec.tags, "photo")) if kind == "photo" else spec


# ---------------------------------------------------------------------------------------------
# The handwriting


def ink_crop(cover: Image.Image) -> np.ndarray:
    """The glyph's coverage (float 0..1) cut to its ink."""
    box = cover.getbbox() or (0, 0, cover.width, cover.height)
    return np.asarray(cover.crop(box), dtype=np.float32) / 255.0


def pen_mark(sep: str, h: float, stroke: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """A separator as a person draws it, coverage 0..1; returns (mark, its baseline row).

    Dots and commas sit on the baseline and are about a stroke wide; dashes are short and at
    mid-height; `/-` is a slash from the baseline then a dash; `=` two short dashes.
    """
    k = 4  # drawn 4x larger, then reduced: anti-aliased like the glyphs
    width = h * 0.8 + 2 * stroke
    above, below = h * 1.0, h * 0.35 + stroke
    size = (max(1, round(k * width)), max(1, round(k * (above + below))))
    image = Image.new("L", size, 0)
    draw = ImageDraw.Draw(image)
    pen = max(1, round(k * stroke))

    def line(points: list[tuple[float, float]], scale: float = 1.0) -> None:
        """A stroke through (x, height above the baseline) points, with round ends."""
        xy = [(k * (x + stroke), k * (above - y)) for x, y in points]
        w = max(1, round(pen * scale))
        draw.line(xy, fill=255, width=w, joint="curve")
        for x, y in (xy[0], xy[-1]):
            draw.ellipse([x - w / 2, y - w / 2, x + w / 2, y + w / 2], fill=255)

    jitter = functools.partial(rng.uniform, -0.04 * h, 0.04 * h)
    right = 0.0
    if sep in ("dot", "comma"):
        r = stroke * rng.uniform(0.55, 0.85)
        cy = r + rng.uniform(0, 0.06) * h
        line([(r, cy), (r + 0.2, cy)], scale=2 * r / stroke)
        if sep == "comma":
            line([(r, cy), (r - 0.1 * h, cy - rng.uniform(0.15, 0.3) * h)], scale=0.8)
        right = 2 * r
    elif sep in ("dash", "trail"):
        length, y = h * rng.uniform(0.22, 0.4), h * rng.uniform(0.4, 0.55)
        line([(0, y), (length, y + jitter())])
        right = length
    elif sep == "slashdash":
        top = h * rng.uniform(0.65, 0.9)
        slant = h * rng.uniform(0.3, 0.5)
        line([(0, 0), (slant, top)])
        y = h * rng.uniform(0.35, 0.5)
        line([(slant * 0.8, y), (slant * 0.8 + h * rng.uniform(0.25, 0.4), y + jitter())])
        right = slant * 0.8 + h * 0.4
    elif sep == "equals":
        length = h * rng.uniform(0.25, 0.4)
        low, gap = h * rng.uniform(0.25, 0.4), h * rng.uniform(0.15, 0.25)
        line([(0, low), (length, low + jitter())])
        line([(rng.uniform(0, 0.05) * h, low + gap), (length, low + gap + jitter())])
        right = length
    else:
        raise ValueError(f"unknown separator {sep!r}")
    crop = (0, 0, min(size[0], round(k * (right + 2 * stroke)) + 1), size[1])
    small = image.crop(crop).resize(
        (max(1, round(crop[2] / k)), max(1, round(size[1] / k))), Image.Resampling.BOX
    )
    return np.asarray(small, dtype=np.float32) / 255.0, round(above)


def stroke_width(h: float, ink: str) -> float:
    """About the width of MNIST's strokes at this height (pens differ)."""
    return max(1.0, h * 0.1 * {"marker": 1.6, "hairline": 0.5}.get(ink, 1.0))


def place(canvas: np.ndarray, item: np.ndarray, x: int, y: int) -> None:
    h, w = item.shape
    region = canvas[y : y + h, x : x + w]
    np.maximum(region, item[: region.shape[0], : region.shape[1]], out=region)


def touching_x(canvas: np.ndarray, item: np.ndarray, y: int, overlap: int) -> int | None:
    """The x at which `item` (top row `y`) touches the ink already on `canvas`, moved left by
    `overlap` px more; None when they share no row (then they cannot touch side by side)."""
    best = None
    for r in range(item.shape[0]):
        mine = np.flatnonzero(item[r] > 0.5)
        theirs = np.flatnonzero(canvas[y + r] > 0.5)
        if mine.size and theirs.size:
            x = int(theirs[-1]) - int(mine[0])
            best = x if best is None else max(best, x)
    return None if best is None else best - overlap


def write_line(
    written: str,
    digits: Sequence[np.ndarray],
    h: float,
    spec: Spec,
    ink: str,
    rng: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """One handwritten line (coverage 0..1) and its baseline row; `digits` are the MNIST
    images for the digit characters of `written`, in order."""
    stroke = stroke_width(h, ink)
    n_marks = len(written)
    canvas = np.zeros((round(2.2 * h) + 8, round(n_marks * 1.6 * h + 4 * h) + 8), np.float32)
    baseline = round(1.45 * h) + 4
    x = round(0.2 * h)
    previous = None  # kind of the mark just written: "digit" or "sep"
    glyphs = iter(digits)
    tokens = marks(written)
    # Fast handwriting joins some neighbours, not all: each pair of adjacent digits touches
    # (or overlaps) with even odds, and one of them always does.
    joined = rng.random(max(digit_pairs(written), 1)) < 0.5
    joined[rng.integers(len(joined))] = True
    pair = 0
    for token in tokens:
        if token.isdigit():
            factor = rng.uniform(0.8, 1.2) if spec.mixed_sizes else rng.uniform(0.95, 1.05)
            item = ink_crop(scans.glyph(next(glyphs), h * factor, ink, rng))
            top = baseline - item.shape[0] + round(rng.uniform(-0.04, 0.04) * h)
            top = min(max(top, 0), canvas.shape[0] - item.shape[0])
            if previous == "digit":
                gap = (0.12, 0.4) if spec.spacing == "normal" else (0.02, 0.1)
                at = x + round(rng.uniform(*gap) * h)
                if spec.spacing in ("touching", "overlap") and joined[pair]:
                    overlap = (
                        round(rng.uniform(0.04, 0.12) * item.shape[1]) + 1
                        if spec.spacing == "overlap"
                        else 1
                    )
                    touch = touching_x(canvas, item, top, overlap)
                    at = touch if touch is not None else x - overlap
                pair += 1
            else:
                at = x + (round(rng.uniform(0.1, 0.25) * h) if previous else 0)
            place(canvas, item, max(at, 0), top)
            x = max(x, max(at, 0) + item.shape[1])
            previous = "digit"
        else:
            mark, mark_base = pen_mark(token, h, stroke, rng)
            at = x + round(rng.uniform(0.08, 0.2) * h)
            top = min(max(baseline - mark_base, 0), canvas.shape[0] - mark.shape[0])
            place(canvas, mark, at, top)
            x = at + mark.shape[1]
            previous = "sep"
    return canvas, baseline


def underline(
    canvas: np.ndarray, baseline: int, h: float, ink: str, rng: np.random.Generator
) -> None:
    """A hand-drawn line under the ink of `canvas`, a little longer than the number."""
    cols = np.flatnonzero(canvas.max(axis=0) > 0.5)
    if not cols.size:
        return
    k = 4
    image = Image.new("L", (canvas.shape[1] * k, canvas.shape[0] * k), 0)
    draw = ImageDraw.Draw(image)
    y = baseline + h * rng.uniform(0.12, 0.3)
    left = cols[0] - h * rng.uniform(0, 0.3)
    right = cols[-1] + h * rng.uniform(0, 0.3)
    mid = (left + right) / 2
    points = [(left, y + rng.uniform(-0.04, 0.04) * h), (mid, y + rng.uniform(-0.05, 0.05) * h),
              (right, y + rng.uniform(-0.08, 0.08) * h)]  # fmt: skip
    width = max(1, round(k * stroke_width(h, ink) * rng.uniform(0.6, 0.9)))
    draw.line([(k * px, k * py) for px, py in points], fill=255, width=width, joint="curve")
    small = image.resize((canvas.shape[1], canvas.shape[0]), Image.Resampling.BOX)
    np.maximum(canvas, np.asarray(small, dtype=np.float32) / 255.0, out=canvas)


def handwriting(
    spec: Spec, images: Sequence[np.ndarray], h: float, ink: str, rng: np.random.Generator
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """All lines of `spec` (coverage, mode L, cut to the ink) and the first line's ink box."""
    lines = []
    pending = list(images)
    for written in spec.lines:
        n = sum(c.isdigit() for c in written)
        line, baseline = write_line(written, pending[:n], h, spec, ink, rng)
        pending = pending[n:]
        if spec.underline:
            underline(line, baseline, h, ink, rng)
        rows, cols = np.nonzero(line > 0.02)
        lines.append(line[rows.min() : rows.max() + 1, : cols.max() + 1])
    indent = [round(rng.uniform(0, 0.4) * h) if len(lines) > 1 else 0 for _ in lines]
    gaps = [round(rng.uniform(0.4, 0.9) * h) for _ in lines[1:]]
    width = max(line.shape[1] + dx for line, dx in zip(lines, indent, strict=True))
    height = sum(line.shape[0] for line in lines) + sum(gaps)
    page = np.zeros((height, width), np.float32)
    y = 0
    first = (0, 0, 0, 0)
    for n, (line, dx) in enumerate(zip(lines, indent, strict=True)):
        place(page, line, dx, y)
        if n == 0:
            first = (dx, 0, dx + line.shape[1], line.shape[0])
        y += line.shape[0] + (gaps[n] if n < len(gaps) else 0)
    return Image.fromarray(np.round(page * 255).astype(np.uint8)), first


# ---------------------------------------------------------------------------------------------
# The printed form text


@functools.lru_cache(maxsize=64)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans where installed, else Pillow's own default font at that size."""
    for name in FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size)


def printed_text(text: str, cap_height: float) -> Image.Image:
    """`text` in a printed font (coverage, mode L, cut to the ink), capitals `cap_height` tall."""
    face = font(max(6, round(cap_height / 0.73)))
    left, top, right, bottom = face.getbbox(text)
    image = Image.new("L", (round(right - left) + 4, round(bottom - top) + 4), 0)
    ImageDraw.Draw(image).text((2 - left, 2 - top), text, fill=255, font=face)
    return image.crop(image.getbbox() or (0, 0, image.width, image.height))


# ---------------------------------------------------------------------------------------------
# The page


def union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def render(
    spec: Spec,
    images: Sequence[np.ndarray],
    rng: np.random.Generator,
    preset: str = "varied",
    max_side: int = 1600,
    flatbed: bool = False,
    photo: bool = False,
) -> tuple[Image.Image, list[str]]:
    """An upright RGB page showing `spec` written with the MNIST `images` (uint8 28x28, ink =
    255, one per digit in reading order) and the tags applied.

    The page follows `scans.render`: the same inks, papers, clutter, light, blur and
    inversion, drawn by its functions. `page.info["digit_box"]` is where the handwriting is.
    For a `photo` the page is only the paper and the writing: the light, the blur and the
    noise are the camera's (`photographed`), and no scanner leaves its frame or its specks.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, not {preset!r}")
    varied = preset == "varied"
    h = scans.log_uniform(rng, 20, 160) if varied else rng.uniform(40, 100)
    ink = scans.pick(rng, {"black": 3, "pencil": 1, "blue": 2, "red": 1, "marker": 1,
                           "hairline": 1}) if varied else "black"  # fmt: skip
    cover, first = handwriting(spec, images, h, ink, rng)
    tags = [*spec.tags, f"ink:{ink}"]
    if varied and rng.random() < 0.3:  # a tilted line of writing
        before = cover.size
        cover = cover.rotate(rng.uniform(-5, 5), Image.Resampling.BICUBIC, expand=True)
        dx, dy = (cover.width - before[0]) // 2, (cover.height - before[1]) // 2
        first = (first[0] + dx, first[1] + dy, first[2] + dx, first[3] + dy)
        tags.append("geom:rotate")

    # Layout in the handwriting's coordinates: the label beside or above the first line.
    number_box = (0, 0, cover.width, cover.height)
    content = number_box
    label, label_at = None, (0, 0)
    if spec.printed:
        label = printed_text(str(rng.choice(FORM_LABELS)), h * rng.uniform(0.3, 0.6))
        if spec.printed == "left":
            x = first[0] - label.width - round(h * rng.uniform(0.25, 0.9))
            y = (first[1] + first[3]) // 2 - label.height // 2 + round(h * rng.uniform(0, 0.2))
        else:
            x = first[0] + round(h * rng.uniform(-0.3, 0.3))
            y = first[1] - label.height - round(h * rng.uniform(0.25, 0.7))
        label_at = (x, y)
        content = union(content, (x, y, x + label.width, y + label.height))

    low, high = (0.2, 2.5) if varied else (0.3, 1.0)
    margins = [round(h * rng.uniform(low, high)) for _ in range(4)]
    width = content[2] - content[0] + margins[0] + margins[2]
    height = content[3] - content[1] + margins[1] + margins[3]
    scale = min(1.0, max_side / max(width, height))
    shift = (margins[0] - content[0], margins[1] - content[1])

    def fit(image: Image.Image, at: tuple[int, int]) -> tuple[Image.Image, tuple[int, int]]:
        x, y = round((at[0] + shift[0]) * scale), round((at[1] + shift[1]) * scale)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        return image, (x, y)

    page_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    cover, (x, y) = fit(cover, (0, 0))
    tags.append(scans.size_tag(h * scale))
    kind = (
        scans.pick(rng, {"white": 4, "grey": 1, "yellow": 1, "recycled": 1}) if varied else "white"
    )
    page = scans.paper(kind, page_size, rng)
    tags.append(f"paper:{kind}")
    ink_box = cover.getbbox() or (0, 0, cover.width, cover.height)
    box = (x + ink_box[0], y + ink_box[1], x + ink_box[2], y + ink_box[3])
    clutter = [k for k, p in scans.CLUTTER_P.items() if varied and rng.random() < p]
    if photo:
        clutter = [k for k in clutter if k not in ("border", "saltpepper")]
    line_box = (box[0], box[1], box[2], box[1] + round((first[3] - first[1]) * scale))
    for kind_ in clutter:  # rules and grids follow the first line's height, frames the whole
        target = line_box if kind_ in ("ruled", "grid") else box
        if kind_ in ("ruled", "grid", "box", "underline"):
            scans.draw_clutter(page, [kind_], target, rng)
    if label is not None:
        label, at = fit(label, label_at)
        page.paste(scans.rgb255((0.1, 0.1, 0.1)) if not varied else scans.print_colour(rng),
                   at, label)  # fmt: skip
    page.paste(scans.rgb255(scans.INKS[ink][0]), (x, y), scans.ink_layer(cover, ink, rng))
    if "dust" in clutter:
        scans.draw_dust(page, rng, h * scale)
    if "border" in clutter:
        scans.draw_border(page, rng)
    tags += [f"clutter:{k}" for k in clutter if k != "saltpepper"]

    light = (
        scans.pick(rng, {"even": 4, "gradient": 1, "vignette": 1, "shadow": 1})
        if varied and not (flatbed or photo)
        else "even"
    )
    if light != "even":
        page = ImageChops.multiply(page, scans.illumination(light, page.size, rng).convert("RGB"))
    tags.append(f"light:{light}")
    if varied and not photo and rng.random() < 0.15:
        page = page.filter(ImageFilter.GaussianBlur(max(0.6, h * scale * rng.uniform(0.01, 0.04))))
        tags.append("geom:blur")
    if varied and not photo and rng.random() < 0.1:
        page = ImageOps.invert(page)
        tags.append("polarity:inverted")
    if "saltpepper" in clutter:
        page = scans.salt_and_pepper(page, rng)
        tags.append("clutter:saltpepper")
    page.info["digit_box"] = box
    return page, tags


def make_scan(
    spec: Spec,
    images: Sequence[np.ndarray],
    rng: np.random.Generator,
    preset: str = "varied",
    formats: Sequence[str] | None = None,
    max_side: int = 1600,
    encoding: scans.Encoding | None = None,
) -> scans.Scan:
    """One scan file of `spec`: a random encoding (or the one given), then the page."""
    if "photo" in spec.tags:
        return photographed(spec, images, rng, preset)
    if encoding:
        encoding = scans.with_quality(encoding, rng)
    else:
        encoding = scans.choose_encoding(rng, preset, formats)
    page, tags = render(
        spec, images, rng, preset, encoding.max_side(max_side), encoding.mode == "1"
    )
    data, tags = scans.encode(page, tags, encoding, rng)
    return scans.Scan(data, encoding.suffix, tuple(tags))


A4 = math.sqrt(2)  # a sheet's height over its width


def photographed(
    spec: Spec, images: Sequence[np.ndarray], rng: np.random.Generator, preset: str
) -> scans.Scan:
    """`spec` written on an A4 sheet (its digits 2.5-7 % of the sheet's height, anywhere on
    it) and photographed on a table (`scans.photograph`), saved as a phone saves: JPEG, often
    stored sideways with an EXIF orientation."""
    page, tags = render(spec, images, rng, preset, photo=True)
    box = page.info["digit_box"]
    digit_h = (box[3] - box[1]) / max(1, len(spec.lines))
    sheet_h = max(digit_h / rng.uniform(0.025, 0.07), 1.15 * A4 * page.width, 1.15 * page.height)
    size = (round(sheet_h / A4), round(sheet_h))
    edges = np.concatenate(
        [np.asarray(page)[[0, -1]].reshape(-1, 3), np.asarray(page)[:, [0, -1]].reshape(-1, 3)]
    )
    sheet = Image.new("RGB", size, tuple(int(c) for c in np.median(edges, axis=0)))
    margin = 0.05 * size[0]
    at = (round(rng.uniform(margin, max(margin, size[0] - page.width - margin))),
          round(rng.uniform(margin, max(margin, size[1] - page.height - margin))))  # fmt: skip
    sheet.paste(page, at)
    photo, _, photo_tags = scans.photograph(sheet, rng)
    tags = [t for t in tags if not t.startswith(("size:", "light:"))] + photo_tags
    encoding = scans.Encoding("jpeg", "RGB", int(scans.pick(rng, {1: 6, 6: 3, 8: 1})),
                              int(rng.integers(70, 96)))  # fmt: skip
    data, tags = scans.encode(photo, tags, encoding, rng)
    return scans.Scan(data, encoding.suffix, tuple(tags))


# ---------------------------------------------------------------------------------------------
# Sets on disk


@dataclass(frozen=True)
class Recipe:
    """Everything but the count that determines a set: the same recipe gives the same files."""

    seed: int
    preset: str = "varied"
    kinds: tuple[str, ...] = ("mixed",)  # file i is of kinds[i % len(kinds)]
    texts: tuple[str, ...] | None = None  # file i writes texts[i % len(texts)], if given
    formats: tuple[str, ...] | None = None
    max_side: int = 1600
    every_encoding: bool = False

    def rng(self, index: int, stream: str) -> np.random.Generator:
        """File `index`'s generator for one `stream` of choices (STREAMS): one per file, so a
        set is the same however it is split across processes, and changing how a page is
        drawn leaves the numbers and their MNIST digits as they were."""
        key = [self.seed, PRESETS.index(self.preset), STREAMS.index(stream), index]
        return np.random.default_rng(key)

    def spec(self, index: int) -> Spec:
        text = self.texts[index % len(self.texts)] if self.texts else None
        return draw_spec(self.rng(index, "spec"), self.kinds[index % len(self.kinds)], text)


def pick_indices(
    digits: str, by_digit: Sequence[np.ndarray], rng: np.random.Generator
) -> list[int]:
    """An MNIST test index for each digit character, drawn from that digit's examples."""
    return [int(by_digit[int(c)][rng.integers(len(by_digit[int(c)]))]) for c in digits if c != " "]


def _write_one(
    job: tuple[Recipe, Path, int, Spec, list[int]], images: np.ndarray
) -> tuple[str, tuple[str, ...]]:
    recipe, out_dir, index, spec, indices = job
    encoding = None
    if recipe.every_encoding:
        encoding = scans.ALL_ENCODINGS[index % len(scans.ALL_ENCODINGS)]
    scan = make_scan(spec, list(images[indices]), recipe.rng(index, "page"), recipe.preset,
                     recipe.formats, recipe.max_side, encoding)  # fmt: skip
    name = f"{index:05d}{scan.suffix}"
    (out_dir / name).write_bytes(scan.data)
    return name, scan.tags


_IMAGES: np.ndarray | None = None  # the MNIST test images, per worker process


def _init_worker(data_dir: Path) -> None:
    global _IMAGES
    _IMAGES = mnist.load_split(data_dir, "test").images


def _write_in_worker(job: tuple[Recipe, Path, int, Spec, list[int]]) -> tuple[str, tuple[str, ...]]:
    assert _IMAGES is not None
    return _write_one(job, _IMAGES)


def write_set(
    out_dir: Path,
    count: int,
    seed: int,
    preset: str = "varied",
    *,
    kinds: Sequence[str] = ("mixed",),
    texts: Sequence[str] | None = None,
    formats: Sequence[str] | None = None,
    max_side: int = 1600,
    every_encoding: bool = False,
    data_dir: Path | None = None,
    workers: int = 1,
) -> list[Label]:
    """Write `count` scans and labels.csv (written last: its presence marks a complete set)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, not {preset!r}")
    unknown = (set(kinds) - set(KINDS)) | (set(formats or ()) - set(scans.FORMATS))
    if unknown or not kinds:
        raise ValueError(
            f"unknown kinds or formats {sorted(unknown)}; kinds: {sorted(KINDS)}, "
            f"formats: {scans.FORMATS}"
        )
    recipe = Recipe(
        seed,
        preset,
        tuple(kinds),
        tuple(texts) if texts else None,
        tuple(formats) if formats else None,
        max_side,
        every_encoding,
    )
    data_dir = data_dir or mnist.resolve_data_dir(None)
    test = mnist.load_split(data_dir, "test")
    by_digit = [np.flatnonzero(test.labels == d) for d in range(10)]
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = []
    for i in range(count):
        spec = recipe.spec(i)
        indices = pick_indices(spec.digits, by_digit, recipe.rng(i, "mnist"))
        jobs.append((recipe, out_dir, i, spec, indices))
    if workers > 1 and count > 1:
        with multiprocessing.Pool(workers, _init_worker, (data_dir,)) as pool:
            results = pool.map(_write_in_worker, jobs, chunksize=8)
    else:
        results = [_write_one(job, test.images) for job in jobs]
    labels = [
        Label(name, spec.digits, " ".join(spec.lines), tuple(indices), tags)
        for (name, tags), (_, _, _, spec, indices) in zip(results, jobs, strict=True)
    ]
    write_labels(out_dir / "labels.csv", labels)
    return labels


def write_labels(path: Path, labels: Sequence[Label]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "digits", "written", "mnist_indices", "tags"])
        for label in labels:
            indices = " ".join(str(k) for k in label.mnist_indices)
            w.writerow([label.file, label.digits, label.written, indices, " ".join(label.tags)])


def read_labels(path: Path) -> list[Label]:
    with path.open(newline="") as f:
        return [
            Label(
                row["file"],
                row["digits"],
                row["written"],
                tuple(int(k) for k in row["mnist_indices"].split()),
                tuple(row["tags"].split()),
            )
            for row in csv.DictReader(f)
        ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = scans.set_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kind",
        default="mixed",
        help="comma-separated kinds, file i gets the (i mod n)-th: "
        + "; ".join(f"{k}: {v}" for k, v in KINDS.items()),
    )
    parser.add_argument(
        "--text",
        action="append",
        help="write this number instead of a random one (repeatable, file i gets the (i mod "
        "n)-th; a space starts a new line; separators . , - /- =), e.g. --text 19.272",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    labels = write_set(
        args.out,
        args.count,
        args.seed,
        args.preset,
        kinds=args.kind.split(","),
        texts=args.text,
        **scans.set_options(args),
    )
    scans.say_written(args, [label.file for label in labels], "number scans", start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
