"""Scan-like images of MNIST test digits, with their true labels, for measuring recognition.

MNIST digits are tidy 28x28 crops; real inboxes receive phone photos, faxes and form scans in
every file format. This module turns an MNIST *test* digit (never a training one: the model
learnt those) into such a file, so the whole pipeline can be scored against the model's own
MNIST accuracy on the very same digits.

Every choice comes from a numpy Generator seeded per file, so a set is reproducible from
(seed, count, preset) alone, whatever the number of worker processes. Each variation applied
is recorded as a `key:value` tag so a benchmark can report accuracy per variation.

    python bench/scans.py --out DIR --count N --seed S [--preset clean|varied]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps

from digit_inbox.export import mnist

PRESETS = ("clean", "varied")
FORMATS = ("png", "jpeg", "tiff", "bmp", "gif", "webp")
SUFFIX = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "gif": ".gif",
          "webp": ".webp"}  # fmt: skip
# Colour modes each format is written in (Pillow mode names; "I;16" is 16-bit greyscale).
MODES = {
    "png": ("L", "RGB", "RGBA", "P", "1", "I;16"),
    "jpeg": ("L", "RGB", "CMYK"),
    "tiff": ("L", "RGB", "RGBA", "P", "1", "CMYK"),
    "bmp": ("L", "RGB", "P", "1"),
    "gif": ("P", "1"),
    "webp": ("RGB", "RGBA"),
}
FORMAT_WEIGHTS = {"png": 0.3, "jpeg": 0.25, "tiff": 0.1, "bmp": 0.1, "gif": 0.1, "webp": 0.15}
# EXIF orientation -> the transpose that turns the upright page into the stored pixels, i.e.
# the inverse of what a viewer applies (Pillow's ImageOps.exif_transpose) to show it upright.
STORE_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
ORIENTATION_TAG = 0x0112
# Phones mostly write 3, 6 and 8; mirrored orientations are rare but legal.
ORIENTATION_WEIGHTS = {3: 0.25, 6: 0.3, 8: 0.25, 2: 0.05, 4: 0.05, 5: 0.05, 7: 0.05}
# BMP is uncompressed: its pages are capped so the file stays under this many bytes (scaled
# down with --max-side), e.g. RGB pages at most ~365 px per side.
MAX_RAW_BYTES = 400_000
BITS = {"1": 1, "L": 8, "P": 8, "RGB": 24}

INKS = {  # RGB 0..1, opacity range
    "black": ((0.08, 0.08, 0.09), (0.9, 1.0)),
    "pencil": ((0.30, 0.30, 0.33), (0.55, 0.85)),
    "blue": ((0.10, 0.18, 0.60), (0.85, 1.0)),
    "red": ((0.72, 0.10, 0.12), (0.85, 1.0)),
    "marker": ((0.05, 0.05, 0.06), (0.95, 1.0)),
    "hairline": ((0.10, 0.10, 0.12), (0.85, 1.0)),
}
PAPERS = {
    "white": (0.97, 0.97, 0.96),
    "grey": (0.78, 0.78, 0.77),
    "yellow": (0.98, 0.93, 0.74),
    "recycled": (0.86, 0.83, 0.76),
}
CLUTTER_P = {"box": 0.2, "underline": 0.15, "ruled": 0.1, "grid": 0.1, "dust": 0.25,
             "border": 0.15, "saltpepper": 0.1}  # fmt: skip


@dataclass(frozen=True)
class Label:
    """One row of labels.csv."""

    file: str
    label: int
    mnist_index: int
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Scan:
    data: bytes
    suffix: str
    tags: tuple[str, ...]


# ---------------------------------------------------------------------------------------------
# Small helpers


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    """Sizes spread evenly on a log scale: as many tiny digits as huge ones."""
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def pick(rng: np.random.Generator, weights: Mapping[Any, float]) -> str:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=float)
    return str(keys[rng.choice(len(keys), p=p / p.sum())])


def rgb255(colour: Sequence[float] | np.ndarray) -> tuple[int, int, int]:
    r, g, b = (round(255 * min(max(c, 0.0), 1.0)) for c in colour)
    return r, g, b


def smooth_noise(rng: np.random.Generator, size: tuple[int, int], cell: int) -> np.ndarray:
    """Low-frequency noise ~N(0, 1) of `size` (w, h): random values `cell` px apart, smoothed."""
    w, h = size
    coarse = rng.standard_normal((h // cell + 2, w // cell + 2)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC))


def size_tag(height: float) -> str:
    if height < 28:
        return "size:tiny"
    if height < 64:
        return "size:small"
    if height < 160:
        return "size:medium"
    return "size:large"


# ---------------------------------------------------------------------------------------------
# The handwritten glyph


def glyph(digit: np.ndarray, height: float, ink: str, rng: np.random.Generator) -> Image.Image:
    """The digit's ink coverage (mode L) at `height` px, with strokes as crisp as a pen's.

    Upsampling a 28x28 crop gives blurry blobs; a soft threshold after bicubic resampling
    sharpens the stroke edges back to ~1 px of anti-aliasing at any scale. MNIST draws thin
    strokes faint, and a threshold would erase them (a 5 loses its bar), so each pixel is
    first scaled by the brightest pixel around it: a faint stroke becomes a thin full one.
    """
    ink_mask = digit > 25
    ys, xs = np.nonzero(ink_mask)
    pad = 2
    top, bottom = max(ys.min() - pad, 0), min(ys.max() + pad + 1, digit.shape[0])
    left, right = max(xs.min() - pad, 0), min(xs.max() + pad + 1, digit.shape[1])
    crop = digit[top:bottom, left:right].astype(np.float32) / 255.0
    ridge = np.asarray(Image.fromarray(crop).filter(ImageFilter.MaxFilter(3)))
    crop = crop / np.maximum(ridge, 0.5)
    scale = height / (ys.max() - ys.min() + 1)
    size = (max(round(crop.shape[1] * scale), 1), max(round(crop.shape[0] * scale), 1))
    up = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.BICUBIC))
    centre = {"marker": 0.3, "hairline": 0.6}.get(ink, 0.42) + rng.uniform(-0.05, 0.05)
    width = float(np.clip(1.2 / scale, 0.08, 0.8))
    t = np.clip((up - centre) / width + 0.5, 0.0, 1.0)
    cover = t * t * (3 - 2 * t)  # smoothstep
    image = Image.fromarray(np.round(cover * 255).astype(np.uint8))
    if ink == "marker" and height >= 40:
        image = image.filter(ImageFilter.MaxFilter(2 * max(1, round(height / 120)) + 1))
    if ink == "hairline" and height >= 90:
        image = image.filter(ImageFilter.MinFilter(3))
    return image


def ink_layer(cover: Image.Image, ink: str, rng: np.random.Generator) -> Image.Image:
    """Opacity of the ink (mode L): pencil is lighter and grainy, pens nearly opaque."""
    low, high = INKS[ink][1]
    alpha = np.asarray(cover, dtype=np.float32) * rng.uniform(low, high)
    if ink == "pencil":
        grain = rng.uniform(0.55, 1.0, size=alpha.shape).astype(np.float32)
        alpha *= grain
    return Image.fromarray(np.round(alpha).astype(np.uint8))


# ---------------------------------------------------------------------------------------------
# The page


def paper(kind: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A blank sheet (RGB). Recycled paper is mottled and flecked with fibres."""
    base = np.array(PAPERS[kind], dtype=np.float32) + rng.uniform(-0.02, 0.02, 3)
    if kind != "recycled":
        return Image.new("RGB", size, rgb255(base))
    w, h = size
    mottle = smooth_noise(rng, size, max(8, min(w, h) // 12)) * 0.015
    arr = np.clip(base[None, None, :] + mottle[..., None], 0, 1)
    sheet = Image.fromarray(np.round(arr * 255).astype(np.uint8))
    draw = ImageDraw.Draw(sheet)
    for _ in range(int(w * h / 1500) + 1):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        angle, length = rng.uniform(0, math.pi), rng.uniform(2, 9)
        shade = rgb255(base * rng.uniform(0.75, 0.92))
        dx, dy = length * math.cos(angle), length * math.sin(angle)
        draw.line([(x, y), (x + dx, y + dy)], fill=shade, width=1)
    return sheet


def illumination(kind: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """A multiplicative light field (mode L, 255 = full light): flatbed, lamp or phone shadow."""
    w, h = size
    small = (max(w // 8, 2), max(h // 8, 2))
    yy, xx = np.mgrid[0 : small[1], 0 : small[0]].astype(np.float32)
    xx, yy = xx / (small[0] - 1) - 0.5, yy / (small[1] - 1) - 0.5
    if kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        along = xx * math.cos(angle) + yy * math.sin(angle) + 0.5
        field = 1 - rng.uniform(0.2, 0.45) * np.clip(along, 0, 1)
    elif kind == "vignette":
        field = 1 - rng.uniform(0.5, 1.2) * (xx**2 + yy**2)
    else:  # shadow: a hand or phone blocking the light over part of the page, soft edged
        angle = rng.uniform(0, 2 * math.pi)
        offset = rng.uniform(-0.3, 0.3)
        across = xx * math.cos(angle) + yy * math.sin(angle) - offset
        softness = rng.uniform(0.02, 0.1)
        shade = 1 / (1 + np.exp(-across / softness))
        field = 1 - rng.uniform(0.25, 0.5) * shade
    light = Image.fromarray(np.round(np.clip(field, 0.3, 1) * 255).astype(np.uint8))
    return light.resize(size, Image.Resampling.BILINEAR)


# What a phone photo of a sheet lies on: (RGB 0..1, weight). Mostly dark or mid desks, where
# the sheet is the brightest thing in the frame; light ones too, where it barely stands out.
TABLES = {"dark wood": ((0.22, 0.13, 0.08), 3), "black": ((0.08, 0.08, 0.09), 2),
          "grey desk": ((0.35, 0.36, 0.38), 2), "light wood": ((0.62, 0.48, 0.33), 1),
          "white desk": ((0.80, 0.80, 0.78), 1)}  # fmt: skip
PHOTO_SIZE = (3000, 4000)  # a 12-megapixel phone camera, portrait (landscape half the time)


def perspective_coefficients(
    source: Sequence[tuple[float, float]], target: Sequence[tuple[float, float]]
) -> list[float]:
    """Pillow's PERSPECTIVE data mapping each `target` corner back to its `source` corner."""
    rows = []
    for (x, y), (u, v) in zip(target, source, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    rhs = np.array(source, dtype=np.float64).ravel()
    return [float(c) for c in np.linalg.solve(np.array(rows, dtype=np.float64), rhs)]


def photograph(
    sheet: Image.Image, rng: np.random.Generator, table: str | None = None
) -> tuple[Image.Image, tuple[float, ...], list[str]]:
    """`sheet` (RGB) photographed with a phone on a table: a 3000x4000 frame (or 4000x3000),
    the sheet filling 35-90 % of its height, turned up to 12 degrees and seen at a slant, lit
    unevenly, slightly out of focus, with sensor noise, on a `table` of TABLES (or any).
    Returns the photo, the sheet's four corners in it (x, y clockwise from top left) and the
    tags."""
    portrait = rng.random() < 0.5
    size = PHOTO_SIZE if portrait else PHOTO_SIZE[::-1]
    table = table or pick(rng, {k: w for k, (_, w) in TABLES.items()})
    base = np.array(TABLES[table][0], np.float32) * rng.uniform(0.8, 1.2)
    w, h = size
    small = (w // 4, h // 4)
    grain = smooth_noise(rng, small, 60)[..., None] * 0.025
    grain += smooth_noise(rng, small, 4)[..., None] * 0.01
    desk = Image.fromarray(np.round(np.clip(base + grain, 0, 1) * 255).astype(np.uint8))
    photo = desk.resize(size, Image.Resampling.BILINEAR)
    fill = rng.uniform(0.35, 0.9)
    scale = min(fill * h / sheet.height, 0.95 * w / sheet.width, 0.95 * h / sheet.height)
    sw, sh = sheet.width * scale, sheet.height * scale
    angle = math.radians(rng.uniform(-12, 12))
    # Mostly in the frame; now and then a corner or an edge cut off by it.
    cx = rng.uniform(min(0.4 * sw, w / 2), max(w - 0.4 * sw, w / 2))
    cy = rng.uniform(min(0.4 * sh, h / 2), max(h - 0.4 * sh, h / 2))
    corners = []
    for ux, uy in ((-0.5, -0.5), (0.5, -0.5), (0.5, 0.5), (-0.5, 0.5)):
        x, y = ux * sw, uy * sh
        x, y = x * math.cos(angle) - y * math.sin(angle), x * math.sin(angle) + y * math.cos(angle)
        slant = 0.06 * min(sw, sh)
        corners.append((cx + x + rng.uniform(-slant, slant), cy + y + rng.uniform(-slant, slant)))
    source = [(0, 0), (sheet.width, 0), (sheet.width, sheet.height), (0, sheet.height)]
    data = perspective_coefficients(source, corners)
    warped = sheet.transform(size, Image.Transform.PERSPECTIVE, data, Image.Resampling.BICUBIC)
    where = Image.new("L", sheet.size, 255).transform(
        size, Image.Transform.PERSPECTIVE, data, Image.Resampling.BILINEAR
    )
    photo.paste(warped, (0, 0), where)
    light = pick(rng, {"even": 1, "gradient": 2, "vignette": 1, "shadow": 1})
    if light != "even":
        photo = ImageChops.multiply(photo, illumination(light, size, rng).convert("RGB"))
    photo = photo.filter(ImageFilter.GaussianBlur(rng.uniform(0.8, 2.5)))
    noise = rng.normal(0, rng.uniform(2, 6), (h // 2, w // 2, 1)).astype(np.float32)
    grain_img = Image.fromarray(np.clip(noise + 128, 0, 255).astype(np.uint8)[..., 0]).resize(size)
    arr = np.asarray(photo, np.int16) + np.asarray(grain_img, np.int16)[..., None] - 128
    photo = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    tags = [f"photo:{table.replace(' ', '-')}", f"photo-light:{light}",
            "photo:portrait" if portrait else "photo:landscape"]  # fmt: skip
    return photo, tuple(c for xy in corners for c in xy), tags


def print_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """Pre-printed form lines: black, grey, or the drop-out blue/green of OCR forms."""
    return rgb255(
        [(0.15, 0.15, 0.15), (0.45, 0.45, 0.45), (0.45, 0.6, 0.85), (0.4, 0.7, 0.5)][
            rng.integers(4)
        ]
    )


def draw_clutter(
    page: Image.Image,
    kinds: Iterable[str],
    box: tuple[int, int, int, int],
    rng: np.random.Generator,
) -> None:
    """Printed lines around the digit's `box` (left, top, right, bottom), drawn before the ink."""
    draw = ImageDraw.Draw(page)
    w, h = page.size
    left, top, right, bottom = box
    dh = bottom - top
    line = max(1, round(dh * rng.uniform(0.01, 0.04)))
    for kind in kinds:
        if kind == "ruled":  # ruled paper: one rule may well cross the digit
            spacing = dh * rng.uniform(0.6, 1.3)
            y = (bottom - rng.uniform(0, 0.3) * dh) % spacing
            colour = rgb255((0.6, 0.7, 0.9))
            while y < h:
                draw.line([(0, y), (w, y)], fill=colour, width=max(1, line // 2))
                y += spacing
        elif kind == "grid":  # a table: the digit sits in one cell
            colour, margin = print_colour(rng), dh * rng.uniform(0.15, 0.4)
            cell_w, cell_h = right - left + 2 * margin, dh + 2 * margin
            x0, y0 = left - margin, top - margin
            for x in np.arange(x0 % cell_w, w, cell_w):
                draw.line([(x, 0), (x, h)], fill=colour, width=line)
            for y in np.arange(y0 % cell_h, h, cell_h):
                draw.line([(0, y), (w, y)], fill=colour, width=line)
        elif kind == "box":  # a form field with some margin around the digit
            margin = dh * rng.uniform(0.15, 0.5)
            draw.rectangle(
                [left - margin, top - margin, right + margin, bottom + margin],
                outline=print_colour(rng),
                width=line,
            )
        elif kind == "underline":
            y = bottom + dh * rng.uniform(0.02, 0.2)
            extra = (right - left) * rng.uniform(0.1, 1.0)
            draw.line([(left - extra, y), (right + extra, y)], fill=print_colour(rng), width=line)


def draw_dust(page: Image.Image, rng: np.random.Generator, digit_height: float) -> None:
    """Specks (1-2 px) over the whole page and a few blobs, all much smaller than the digit."""
    draw = ImageDraw.Draw(page)
    w, h = page.size
    for _ in range(int(rng.integers(5, 40))):
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.5, 1.5)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb255([rng.uniform(0.1, 0.5)] * 3))
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        r = max(1.5, digit_height * rng.uniform(0.015, 0.05))
        draw.ellipse([x - r, y - r * 0.7, x + r, y + r * 0.7], fill=rgb255([0.2] * 3))


def draw_border(page: Image.Image, rng: np.random.Generator) -> None:
    """The dark scanner lid around a sheet that did not fill the glass, on some sides."""
    draw = ImageDraw.Draw(page)
    w, h = page.size
    shade = rgb255([rng.uniform(0.0, 0.15)] * 3)
    sides = [s for s in ("left", "top", "right", "bottom") if rng.random() < 0.6] or ["left"]
    for side in sides:
        b = round(min(w, h) * rng.uniform(0.01, 0.05)) + 1
        rect = {"left": (0, 0, b, h), "top": (0, 0, w, b), "right": (w - b, 0, w, h),
                "bottom": (0, h - b, w, h)}[side]  # fmt: skip
        draw.rectangle(rect, fill=shade)


def salt_and_pepper(page: Image.Image, rng: np.random.Generator) -> Image.Image:
    arr = np.array(page)
    h, w = arr.shape[:2]
    n = int(h * w * rng.uniform(0.001, 0.01))
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    arr[ys, xs] = np.where(rng.random(n) < 0.5, 0, 255)[:, None]
    return Image.fromarray(arr)


# ---------------------------------------------------------------------------------------------
# Rendering and encoding


def render(
    digit: np.ndarray,
    rng: np.random.Generator,
    preset: str = "varied",
    max_side: int = 1600,
    flatbed: bool = False,
) -> tuple[Image.Image, list[str]]:
    """An upright RGB page holding `digit` (uint8 28x28, ink = 255) and the tags applied.

    Pages are at most `max_side` px per side (small digits shrink with them: a page needs
    room for the digit and a margin). `flatbed` pages are evenly lit, as binarised scans come
    from scanners and faxes, not phones. `page.info["digit_box"]` is where the ink is.
    """
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, not {preset!r}")
    varied = preset == "varied"
    tallest = max(8.0, min(400.0, max_side / 1.6))
    if varied:
        height = log_uniform(rng, min(20.0, tallest), tallest)
    else:
        height = rng.uniform(min(40.0, tallest), min(120.0, tallest))
    ink = pick(rng, {"black": 3, "pencil": 1, "blue": 2, "red": 1, "marker": 1, "hairline": 1})
    ink = ink if varied else "black"
    cover = glyph(digit, height, ink, rng)
    tags = [size_tag(height), f"ink:{ink}"]
    if varied and rng.random() < 0.4:
        cover = cover.rotate(rng.uniform(-8, 8), Image.Resampling.BICUBIC, expand=True)
        tags.append("geom:rotate")
    gw, gh = cover.size

    if varied:
        # Sheets, slips and phone crops: long side 120..1600 px, aspect within 1:1.8.
        side = log_uniform(rng, min(120, max_side), max_side)
        aspect = log_uniform(rng, 1 / 1.8, 1.8)
        page_w, page_h = (
            max(min(round(s), max_side), min(round(g * 1.25) + 8, max_side), g)
            for s, g in ((side * min(aspect, 1), gw), (side / max(aspect, 1), gh))
        )
    else:
        page_w, page_h = (
            max(min(120, max_side), min(round(g * rng.uniform(1.6, 3.0)), max_side), g)
            for g in (gw, gh)
        )
    centred = not varied or rng.random() < 0.4
    if centred:
        x = (page_w - gw) / 2 + rng.uniform(-0.03, 0.03) * page_w
        y = (page_h - gh) / 2 + rng.uniform(-0.03, 0.03) * page_h
    else:
        x, y = rng.uniform(0, page_w - gw), rng.uniform(0, page_h - gh)
    x = round(min(max(x, 0), page_w - gw))
    y = round(min(max(y, 0), page_h - gh))
    tags.append("place:centred" if centred else "place:offset")

    kind = pick(rng, {"white": 4, "grey": 1, "yellow": 1, "recycled": 1}) if varied else "white"
    page = paper(kind, (page_w, page_h), rng)
    tags.append(f"paper:{kind}")
    clutter = [k for k, p in CLUTTER_P.items() if varied and rng.random() < p]
    # The glyph's inked bounding box, not its padded frame, is what forms are drawn around.
    ink_box = cover.getbbox() or (0, 0, gw, gh)
    box = (x + ink_box[0], y + ink_box[1], x + ink_box[2], y + ink_box[3])
    draw_clutter(page, [k for k in clutter if k in ("ruled", "grid", "box", "underline")], box, rng)
    page.paste(rgb255(INKS[ink][0]), (x, y), ink_layer(cover, ink, rng))
    if "dust" in clutter:
        draw_dust(page, rng, height)
    if "border" in clutter:
        draw_border(page, rng)
    tags += [f"clutter:{k}" for k in clutter if k != "saltpepper"]

    lights = {"even": 4, "gradient": 1, "vignette": 1, "shadow": 1}
    light = pick(rng, lights) if varied and not flatbed else "even"
    if light != "even":
        field = illumination(light, page.size, rng).convert("RGB")
        page = ImageChops.multiply(page, field)
    tags.append(f"light:{light}")
    if varied and rng.random() < 0.15:
        radius = max(0.6, height * rng.uniform(0.01, 0.04))
        page = page.filter(ImageFilter.GaussianBlur(radius))
        tags.append("geom:blur")
    if varied and rng.random() < 0.1:
        page = ImageOps.invert(page)
        tags.append("polarity:inverted")
    if "saltpepper" in clutter:
        page = salt_and_pepper(page, rng)
        tags.append("clutter:saltpepper")
    page.info["digit_box"] = box
    return page, tags


def binarise(page: Image.Image, inverted: bool) -> Image.Image:
    """Mode 1 the way a fax or document scanner makes it: one global threshold, no dithering.

    Like a scanner's auto-threshold it looks at the content: the threshold sits halfway
    between the ink (the darkest 5 % of the digit's box, `page.info["digit_box"]`) and the
    paper (the page's median), so light pencil survives and a dark border cannot set it.
    """
    grey = np.asarray(page.convert("L"))
    left, top, right, bottom = page.info.get("digit_box", (0, 0, page.width, page.height))
    content = grey[top:bottom, left:right]
    ink_level = float(np.percentile(content, 95 if inverted else 5))
    threshold = (ink_level + float(np.median(grey))) / 2
    return Image.fromarray(grey >= threshold if inverted else grey > threshold)


def with_transparency(page: Image.Image, rng: np.random.Generator, tags: list[str]) -> Image.Image:
    """RGBA with real transparency, black under fully transparent pixels as many tools write it
    (so a reader that drops alpha sees black there).

    A cut-out (ink opaque, paper transparent) or, as a deskewed or cropped photo is exported,
    the page inside a transparent margin. An inverted page is never cut out: white ink on
    nothing has no right answer.
    """
    if "polarity:inverted" not in tags and rng.random() < 0.5:
        alpha = ImageOps.invert(page.convert("L"))
        rgba = page.convert("RGBA")
        rgba.putalpha(alpha)
        black = Image.new("RGBA", page.size, (0, 0, 0, 0))
        tags.append("alpha:cutout")
        return Image.composite(rgba, black, alpha.point(lambda v: 255 if v > 0 else 0))
    w, h = page.size
    left, top, right, bottom = (round(rng.uniform(0.01, 0.05) * min(w, h)) + 1 for _ in range(4))
    canvas = Image.new("RGBA", (w + left + right, h + top + bottom), (0, 0, 0, 0))
    canvas.paste(page, (left, top))
    tags.append("alpha:margin")
    return canvas


def to_mode(page: Image.Image, mode: str, rng: np.random.Generator, tags: list[str]) -> Image.Image:
    if mode == "1":
        return binarise(page, "polarity:inverted" in tags)
    if mode == "I;16":  # 0..65535, as scanners and converters write 16-bit greyscale
        return Image.fromarray(np.asarray(page.convert("L"), dtype=np.uint16) * 257)
    if mode == "P":  # octree: median cut starves the few ink pixels of a palette entry
        colours = int(rng.integers(8, 257))
        return page.quantize(colors=colours, method=Image.Quantize.FASTOCTREE)
    if mode == "RGBA":
        return with_transparency(page, rng, tags)
    return page.convert(mode)


@dataclass(frozen=True)
class Encoding:
    """How a page is written: decided before rendering, as uncompressed formats cap its size."""

    fmt: str
    mode: str
    orientation: int = 1  # EXIF Orientation; 1 = stored upright, no tag written
    quality: int | None = None  # JPEG and WebP only

    @property
    def suffix(self) -> str:
        return SUFFIX[self.fmt]

    def max_side(self, limit: int) -> int:
        """Largest page side (<= limit) whose raw bitmap fits the budget, for BMP."""
        if self.fmt != "bmp":
            return limit
        budget = MAX_RAW_BYTES * (limit / 1600) ** 2
        return min(limit, int(math.sqrt(budget * 8 / BITS[self.mode])))

    def tags(self) -> list[str]:
        tags = [f"format:{self.fmt}", f"mode:{self.mode}"]
        if self.quality is not None:
            tags.append("quality:low" if self.quality < 60 else "quality:high")
        if self.orientation != 1:
            tags.append(f"exif:{self.orientation}")
        return tags


# Every format and colour mode once, plus EXIF-rotated JPEGs: `write_set(every_encoding=True)`
# cycles through these so that even a small set exercises each decoder path.
ALL_ENCODINGS = [Encoding(f, m) for f in FORMATS for m in MODES[f]] + [
    Encoding("jpeg", "RGB", 6),
    Encoding("jpeg", "L", 8),
    Encoding("jpeg", "RGB", 3),
    Encoding("jpeg", "CMYK", 5),
]


def choose_encoding(
    rng: np.random.Generator, preset: str = "varied", formats: Sequence[str] | None = None
) -> Encoding:
    if preset == "clean":
        return Encoding("png", "L")
    fmt = pick(rng, {f: FORMAT_WEIGHTS[f] for f in (formats or FORMATS)})
    mode = str(MODES[fmt][rng.integers(len(MODES[fmt]))])
    orientation = 1
    if fmt == "jpeg" and rng.random() < 0.4:
        orientation = int(pick(rng, ORIENTATION_WEIGHTS))
    quality = int(rng.integers(30, 91)) if fmt in ("jpeg", "webp") else None
    return Encoding(fmt, mode, orientation, quality)


def with_quality(encoding: Encoding, rng: np.random.Generator) -> Encoding:
    if encoding.fmt in ("jpeg", "webp") and encoding.quality is None:
        return dataclasses.replace(encoding, quality=int(rng.integers(30, 91)))
    return encoding


def encode(
    page: Image.Image, tags: list[str], encoding: Encoding, rng: np.random.Generator
) -> tuple[bytes, list[str]]:
    """The page as file bytes in `encoding`; returns (data, tags with the encoding's added)."""
    tags = list(tags)
    image = to_mode(page, encoding.mode, rng, tags)
    options: dict[str, object] = {}
    if encoding.quality is not None:
        options["quality"] = encoding.quality
    if encoding.orientation != 1:
        image = image.transpose(STORE_TRANSPOSE[encoding.orientation])
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = encoding.orientation
        options["exif"] = exif
    if encoding.fmt == "tiff":
        options["compression"] = "group4" if encoding.mode == "1" else "tiff_deflate"
    buffer = io.BytesIO()
    image.save(buffer, format=encoding.fmt.upper(), **options)
    return buffer.getvalue(), tags + encoding.tags()


def make_scan(
    digit: np.ndarray,
    rng: np.random.Generator,
    preset: str = "varied",
    formats: Sequence[str] | None = None,
    max_side: int = 1600,
    encoding: Encoding | None = None,
) -> Scan:
    """One scan file of `digit`: a random encoding (or the one given), then the page."""
    encoding = with_quality(encoding, rng) if encoding else choose_encoding(rng, preset, formats)
    flatbed = encoding.mode == "1"
    page, tags = render(digit, rng, preset, encoding.max_side(max_side), flatbed)
    data, tags = encode(page, tags, encoding, rng)
    return Scan(data, encoding.suffix, tuple(tags))


# ---------------------------------------------------------------------------------------------
# Sets on disk


@dataclass(frozen=True)
class Recipe:
    """Everything but the count that determines a set: the same recipe gives the same files."""

    seed: int
    preset: str = "varied"
    formats: tuple[str, ...] | None = None
    max_side: int = 1600
    every_encoding: bool = False  # cycle through ALL_ENCODINGS instead of drawing at random

    def scan(self, index: int, digit: np.ndarray) -> Scan:
        # One generator per file, so a set is the same however it is split across processes.
        rng = np.random.default_rng([self.seed, PRESETS.index(self.preset), index])
        encoding = ALL_ENCODINGS[index % len(ALL_ENCODINGS)] if self.every_encoding else None
        return make_scan(digit, rng, self.preset, self.formats, self.max_side, encoding)


def pick_digits(seed: int, count: int, available: int) -> np.ndarray:
    """MNIST test indices for a set; the same seed gives the same digits in every preset."""
    rng = np.random.default_rng(seed)
    if count <= available:
        return rng.choice(available, count, replace=False)
    return rng.integers(0, available, count)


def _write_one(job: tuple[Recipe, Path, int, np.ndarray]) -> tuple[str, tuple[str, ...]]:
    recipe, out_dir, index, digit = job
    scan = recipe.scan(index, digit)
    name = f"{index:05d}{scan.suffix}"
    (out_dir / name).write_bytes(scan.data)
    return name, scan.tags


def write_set(
    out_dir: Path,
    count: int,
    seed: int,
    preset: str = "varied",
    *,
    formats: Sequence[str] | None = None,
    max_side: int = 1600,
    every_encoding: bool = False,
    data_dir: Path | None = None,
    workers: int = 1,
) -> list[Label]:
    """Write `count` scans and labels.csv (written last: its presence marks a complete set)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, not {preset!r}")
    unknown = set(formats or ()) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown formats {sorted(unknown)}; choose from {FORMATS}")
    recipe = Recipe(seed, preset, tuple(formats) if formats else None, max_side, every_encoding)
    test = mnist.load_split(data_dir or mnist.resolve_data_dir(None), "test")
    indices = pick_digits(seed, count, len(test.labels))
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(recipe, out_dir, i, test.images[k]) for i, k in enumerate(indices)]
    if workers > 1 and count > 1:
        with multiprocessing.Pool(workers) as pool:
            results = pool.map(_write_one, jobs, chunksize=16)
    else:
        results = [_write_one(job) for job in jobs]
    labels = [
        Label(name, int(test.labels[k]), int(k), tags)
        for (name, tags), k in zip(results, indices, strict=True)
    ]
    write_labels(out_dir / "labels.csv", labels)
    return labels


# ---------------------------------------------------------------------------------------------
# Digits as datasets store them


def tight(digit: np.ndarray) -> np.ndarray:
    """An MNIST digit (ink = 255) cut to the box around its ink, as form software and many
    digit collections store them: the strokes touch every edge."""
    rows, cols = np.nonzero(digit > 30)
    return digit[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def fitted(digit: np.ndarray, side: int) -> np.ndarray:
    """Cut tight and scaled to fill side x side (aspect kept, centred), as USPS (16) and
    Semeion did; at 8, in 16 grey levels, as scikit-learn's digits."""
    crop = Image.fromarray(tight(digit))
    scale = side / max(crop.size)
    crop = crop.resize(
        (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))),
        Image.Resampling.BOX,
    )
    canvas = Image.new("L", (side, side))
    canvas.paste(crop, ((side - crop.width) // 2, (side - crop.height) // 2))
    small = np.asarray(canvas)
    return small if side > 8 else small // 16 * 17


# name -> (uint8 MNIST digit, ink = 255) -> uint8 greyscale image as the collection stores it
CROP_STYLES = {
    "mnist 28x28, white on black": lambda d: d,
    "cut tight, dark on white": lambda d: 255 - tight(d),
    "16x16, white on black": lambda d: fitted(d, 16),
    "16x16, dark on white": lambda d: 255 - fitted(d, 16),
    "8x8, 16 grey levels, dark on white": lambda d: 255 - fitted(d, 8),
}


def write_crops(
    out_dir: Path, count: int, seed: int, style: str, data_dir: Path | None = None
) -> list[Label]:
    """`count` MNIST test digits in one of CROP_STYLES as PNGs, and labels.csv (written last)."""
    test = mnist.load_split(data_dir or mnist.resolve_data_dir(None), "test")
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = []
    for i, k in enumerate(pick_digits(seed, count, len(test.labels))):
        name = f"{i:05d}.png"
        Image.fromarray(CROP_STYLES[style](test.images[k])).save(out_dir / name)
        labels.append(Label(name, int(test.labels[k]), int(k), (f"crop:{style}",)))
    write_labels(out_dir / "labels.csv", labels)
    return labels


def write_labels(path: Path, labels: Sequence[Label]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["file", "label", "mnist_index", "tags"])
        for label in labels:
            w.writerow([label.file, label.label, label.mnist_index, " ".join(label.tags)])


def read_labels(path: Path) -> list[Label]:
    with path.open(newline="") as f:
        return [
            Label(
                row["file"], int(row["label"]), int(row["mnist_index"]), tuple(row["tags"].split())
            )
            for row in csv.DictReader(f)
        ]


def set_parser(description: str) -> argparse.ArgumentParser:
    """The options every generated set takes (this module's and number_scans')."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", choices=PRESETS, default="varied")
    parser.add_argument("--formats", help=f"comma-separated subset of {','.join(FORMATS)}")
    parser.add_argument(
        "--data-dir", type=Path, help=f"MNIST folder (default: ${mnist.ENV_DATA_DIR})"
    )
    parser.add_argument("--max-side", type=int, default=1600, help="largest page side, px")
    parser.add_argument(
        "--every-encoding",
        action="store_true",
        help="cycle through every format, colour mode and EXIF rotation",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    return parser


def set_options(args: argparse.Namespace) -> dict[str, Any]:
    """write_set's keyword arguments from set_parser's options."""
    return {
        "formats": args.formats.split(",") if args.formats else None,
        "max_side": args.max_side,
        "every_encoding": args.every_encoding,
        "data_dir": args.data_dir,
        "workers": args.workers,
    }


def say_written(args: argparse.Namespace, files: Sequence[str], what: str, start: float) -> None:
    total = sum((args.out / name).stat().st_size for name in files)
    print(
        f"wrote {len(files)} {args.preset} {what} ({total / 1e6:.1f} MB) and labels.csv "
        f"to {args.out} in {time.perf_counter() - start:.1f} s",
        file=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = set_parser(__doc__.split("\n\n")[0]).parse_args(argv)
    start = time.perf_counter()
    labels = write_set(args.out, args.count, args.seed, args.preset, **set_options(args))
    say_written(args, [label.file for label in labels], "scans", start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
