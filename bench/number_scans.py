"""Scan-like images of handwritten *numbers* made of MNIST test digits, with the true strings.

People write numbers, not single digits: a score of 17, a quantity of 250, an amount of
19.272 with a separator and a dash after it, two lines of a register. This module writes such
numbers the way bench/scans.py writes single digits — the same pens, papers, lights, clutter,
file formats and colour modes — so a benchmark can score whole strings against the truth.

What varies, each recorded as a tag (scans.py's tags too):
- `length:N` digits (1-10); `lines:N` lines on one page (1-3);
- `spacing:` normal, tight, touching (the strokes meet) or overlap (they cross): gaps are
  measured on the ink's profile, so "touching" really touches;
- `sep:` dot, comma or dash between digit groups, `sep:trailing` for a `/-` or `=` after an
  amount; separators are never part of the label;
- `underline` (a hand-drawn stroke under the number), `size:mixed` (digits of one number
  differ in height), `printed` (a printed label such as "Amount:" beside the number: letters
  only, never to be read as digits).

Every choice comes from a numpy Generator seeded per file, so a set is reproducible from
(seed, count, preset, kind, length) alone.

    python bench/number_scans.py --out DIR --count N --seed S [--preset clean|varied]
        [--kind mixed|plain|tight|touching|overlap|separators|underline|lines|printed]
        [--length N]
"""

from __future__ import annotations

import argparse
import csv
import math
import multiprocessing
import os
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

KINDS = (
    "mixed",
    "plain",
    "tight",
    "touching",
    "overlap",
    "separators",
    "underline",
    "lines",
    "printed",
)
# Gap between neighbouring digits' ink, as a share of the digit height (negative: they cross).
SPACINGS = {
    "normal": (0.12, 0.45),
    "tight": (0.03, 0.10),
    "touching": (-0.02, 0.0),
    "overlap": (-0.12, -0.04),
}
SPACING_WEIGHTS = {"normal": 0.55, "tight": 0.2, "touching": 0.17, "overlap": 0.08}
# Printed things around a number; grids are left out (a table cell per digit is another task).
CLUTTER_P = {"box": 0.15, "ruled": 0.1, "dust": 0.25, "border": 0.15, "saltpepper": 0.05}
LABELS = ("Amount:", "No.", "Score", "Total", "Qty:", "Ref.", "Page", "Sum")


@dataclass(frozen=True)
class Label:
    """One row of labels.csv: `digits` is the expected string, lines joined by one space."""

    file: str
    digits: str
    mnist_indices: tuple[int, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """What one page shows, decided before drawing."""

    lines: tuple[tuple[int, ...], ...]  # MNIST test indices per line
    spacing: str
    separators: bool
    trailing: bool
    underline: bool
    mixed_sizes: bool
    printed: bool


def plan(
    rng: np.random.Generator, kind: str, length: int | None, available: int, preset: str
) -> Plan:
    """The page's content for `kind` ("mixed" draws every feature at random)."""
    mixed = kind == "mixed"
    n_lines = 1
    if kind == "lines" or (mixed and rng.random() < 0.12):
        n_lines = int(rng.integers(2, 4))
    lengths = []
    fewest = 3 if kind == "separators" else 1  # room for a group mark
    for _ in range(n_lines):
        most = 10 if n_lines == 1 else 6
        lengths.append(length or int(rng.integers(fewest, most + 1)))
    if kind in SPACINGS:
        spacing = kind
    elif kind == "plain" or not mixed:
        spacing = "normal"
    else:
        spacing = scans.pick(rng, SPACING_WEIGHTS)
    lines = tuple(tuple(int(i) for i in rng.integers(0, available, n)) for n in lengths)
    longest = max(lengths)
    return Plan(
        lines=lines,
        spacing=spacing,
        separators=(kind == "separators" or (mixed and rng.random() < 0.3)) and longest >= 3,
        trailing=(kind == "separators" and rng.random() < 0.5) or (mixed and rng.random() < 0.1),
        underline=kind == "underline" or (mixed and rng.random() < 0.15),
        mixed_sizes=mixed and preset == "varied" and rng.random() < 0.2,
        printed=kind == "printed" or (mixed and rng.random() < 0.25),
    )


# ---------------------------------------------------------------------------------------------
# Writing a number: glyphs placed by their ink profiles, separators drawn with the same pen


def profile(cover: np.ndarray, side: str) -> np.ndarray:
    """Per row, the column of the leftmost (or rightmost) ink; -1/huge where a row has none."""
    ink = cover > 96
    any_ink = ink.any(axis=1)
    if side == "left":
        cols = np.where(any_ink, ink.argmax(axis=1), 10**6)
    else:
        cols = np.where(any_ink, cover.shape[1] - 1 - ink[:, ::-1].argmax(axis=1), -(10**6))
    return cols


def place_x(canvas_right: np.ndarray, glyph_left: np.ndarray, y: int, gap: float) -> int:
    """The x at which a glyph drawn at row offset `y` leaves `gap` px of paper (negative:
    overlap) between its ink and the ink already on the canvas, measured row by row."""
    rows = np.arange(len(glyph_left)) + y
    inside = (rows >= 0) & (rows < len(canvas_right))
    right = np.full(len(glyph_left), -(10**6))
    right[inside] = canvas_right[rows[inside]]
    both = (right > -(10**6)) & (glyph_left < 10**6)
    if not both.any():  # no row in common: fall back to the bounding boxes
        return int(canvas_right.max() + 1 + gap - glyph_left.min())
    return math.ceil(np.max(right[both] - glyph_left[both]) + 1 + gap)


def pen_width(height: float, ink: str) -> int:
    return max(1, round(height * {"marker": 0.16, "hairline": 0.05}.get(ink, 0.1)))


def draw_separator(
    draw: ImageDraw.ImageDraw, kind: str, x: float, base: float, height: float, pen: int
) -> float:
    """Draw a `.`, `,` or `-` at x on the baseline; return its width (with its margins)."""
    r = max(1.0, pen * 0.8)
    if kind == "dot":
        draw.ellipse([x + r, base - 2 * r, x + 3 * r, base], fill=255)
        return 4 * r + height * 0.08
    if kind == "comma":
        draw.ellipse([x + r, base - 2 * r, x + 3 * r, base], fill=255)
        draw.line([(x + 2.6 * r, base - r), (x + 1.2 * r, base + 0.25 * height)], 255, pen)
        return 4 * r + height * 0.08
    length = height * 0.35
    mid = base - height * 0.5
    draw.line([(x + pen, mid), (x + pen + length, mid)], fill=255, width=pen)
    return length + 2 * pen + height * 0.1


def draw_trailing(
    draw: ImageDraw.ImageDraw,
    rng: np.random.Generator,
    x: float,
    base: float,
    height: float,
    pen: int,
) -> float:
    """An amount's closing stroke: `/-` (as on cheques) or `=`; returns its width."""
    gap = height * 0.15
    if rng.random() < 0.5:
        draw.line([(x + gap, base), (x + gap + height * 0.4, base - height)], 255, pen)
        start = x + gap + height * 0.45
        draw.line(
            [(start, base - height * 0.5), (start + height * 0.35, base - height * 0.5)], 255, pen
        )
        return gap + height * 0.85
    for level in (0.38, 0.62):
        y = base - height * level
        draw.line([(x + gap, y), (x + gap + height * 0.45, y)], fill=255, width=pen)
    return gap + height * 0.5


def group_breaks(length: int, rng: np.random.Generator) -> dict[int, str]:
    """Where separators go (index of the digit they follow) and which: thousands groups from
    the right, or a decimal mark before the last two digits."""
    if rng.random() < 0.5 and length >= 4:
        mark = "dot" if rng.random() < 0.5 else "comma"
        return {i: mark for i in range(length - 4, -1, -3)}
    if rng.random() < 0.7:
        return {length - 3: "dot" if rng.random() < 0.5 else "comma"}
    return {int(rng.integers(0, length - 1)): "dash"}


def write_number(
    digits: Sequence[np.ndarray],
    height: float,
    ink: str,
    plan_: Plan,
    rng: np.random.Generator,
    tags: list[str],
) -> np.ndarray:
    """One line of handwriting as ink coverage (uint8, ink = 255), tight around its ink."""
    pen = pen_width(height, ink)
    spacing = SPACINGS[plan_.spacing]
    pad = round(height * 0.6) + 2
    width = round(len(digits) * height * 2.0 + 3 * height) + 2 * pad
    canvas = Image.new("L", (width, round(height * 2.2) + 2 * pad))
    draw = ImageDraw.Draw(canvas)
    base = pad + height * 1.4
    breaks = group_breaks(len(digits), rng) if plan_.separators else {}
    x_next = float(pad)
    for i, digit in enumerate(digits):
        size = height * (rng.uniform(0.8, 1.2) if plan_.mixed_sizes else rng.uniform(0.93, 1.07))
        cover = scans.glyph(digit, size, ink, rng)
        arr = np.asarray(cover)
        rows = np.nonzero(arr.max(axis=1) > 96)[0]
        bottom = int(rows.max()) if len(rows) else arr.shape[0] - 1
        y = round(base + rng.uniform(-0.04, 0.04) * height - bottom)
        if i == 0:
            x = round(x_next)
        else:
            gap = rng.uniform(*spacing) * height
            if plan_.spacing == "touching":
                gap = min(gap, -1.0)  # at least one pixel of the strokes shared
            here = np.asarray(canvas)
            x = max(place_x(profile(here, "right"), profile(arr, "left"), y, gap), 0)
            x = max(x, round(x_next) - arr.shape[1] // 2)  # a separator keeps its room
        region = (x, y, x + cover.width, y + cover.height)
        canvas.paste(ImageChops.lighter(canvas.crop(region), cover), region[:2])
        right = x + int(profile(arr, "right").max()) + 1
        x_next = right
        if i in breaks:
            used = draw_separator(draw, breaks[i], right + height * 0.06, base, height, pen)
            x_next = right + used
    if plan_.trailing:
        draw_trailing(draw, rng, x_next, base, height, pen)
    if plan_.underline:
        drop = height * rng.uniform(0.12, 0.3)
        slope = rng.uniform(-0.03, 0.03)
        ink_cols = np.nonzero(np.asarray(canvas).max(axis=0) > 96)[0]
        left = ink_cols.min() - height * rng.uniform(0.0, 0.3)
        right_end = ink_cols.max() + height * rng.uniform(0.0, 0.4)
        y0 = base + drop
        draw.line([(left, y0), (right_end, y0 + slope * (right_end - left))], 255, pen)
    marks = sorted(set(breaks.values()))
    tags += [f"sep:{m}" for m in marks] + (["sep:trailing"] if plan_.trailing else [])
    box = canvas.getbbox() or (0, 0, 1, 1)
    return np.asarray(canvas.crop(box))


def printed_label(text: str, height: float, rng: np.random.Generator) -> Image.Image:
    """A form's printed caption as coverage (mode L), in Pillow's own scalable font."""
    size = max(8, round(height * rng.uniform(0.45, 0.8)))
    try:
        font: ImageFont.FreeTypeFont | ImageFont.ImageFont = ImageFont.load_default(size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("L", (right - left + 4, bottom - top + 4))
    ImageDraw.Draw(image).text((2 - left, 2 - top), text, fill=255, font=font)
    return image


# ---------------------------------------------------------------------------------------------
# The page


def render(
    images: np.ndarray, plan_: Plan, rng: np.random.Generator, preset: str, max_side: int = 1600
) -> tuple[Image.Image, list[str]]:
    """An upright RGB page with the planned number(s) and the tags applied."""
    varied = preset == "varied"
    longest = max(len(line) for line in plan_.lines)
    fits = max_side / (1.5 * (longest + 1.5)) if longest else max_side
    tallest = max(16.0, min(200.0, fits))
    height = (
        scans.log_uniform(rng, min(24.0, tallest), tallest)
        if varied
        else rng.uniform(min(36.0, tallest), min(90.0, tallest))
    )
    ink = (
        scans.pick(rng, {"black": 3, "pencil": 1, "blue": 2, "red": 1, "marker": 1, "hairline": 1})
        if varied
        else "black"
    )
    tags = [
        f"length:{sum(len(line) for line in plan_.lines)}",
        f"lines:{len(plan_.lines)}",
        f"spacing:{plan_.spacing}",
        scans.size_tag(height),
        f"ink:{ink}",
    ]
    written = [
        write_number(images[list(line)], height, ink, plan_, rng, tags) for line in plan_.lines
    ]
    tags = list(dict.fromkeys(tags))  # each separator tag once, however many lines had it
    if plan_.underline:
        tags.append("underline")
    if plan_.mixed_sizes:
        tags.append("size:mixed")

    # Lines stacked with a line's height between them, each indented a little differently.
    leading = height * rng.uniform(0.5, 0.9)
    block_w = max(w.shape[1] for w in written) + round(height * 0.3)
    block_h = round(sum(w.shape[0] for w in written) + leading * (len(written) - 1))
    block = Image.new("L", (block_w, block_h))
    y = 0.0
    for line in written:
        block.paste(Image.fromarray(line), (round(rng.uniform(0, 0.3) * height), round(y)))
        y += line.shape[0] + leading
    if varied and rng.random() < 0.3:
        block = block.rotate(rng.uniform(-5, 5), Image.Resampling.BICUBIC, expand=True)
        tags.append("geom:rotate")

    caption = (
        printed_label(LABELS[rng.integers(len(LABELS))], height, rng) if plan_.printed else None
    )
    above = caption is not None and rng.random() < 0.3
    gap = round(height * rng.uniform(0.4, 1.0))
    content_w = block.width + (caption.width + gap if caption and not above else 0)
    content_h = max(block.height, caption.height if caption else 0) + (
        caption.height + gap // 2 if caption and above else 0
    )
    margin = rng.uniform(0.3, 1.2) if varied else rng.uniform(0.3, 0.8)
    page_w = min(max(round(content_w + 2 * margin * height), 120), max_side)
    page_h = min(max(round(content_h + 2 * margin * height), 100), max_side)
    page_w, page_h = max(page_w, content_w + 4), max(page_h, content_h + 4)
    x0 = round(rng.uniform(0.2, 0.8) * (page_w - content_w))
    y0 = round(rng.uniform(0.2, 0.8) * (page_h - content_h))

    kind = (
        scans.pick(rng, {"white": 4, "grey": 1, "yellow": 1, "recycled": 1}) if varied else "white"
    )
    page = scans.paper(kind, (page_w, page_h), rng)
    tags.append(f"paper:{kind}")
    bx, by = x0, y0
    if caption is not None:
        colour = scans.rgb255((0.1, 0.1, 0.12))
        if above:
            page.paste(colour, (x0, y0), caption)
            by = y0 + caption.height + gap // 2
        else:
            page.paste(colour, (x0, y0 + round((block.height - caption.height) * 0.6)), caption)
            bx = x0 + caption.width + gap
        tags.append("printed")
    ink_box = block.getbbox() or (0, 0, block.width, block.height)
    box = (bx + ink_box[0], by + ink_box[1], bx + ink_box[2], by + ink_box[3])
    clutter = [k for k, p in CLUTTER_P.items() if varied and rng.random() < p]
    # A box is drawn around each line's number, as form fields are; ruled paper under all.
    scans.draw_clutter(page, [k for k in clutter if k in ("box", "ruled")], box, rng)
    page.paste(scans.rgb255(scans.INKS[ink][0]), (bx, by), scans.ink_layer(block, ink, rng))
    if "dust" in clutter:
        scans.draw_dust(page, rng, height)
    if "border" in clutter:
        scans.draw_border(page, rng)
    tags += [f"clutter:{k}" for k in clutter if k != "saltpepper"]
    light = (
        scans.pick(rng, {"even": 4, "gradient": 1, "vignette": 1, "shadow": 1})
        if varied
        else "even"
    )
    if light != "even":
        page = ImageChops.multiply(page, scans.illumination(light, page.size, rng).convert("RGB"))
    tags.append(f"light:{light}")
    if varied and rng.random() < 0.1:
        page = page.filter(ImageFilter.GaussianBlur(max(0.6, height * rng.uniform(0.01, 0.03))))
        tags.append("geom:blur")
    if varied and rng.random() < 0.05:
        page = ImageOps.invert(page)
        tags.append("polarity:inverted")
    if "saltpepper" in clutter:
        page = scans.salt_and_pepper(page, rng)
        tags.append("clutter:saltpepper")
    page.info["digit_box"] = box
    return page, tags


def make_number(
    images: np.ndarray, plan_: Plan, rng: np.random.Generator, preset: str, max_side: int = 1600
) -> scans.Scan:
    """One file: a random encoding for `varied` (greyscale PNG for `clean`), then the page."""
    encoding = scans.choose_encoding(rng, preset)
    page, tags = render(images, plan_, rng, preset, encoding.max_side(max_side))
    data, tags = scans.encode(page, tags, encoding, rng)
    return scans.Scan(data, encoding.suffix, tuple(tags))


# ---------------------------------------------------------------------------------------------
# Sets on disk


@dataclass(frozen=True)
class Recipe:
    """Everything but the count that determines a set: the same recipe gives the same files."""

    seed: int
    preset: str = "varied"
    kind: str = "mixed"
    length: int | None = None
    max_side: int = 1600

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng(
            [
                self.seed,
                scans.PRESETS.index(self.preset),
                KINDS.index(self.kind),
                self.length or 0,
                index,
            ]
        )


_TEST: mnist.Split | None = None


def _write_one(job: tuple[Recipe, Path, int, Path]) -> Label:
    global _TEST
    recipe, out_dir, index, data_dir = job
    if _TEST is None:
        _TEST = mnist.load_split(data_dir, "test")
    rng = recipe.rng(index)
    plan_ = plan(rng, recipe.kind, recipe.length, len(_TEST.labels), recipe.preset)
    scan = make_number(_TEST.images, plan_, rng, recipe.preset, recipe.max_side)
    name = f"{index:05d}{scan.suffix}"
    (out_dir / name).write_bytes(scan.data)
    digits = " ".join("".join(str(_TEST.labels[i]) for i in line) for line in plan_.lines)
    indices = tuple(i for line in plan_.lines for i in line)
    return Label(name, digits, indices, scan.tags)


def write_set(
    out_dir: Path,
    count: int,
    seed: int,
    preset: str = "varied",
    *,
    kind: str = "mixed",
    length: int | None = None,
    max_side: int = 1600,
    data_dir: Path | None = None,
    workers: int = 1,
) -> list[Label]:
    """Write `count` number scans and labels.csv (written last: it marks a complete set)."""
    if preset not in scans.PRESETS:
        raise ValueError(f"preset must be one of {scans.PRESETS}, not {preset!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if length is not None and not 1 <= length <= 10:
        raise ValueError(f"length must be 1 to 10, not {length}")
    recipe = Recipe(seed, preset, kind, length, max_side)
    folder = data_dir or mnist.resolve_data_dir(None)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(recipe, out_dir, i, folder) for i in range(count)]
    if workers > 1 and count > 8:
        with multiprocessing.Pool(workers) as pool:
            labels = pool.map(_write_one, jobs, chunksize=8)
    else:
        labels = [_write_one(job) for job in jobs]
    write_labels(out_dir / "labels.csv", labels)
    return labels


def write_labels(path: Path, labels: Sequence[Label]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "digits", "mnist_indices", "tags"])
        for label in labels:
            indices = " ".join(map(str, label.mnist_indices))
            w.writerow([label.file, label.digits, indices, " ".join(label.tags)])


def read_labels(path: Path) -> list[Label]:
    with path.open(newline="") as f:
        return [
            Label(
                row["file"],
                row["digits"],
                tuple(int(i) for i in row["mnist_indices"].split()),
                tuple(row["tags"].split()),
            )
            for row in csv.DictReader(f)
        ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=scans.PRESETS, default="varied")
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="mixed",
        help="one feature for every page; mixed draws them at random",
    )
    parser.add_argument("--length", type=int, help="digits per line (default: 1-10 at random)")
    parser.add_argument("--max-side", type=int, default=1600, help="largest page side, px")
    parser.add_argument(
        "--data-dir", type=Path, help=f"MNIST folder (default: ${mnist.ENV_DATA_DIR})"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    labels = write_set(
        args.out,
        args.count,
        args.seed,
        args.preset,
        kind=args.kind,
        length=args.length,
        max_side=args.max_side,
        data_dir=args.data_dir,
        workers=args.workers,
    )
    total = sum((args.out / label.file).stat().st_size for label in labels)
    print(
        f"wrote {len(labels)} {args.preset} {args.kind} numbers ({total / 1e6:.1f} MB) and "
        f"labels.csv to {args.out} in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
