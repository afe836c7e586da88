"""From a page of pixels to the 28x28 image the model expects, the way MNIST was made.

A plain resize-and-invert works on MNIST and fails on real scans (grey or yellow paper, uneven
light, blue ballpoint, form boxes, ruled lines, dust, a small digit on a big page). So:

1. `ink_ratio` tells white-on-black pages (a page that may be either is read both ways
   round); `ink_plane` keeps the darkest colour channel (blue ink on yellow paper is dark in
   red, not in blue); `background` estimates the paper's brightness everywhere and
   `ink_strength` measures how much darker than its paper each pixel is, so shading, shadows
   and tinted paper drop out.
2. `threshold` (Otsu, above a contrast and a noise floor) gives the ink mask; `clear_border`
   drops the dark frame scanners leave, `remove_lines` the long straight lines of forms and
   ruled paper, keeping the pixels where a digit crosses them.
3. `label` finds connected components (numpy only) and `select_digit` keeps the largest plus
   the pieces that belong to it (a 5's detached bar, broken pencil strokes), never dust.
4. `normalise` crops the soft ink around the digit, fits it into 20x20 keeping its aspect,
   and centres it by mass in 28x28.

Everything first runs on a reduced overview of the page (`OVERVIEW_PIXELS`); when the digit
turns out small there, the region around it is read again at a resolution where the digit has
`DIGIT_PIXELS`. All functions are pure; `prepare` chains them and never raises for any array
it is given, except a DecodeError for arrays that are no image at all.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digit_inbox.daemon.contract import DIGIT_BOX, IMAGE_SIZE
from digit_inbox.daemon.decode import DecodeError, flatten, is_cut_out, to_uint8

OVERVIEW_PIXELS = 200 * 200  # first look at the page at about this many pixels
POLARITY_PIXELS = 64 * 64  # light or dark ink is a global question: a thumbnail answers it
DIGIT_PIXELS = 64  # the digit's longer side when it is read again from the full page
MIN_OVERVIEW_DIGIT = 48  # below this the overview is too coarse to normalise from
CLOSER_PIXELS = 8 * OVERVIEW_PIXELS  # at most this much in a closer look (a digit: far less)
CROP_PIXELS = 64  # an image smaller than this each way is a crop of one digit, not a page
BACKGROUND_BLOCKS = 32  # paper-level grid cells along the page's longer side
CLOSING = 0.25  # ... and no dark thing narrower than this part of the page is paper
# A cell this much darker than the paper around it is filled with ink: 15 % reaches the
# faint wide strokes of a blurred pencil digit (0.75 took their insides for paper, leaving an
# outline); 10 % would take the light falling off towards a vignetted corner for ink.
INKED_CELL = 0.85
PAPER_PERCENTILE = 0.85  # of each cell: paper even where ink covers a good part of it
CONTRAST_FLOOR = 0.08  # ink must be this much darker than its paper (fraction of it)
MIN_DIGIT_FRACTION = 0.01  # a digit spans at least this much of the page's longer side
MIN_DIGIT_PX = 8  # ... and at least this many pixels of the original image
HYSTERESIS = 0.65  # ink this fraction of the threshold counts where it touches clear ink
NOISE_SIGMAS = 6  # ink is this many noise deviations darker than the paper
# Cells each side within which paper must be brighter than a cell of ink: as far as the
# grey-level closing reaches, so a stroke the closing takes for ink is a valley there too.
REACH = round(CLOSING * BACKGROUND_BLOCKS)
COVERED = 0.8  # a box's side is there when this much of its length has ink where it must run
UNDERLINE = 2.0  # a flat straight run this many times the digits' height long is a line


Box = tuple[int, int, int, int]  # y0, x0, y1, x1 (exclusive)


@dataclass
class Prepared:
    """The digits of a page in reading order, as the model's 28x28 images.

    `images` holds every candidate image; `slots` the positions of the string read, each a
    choice of alternatives (tuples of indices into `images`): one alternative for a plain
    digit, several for a mark too wide for one digit (unsplit, cut in two, in three...), for the
    model to choose from by probability. `lines[i]` is the line of slot i (0 = top line).
    """

    images: np.ndarray  # (k, 28, 28) float32 in 0..1, ink = 1; k = 0 when blank
    blank_reason: str = ""
    slots: list[tuple[tuple[int, ...], ...]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    shapes: list[float] = field(default_factory=list)  # width / height of each image's ink
    slashes: list[int] = field(default_factory=list)  # slots that may be a `/-`'s slash
    steps: dict[str, np.ndarray] = field(default_factory=dict)  # debug images, 0..1
    crop: bool = False  # a crop of one digit (see CROP_PIXELS): read as one, never cut
    marks: list[tuple[Box, bool]] = field(default_factory=list)
    # debug only: every mark's box in steps["ink"] (y0, x0, y1, x1), and whether it is a digit
    other: Prepared | None = None  # the page read as light ink, when its polarity is unclear
    column: bool = False  # read as one digit, but maybe a column of digits (`Reading.column`)

    @property
    def image(self) -> np.ndarray | None:
        """The first digit's 28x28 (the whole reading for a single digit), None when blank."""
        return self.images[0] if len(self.images) else None


@dataclass
class Digit:
    mask: np.ndarray  # bool, the digit's ink after lines and specks were removed
    box: Box  # y0, x0, y1, x1 (exclusive) of the digit's ink
    threshold: float


@dataclass
class Reading:
    """The marks found on a page: the digits in reading order, and what was dropped."""

    # Per position in reading order, the alternatives: each a list of digits (one for a plain
    # digit; a mark too wide for one digit is also offered cut into two or three pieces).
    positions: list[list[list[Digit]]]
    lines: list[int]  # the line of each position, 0 = top
    dropped: list[Box]  # boxes of separators, strokes and specks
    plain: bool = False  # the mask held one piece of ink and nothing else: no frame nor line
    typical: float = 0.0  # the digits' height on a page of several marks (0: one mark)
    slashes: list[int] = field(default_factory=list)  # positions that may be a `/-`'s slash
    whole: Digit | None = None  # the page read as one digit: the mark `select_digit` chose
    # Marks one above the other further apart than a 5's flag from its body: read as one digit
    # broken apart, as most are, but maybe a column of one-digit lines (see `one_column`).
    column: bool = False

    def as_one_digit(self) -> Reading:
        """The page read as one digit (a crop of one: see CROP_PIXELS), never cut."""
        assert self.whole is not None
        return Reading([[[self.whole]]], [0], self.dropped, plain=self.plain, whole=self.whole)

    @property
    def digits(self) -> list[Digit]:
        return [d for alternatives in self.positions for pieces in alternatives for d in pieces]

    @property
    def box(self) -> Box:
        """The box around every digit."""
        boxes = np.array([d.box for d in self.digits])
        return (
            int(boxes[:, 0].min()),
            int(boxes[:, 1].min()),
            int(boxes[:, 2].max()),
            int(boxes[:, 3].max()),
        )


# --- input -------------------------------------------------------------------------------


def as_uint8(pixels: np.ndarray) -> np.ndarray:
    """Any numeric array -> uint8 (H, W) or (H, W, 3), paper bright; DecodeError if hopeless.

    Accepts grey, grey+alpha, RGB and RGBA in any integer, bool or float dtype; NaN and inf are
    treated as paper. Alpha is composited onto white, or taken as the ink in a cut-out (mostly
    transparent), as `decode.flatten` does.
    """
    a = np.asarray(pixels)
    if a.dtype.kind not in "biuf":
        raise DecodeError(f"unsupported pixel type {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)) or a.size == 0:
        raise DecodeError(f"unsupported pixel array shape {a.shape}")
    if a.dtype.kind == "b":
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.nan_to_num(a.astype(np.float64), nan=np.inf)  # NaN -> paper
        finite = a[np.isfinite(a)]
        top = finite.max() if finite.size else 1.0
        a = to_uint8(np.where(np.isposinf(a), top, a))
    if a.ndim == 3 and a.shape[2] in (2, 4):
        if is_cut_out(a[:, :, -1]):
            return np.ascontiguousarray(255 - a[:, :, -1])  # opacity is ink
        alpha = a[:, :, -1:].astype(np.float32) / 255
        colour = a[:, :, :-1].astype(np.float32)
        a = np.rint(colour * alpha + 255 * (1 - alpha)).astype(np.uint8)
        if a.shape[2] == 1:
            a = a[:, :, 0]
    return np.ascontiguousarray(a)


def as_page(pixels: np.ndarray | Image.Image) -> Image.Image:
    """A page as an 8-bit Pillow image, mode L or RGB, from an image or any numeric array."""
    if isinstance(pixels, Image.Image):
        if pixels.mode in ("L", "RGB"):
            return pixels
        page = flatten(pixels)
        return page if page.mode in ("L", "RGB") else Image.fromarray(to_uint8(np.asarray(page)))
    return Image.fromarray(as_uint8(pixels))


def page_pixels(
    page: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """(part of) a page resized to size (h, w) -> float32 (h, w[, 3]) in 0..1, by area
    averaging when shrinking (anti-aliased, like a lower-resolution scan)."""
    h, w = size
    box = box or (0, 0, page.width, page.height)
    shrinking = (box[2] - box[0]) > w and (box[3] - box[1]) > h
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    out = pixels_of(page.resize((w, h), resample, box=box, reducing_gap=2.0))
    return out.astype(np.float32) * np.float32(1 / 255)


def resized(
    plane: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """A 2-D float array resized to size (h, w), optionally from the region box (x0, y0, x1, y1):
    area-averaging when shrinking, bilinear when enlarging."""
    h, w = size
    src = float_image(plane)
    box = box or (0, 0, src.width, src.height)
    shrinking = (box[2] - box[0]) > w and (box[3] - box[1]) > h
    resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
    return pixels_of(src.resize((w, h), resample, box=box))


def float_image(plane: np.ndarray) -> Image.Image:
    """A 2-D array as a Pillow "F" image on its float32 memory: Image.fromarray's checks
    cost more than resizing the small arrays of an overview."""
    a = np.ascontiguousarray(plane, np.float32)
    return Image.frombuffer("F", (a.shape[1], a.shape[0]), a, "raw", "F", 0, 1)


def pixels_of(img: Image.Image) -> np.ndarray:
    """np.asarray(img) of an L, RGB or F image (read-only too), at half its cost."""
    dtype = np.float32 if img.mode == "F" else np.uint8
    shape = (img.height, img.width, 3) if img.mode == "RGB" else (img.height, img.width)
    return np.frombuffer(img.tobytes(), dtype).reshape(shape)


def overview_size(h: int, w: int, pixels: int = OVERVIEW_PIXELS) -> tuple[int, int]:
    scale = min(1.0, math.sqrt(pixels / (h * w)))
    return max(1, round(h * scale)), max(1, round(w * scale))


# --- ink ---------------------------------------------------------------------------------


def grey(img: np.ndarray) -> np.ndarray:
    return img if img.ndim == 2 else (img[:, :, 0] + img[:, :, 1] + img[:, :, 2]) / 3


def block_percentile(plane: np.ndarray, block: int, q: float) -> np.ndarray:
    """The q-quantile of each block x block cell of a 2-D array -> (ny, nx)."""
    h, w = plane.shape
    ny, nx = -(-h // block), -(-w // block)
    padded = edge_padded(plane, (0, ny * block - h), (0, nx * block - w))
    cells = padded.reshape(ny, block, nx, block).transpose(0, 2, 1, 3).reshape(ny, nx, -1)
    k = round(q * (block * block - 1))
    return np.partition(cells, k, axis=-1)[..., k]


def spread(cells: np.ndarray, shape: tuple[int, ...], block: int) -> np.ndarray:
    """Upsample a per-cell estimate (ny, nx) smoothly back to the pixel grid `shape`."""
    ny, nx = cells.shape
    full = resized(cells.astype(np.float32), (ny * block, nx * block))
    return full[: shape[0], : shape[1]]


def neighbourhood(a: np.ndarray, op: np.ufunc) -> np.ndarray:
    """op (maximum, logical_or, ...) over each 3x3 neighbourhood of a 2-D array."""
    rows = a.copy()
    op(rows[1:], a[:-1], out=rows[1:])
    op(rows[:-1], a[1:], out=rows[:-1])
    out = rows.copy()
    op(out[:, 1:], rows[:, :-1], out=out[:, 1:])
    op(out[:, :-1], rows[:, 1:], out=out[:, :-1])
    return out


def block_size(shape: tuple[int, ...]) -> int:
    return max(2, round(max(shape[:2]) / BACKGROUND_BLOCKS))


# Light ink is taken when its ink map is at most LIGHT_INK times the dark ink's: most pages are
# dark ink on light paper. Up to UNCLEAR_INK times it, the evidence still leans to light ink but
# a large bold digit on grey paper looks much the same either way round: such a page is read both
# ways, and the model's surer reading is taken (`Prepared.other`). On 10,000 varied scans (one in
# ten inverted) 13 inverted pages fell there, all misread before, and 6 dark-ink ones; read both
# ways all 19 read right, each the other way round at most 0.95 sure where it was wrong.
LIGHT_INK = 0.7
UNCLEAR_INK = 1.0


def ink_ratio(small: np.ndarray) -> float:
    """How light the ink map of light ink on dark paper (chalk, inverted scans) is against that
    of dark ink: below 1 the page is more likely light ink (see LIGHT_INK).

    Whichever way round, the paper is what the ink map marks wrongly: read as the wrong
    polarity, the paper around every stroke turns into "ink". So the polarity whose ink map is
    lighter overall is the right one. `small`: a thumbnail of the page (a global question needs
    no detail), with the brightest (darkest) pixel nearby taken as the paper.
    """
    small = grey(small)
    k = max(3, round(max(small.shape) / 7)) | 1
    brightest, darkest = window(small, k, np.maximum), window(small, k, np.minimum)
    dark = float(np.mean(1 - small / np.maximum(brightest, 0.04)))
    light = float(np.mean(1 - (1 - small) / np.maximum(1 - darkest, 0.04)))
    return light / max(dark, 1e-12)


def window(a: np.ndarray, k: int, op: np.ufunc) -> np.ndarray:
    """op over the k x k neighbourhood of every pixel (k odd), edges repeated."""
    r = k // 2
    p = edge_padded(a, (r, r), (r, r))
    return sliding(sliding(p, k, op).T, k, op).T


def edge_padded(a: np.ndarray, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """np.pad(a, (rows, cols), mode="edge") of a 2-D array: the same array, made by two takes
    at a quarter of np.pad's cost on the small arrays of a page's overview."""
    h, w = a.shape
    ys = np.clip(np.arange(-rows[0], h + rows[1]), 0, h - 1)
    xs = np.clip(np.arange(-cols[0], w + cols[1]), 0, w - 1)
    return a.take(ys, axis=0).take(xs, axis=1)


def ink_plane(page: np.ndarray, light: bool) -> np.ndarray:
    """One channel with the ink dark: the darkest colour channel finds blue ink on yellow
    paper or red ink on white as well as black (for light ink: the brightest, inverted)."""
    plane = 1 - page if light else page
    if plane.ndim == 3:
        plane = np.minimum(np.minimum(plane[:, :, 0], plane[:, :, 1]), plane[:, :, 2])
    return plane


def background(plane: np.ndarray) -> np.ndarray:
    """Paper brightness at every pixel of a single-channel page (ink dark).

    A high percentile per small cell follows shading and tinted paper closely. A cell that ink
    fills (a thick marker stroke, a blurred pencil one) is a valley: darker than the paper on
    both sides of it along some direction, and takes that paper's level. A shadow, a vignette
    or a gradient is a step or a slope, not a valley, so the lit paper's level does not creep
    into it (its edge would turn into "ink"). Cells blur a sharp step in brightness (a
    shadow's edge, the page's edge on a white margin), so the estimate is capped by a
    grey-level closing (brightest nearby, then darkest nearby) over a window wider than any
    stroke, which keeps such steps sharp. Both at half resolution: the paper is smooth, and
    halving averages out noise.
    """
    h, w = plane.shape
    half = shrunk(plane, 2) if min(h, w) >= 16 else plane
    block = max(1, block_size(plane.shape) // (plane.shape[0] // half.shape[0]))
    cells = block_percentile(half, block, PAPER_PERCENTILE)
    if (cells < INKED_CELL * cells.max()).any():  # else no cell is dark enough to fill
        cells = filled(cells)
    k = max(3, round(CLOSING * max(half.shape))) | 1
    closed = window(window(half, k, np.maximum), k, np.minimum)
    paper = np.minimum(spread(cells, half.shape, block), closed)
    return paper if paper.shape == plane.shape else resized(paper, (h, w))


def filled(cells: np.ndarray) -> np.ndarray:
    """Cells covered by ink given the paper level around them."""
    around = valley_paper(cells)
    # Past the page's edge nothing is known: a dark band along it (a scanner's frame, often more
    # than one cell deep) is filled as before, from its brightest neighbour, for clear_border.
    ring = np.ones(cells.shape, bool)
    ring[2:-2, 2:-2] = False
    around[ring] = np.maximum(around, neighbourhood(cells, np.maximum))[ring]
    return np.where(cells < INKED_CELL * around, around, cells)


def valley_paper(cells: np.ndarray, reach: int = REACH) -> np.ndarray:
    """For each cell, the paper level on both sides of it along its best direction (row,
    column or a diagonal): the darker of the brightest cells within `reach` before and after
    it (0 past the page's edge, where nothing is known to be brighter)."""
    h, w = cells.shape
    padded = np.zeros((h + 2 * reach, w + 2 * reach), cells.dtype)
    padded[reach : reach + h, reach : reach + w] = cells
    best = np.zeros_like(cells)
    for grid, dy, dx in ((padded, 0, 1), (padded, 1, 0), (padded, 1, 1), (padded[:, ::-1], 1, 1)):
        run = window_max(grid, dy, dx, reach)  # run[p] = max of the reach cells from p on
        before = run[reach - reach * dy :][:h, reach - reach * dx :][:, :w]
        after = run[reach + dy :][:h, reach + dx :][:, :w]
        side = np.minimum(before, after)
        np.maximum(best, side if grid is padded else side[:, ::-1], out=best)
    return best


def window_max(a: np.ndarray, dy: int, dx: int, k: int) -> np.ndarray:
    """The max of the k cells from each cell on in direction (dy, dx) (each 0 or 1), in
    log2(k) steps; windows running off the end see what is there."""
    out = a.copy()
    h, w = a.shape
    n = 1
    while n < k:
        sy, sx = min(n, k - n) * dy, min(n, k - n) * dx
        np.maximum(out[: h - sy, : w - sx], out[sy:, sx:], out=out[: h - sy, : w - sx])
        n += min(n, k - n)
    return out


def shrunk(plane: np.ndarray, factor: int) -> np.ndarray:
    """Mean of each factor x factor block (the edge rows and columns that don't fill one are
    dropped). Pillow's C loop: a numpy mean over axes is slow."""
    if factor == 1:
        return plane.astype(np.float32)
    h, w = plane.shape[0] // factor * factor, plane.shape[1] // factor * factor
    return pixels_of(float_image(plane[:h, :w]).reduce(factor))


def ink_strength(plane: np.ndarray, paper: np.ndarray) -> np.ndarray:
    """How much darker than its paper each pixel is: 0 paper .. 1 black."""
    return np.clip(1 - plane / np.maximum(paper, 0.04), 0, 1).astype(np.float32)


def threshold(ink: np.ndarray) -> float:
    """Otsu's threshold over the pixels that might be ink, never below the contrast floor."""
    bins = 64
    levels = (ink.ravel() * np.float32(bins)).astype(np.int32)
    hist = np.bincount(np.minimum(levels, bins - 1, out=levels), minlength=bins)
    hist[: bins // 16] = 0  # paper and its noise would swamp a small digit
    total = hist.sum()
    if total == 0:
        return 1.0
    p = hist / total
    centres = (np.arange(bins) + 0.5) / bins
    omega = np.cumsum(p)
    mu = np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega))
    between = np.nan_to_num(between[:-1])
    t = (int(np.argmax(between)) + 1) / bins if between.any() else 0.0
    return max(t, CONTRAST_FLOOR)


# --- cleaning the mask -------------------------------------------------------------------


def clear_border(mask: np.ndarray, depth: float = 0.12) -> np.ndarray:
    """Drop the dark frame a scanner leaves: rows/columns near the edge that are mostly ink,
    also behind a blank margin (a cropped photo exported with one).

    A band counts as a frame when it runs along (nearly) the whole edge, or when paper follows
    it: the bar of a 7 in a digit cropped tight is also mostly ink, but its stem goes on. A
    frame found within `depth` is followed to its end, however deep.
    """
    out = mask.copy()
    h, w = out.shape
    for view, limit in ((out, h), (out[::-1], h), (out.T, w), (out.T[::-1], w)):
        near = max(1, int(depth * limit))
        fraction = view[:near].mean(axis=1)
        frame = np.flatnonzero(fraction >= 0.5)
        if len(frame) and fraction[: frame[0]].max(initial=0) < 0.05:
            stop = frame[0]
            while stop < len(fraction) and fraction[stop] >= 0.5:
                stop += 1
            end = near
            if stop == near < limit:  # still mostly ink at the depth searched: follow it
                fraction = np.concatenate([fraction, view[near:].mean(axis=1)])
                while stop < limit and fraction[stop] >= 0.5:
                    stop += 1
                end = min(limit, stop + near)
            if fraction[frame[0] : stop].max() >= 0.9 or fraction[stop:end].min(initial=1) < 0.05:
                view[:stop] = False
    return out


@dataclass
class Line:
    """A straight band of ink found in a mask (in the orientation it was searched in)."""

    pixels: np.ndarray  # bool mask of its pixels
    start: int  # first and last column it covers
    stop: int
    band: tuple[int, int]  # first and last sheared row
    slope: float
    offset: int  # sheared row = row + round(column * slope) + offset

    @property
    def row(self) -> float:
        """Where it lies, at its middle."""
        middle = (self.start + self.stop) / 2
        return (self.band[0] + self.band[1]) / 2 - round(middle * self.slope) - self.offset

    def crossed(self, ink: np.ndarray) -> np.ndarray:
        """Its pixels where `ink` continues on both sides: a stroke crossing it (within 2 px
        sideways, so slanted strokes count too)."""
        h, w = ink.shape
        c = np.arange(self.start, self.stop + 1)
        shift = np.rint(c * self.slope).astype(np.int64) + self.offset
        sides = []
        for r in (self.band[0] - 2 - shift, self.band[1] + 2 - shift):
            ok = (r >= 0) & (r < h)
            hit = np.zeros(w + 4, bool)
            hit[c[ok] + 2] = ink[r[ok], c[ok]]
            sides.append(hit[:-4] | hit[1:-3] | hit[2:-2] | hit[3:-1] | hit[4:])
        crossing = sides[0] & sides[1]
        return self.pixels & crossing[None, :]


def shear_rows(rows: np.ndarray, cols: np.ndarray, slope: float, width: int) -> np.ndarray:
    return rows + np.rint(cols * slope).astype(np.int64) + shear_offset(slope, width)


def shear_offset(slope: float, width: int) -> int:
    """What shearing adds to every row, so that no sheared row is negative."""
    return math.ceil(abs(slope) * width) + 3


def thin_rows(mask: np.ndarray, k: int) -> np.ndarray:
    """The pixels of mask outside every vertical run of k or more: where a line thinner than k
    px may be. Thick strokes would otherwise outweigh a faint line in the projections."""
    h, w = mask.shape
    if h < k:
        return mask
    full = sliding(mask, k, np.logical_and)  # full[i]: rows i .. i+k-1 all ink
    edge = np.zeros((k - 1, w), bool)
    covered = sliding(np.concatenate([edge, full, edge]), k, np.logical_or)
    return mask & ~covered


def sliding(a: np.ndarray, k: int, op: np.ufunc) -> np.ndarray:
    """op over every window of k consecutive rows (len(a) - k + 1 rows), in log2(k) steps."""
    n = 1
    while n < k:
        step = min(n, k - n)
        a = op(a[:-step], a[step:])
        n += step
    return a


COARSE_SLOPES = np.linspace(-0.1, 0.1, 9)  # rows per column: a page rotated up to ~6 degrees


def line_candidates(mask: np.ndarray) -> list[Line]:
    """Long thin nearly-horizontal runs of ink (a page rotated up to ~6 degrees is fine).

    Among the thin pixels, tries a few slopes and keeps the one with the tallest projection
    peak, then takes bands of sheared rows with at least 30 % of the width inked.
    """
    h, w = mask.shape
    min_length = max(8, 0.3 * w)
    # A printed line is up to 3 px thick on a scan whatever the size of the region searched: in
    # the closer look at a tiny digit, read at the page's own resolution, 4 % of the region is
    # 2 px, and an underline it touches stayed in the digit (varied10k: 3 fewer filed wrong).
    max_thickness = max(3, round(0.04 * min(h, w)))
    thin = thin_rows(mask, max_thickness + 1)
    if not may_hold_line(thin, min_length, max_thickness):
        return []
    rows, cols = where(thin)
    step = 0.025
    p = sheared_profiles(rows, cols, COARSE_SLOPES, w)
    # Neighbouring rows together: a slope a little off spreads a line over two.
    best = float(COARSE_SLOPES[np.argmax((p[:, :-1] + p[:, 1:]).max(axis=1))])
    fine = np.linspace(best - step, best + step, 7)
    slope = float(fine[np.argmax(sheared_profiles(rows, cols, fine, w).max(axis=1))])

    profile = np.bincount(shear_rows(rows, cols, slope, w))
    # Bands are found among the thin pixels; their extent and pixels come from all the ink, so
    # a stroke crossing a line doesn't cut it in two.
    rows, cols = where(mask)
    sheared = shear_rows(rows, cols, slope, w)
    found: list[Line] = []
    strong = profile >= min_length
    starts = np.flatnonzero(strong & ~np.concatenate([[False], strong[:-1]]))  # of strong bands
    for start in starts:
        r = int(start)
        stop = r
        while stop + 1 < len(profile) and strong[stop + 1]:
            stop += 1
        top = profile[r : stop + 1].max()
        lo = max(0, r - 2)
        core = np.flatnonzero(profile[lo : stop + 3] >= 0.5 * top) + lo
        a, b = int(core.min()), int(core.max())
        if b - a + 1 > max_thickness:
            continue  # a thick bar: the body of a digit or a dark region, not a printed line
        found.extend(segments(mask, rows, cols, sheared, a, b, slope, min_length))
    return found


def sheared_profiles(
    rows: np.ndarray, cols: np.ndarray, slopes: np.ndarray, width: int
) -> np.ndarray:
    """The projection profile of the pixels at rows, cols sheared by each slope, in one
    bincount: (len(slopes), length), row s = np.bincount(shear_rows(..., slopes[s], ...))
    padded with zeros."""
    offsets = np.array([shear_offset(float(slope), width) for slope in slopes], np.int64)
    sheared = rows + np.rint(cols * slopes[:, None]).astype(np.int64) + offsets[:, None]
    length = int(sheared.max(initial=0)) + 1
    sheared += np.arange(len(slopes))[:, None] * length
    return np.bincount(sheared.ravel(), minlength=len(slopes) * length).reshape(len(slopes), -1)


def may_hold_line(thin: np.ndarray, min_length: float, max_thickness: int) -> bool:
    """Whether some band of rows as tall as the steepest line searched holds enough thin ink
    for one: a cheap test that spares most pages without lines the slope search."""
    h, w = thin.shape
    counts = np.concatenate([[0], np.cumsum(np.count_nonzero(thin, axis=1))])
    if counts[-1] < min_length:
        return False
    height = min(h, math.ceil(0.15 * w) + max_thickness + 2)  # slopes up to 0.125, and thickness
    return bool((counts[height:] - counts[:-height]).max() >= min_length)


def segments(
    mask: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    sheared: np.ndarray,
    a: int,
    b: int,
    slope: float,
    min_length: float,
) -> list[Line]:
    """The long stretches of the band [a, b] (sheared rows) of the ink at rows, cols."""
    w = mask.shape[1]
    in_band = (sheared >= a - 1) & (sheared <= b + 1)
    covered = np.zeros(w + 2, bool)
    covered[cols[in_band] + 1] = True
    gap = max(2, round(0.01 * w))
    # close small gaps, then find runs
    filled = covered.copy()
    idx = np.flatnonzero(covered)
    if len(idx) > 1:
        small = np.flatnonzero((np.diff(idx) > 1) & (np.diff(idx) <= gap + 1))
        for i in small:
            filled[idx[i] : idx[i + 1]] = True
    edges = np.flatnonzero(np.diff(filled.astype(np.int8)))
    out = []
    offset = shear_offset(slope, w)
    for start, stop in zip(edges[::2], edges[1::2], strict=False):
        if stop - start < min_length:
            continue
        pick = in_band & (cols >= start) & (cols < stop)  # covered index - 1 == column
        pixels = np.zeros_like(mask)
        pixels[rows[pick], cols[pick]] = True
        out.append(Line(pixels, int(start), int(stop - 1), (a, b), slope, offset))
    return out


def remove_lines(
    mask: np.ndarray, horizontal: list[Line] | None = None, vertical: list[Line] | None = None
) -> np.ndarray:
    """Remove form boxes, ruled lines and underlines; keep the digit, also where it crosses one.

    A long thin straight run counts as a line when it spans almost the whole page, or when it
    reaches beyond the digit (the largest blob of the other ink) on both ends: a box edge, a
    rule through the digit. A digit's own bar (the top of a 7 or 5) ends where the digit does,
    and is never UNDERLINE times the digits' height long: a flat run that long is a line too,
    though it ends with the number (a number underlined by hand, the line touching its digits).
    A form box goes as a whole, also when two of its sides are too short to be searched for
    (a 1 in a tall box): two parallel lines whose ends line up and are joined by ink are a
    box. With no other ink at all, only lines meeting at corners (an empty box) or spanning
    the page go: a lone straight stroke may be a "1".
    """
    horizontal = line_candidates(mask) if horizontal is None else horizontal
    vertical = line_candidates(mask.T) if vertical is None else vertical
    if not horizontal and not vertical:
        return mask
    in_h, sides_v = boxes(mask, horizontal)
    in_v, sides_h = boxes(mask.T, vertical)
    lines = [(line, 1, i in in_h) for i, line in enumerate(horizontal)]
    lines += [(line, 0, i in in_v) for i, line in enumerate(vertical)]
    lines += [(line, 1, True) for line in sides_h] + [(line, 0, True) for line in sides_v]
    rest = mask.copy()
    for line, axis, _ in lines:
        rest &= ~(line.pixels if axis == 1 else line.pixels.T)
    labels, n = label(rest)
    digit = None
    if n:
        ys, xs = where(chosen(labels, n, select_digit(labels, n)))
        digit = ((ys.min(), ys.max()), (xs.min(), xs.max()))
    out = mask.copy()
    for line, axis, boxed in lines:
        length = line.stop - line.start + 1
        margin = max(2.0, 0.04 * length)
        if boxed or length >= 0.9 * mask.shape[axis]:
            accept = True
        elif digit is None:
            across = vertical if axis == 1 else horizontal
            accept = corners(line, across, margin) >= 2
        else:
            lo, hi = digit[axis]
            accept = line.start <= lo - margin and line.stop >= hi + margin
            if axis == 1:  # no digit's stroke lies flat this long for its height: underlined
                accept |= length >= UNDERLINE * (digit[0][1] - digit[0][0] + 1)
        if accept:
            keep = line.crossed(rest if axis == 1 else rest.T)
            out &= ~((line.pixels & ~keep) if axis == 1 else (line.pixels & ~keep).T)
    return out


def boxes(mask: np.ndarray, lines: list[Line]) -> tuple[list[int], list[Line]]:
    """Of `lines` (parallel, in mask's orientation): the indices of those that are sides of a
    box, and the joining sides found (lines of mask.T)."""
    members: set[int] = set()
    sides: list[Line] = []
    short = [i for i, line in enumerate(lines) if line.stop - line.start + 1 < 0.9 * mask.shape[1]]
    for n, i in enumerate(short):  # lines spanning the page go anyway: no need to box them
        a = lines[i]
        for j in short[n + 1 :]:
            b = lines[j]
            length = min(a.stop - a.start, b.stop - b.start) + 1
            tol = max(3.0, 0.05 * length)
            if abs(a.start - b.start) > tol or abs(a.stop - b.stop) > tol:
                continue
            if abs(a.row - b.row) < max(6.0, 0.2 * length):
                continue  # a double rule, or both edges of one thick stroke
            found = [s for s in (joining_side(mask, a, b, e) for e in ("start", "stop")) if s]
            if found:
                members.update((i, j))
                sides.extend(found)
    return sorted(members), sides


def joining_side(mask: np.ndarray, a: Line, b: Line, end: str) -> Line | None:
    """The side joining the `end` ("start" or "stop") of parallel lines a and b (found in
    `mask`), as a line of mask.T, if the mask has ink along it."""
    h, w = mask.shape
    ca, cb = getattr(a, end), getattr(b, end)
    ra = a.row - (ca - (a.start + a.stop) / 2) * a.slope  # where each line is at that end
    rb = b.row - (cb - (b.start + b.stop) / 2) * b.slope
    (r0, c0), (r1, c1) = sorted([(ra, ca), (rb, cb)])
    y0, y1 = int(np.ceil(r0)) + 2, int(np.floor(r1)) - 2  # inside the two lines
    if y1 - y0 < 4 or not (min(c0, c1) >= 0 and max(c0, c1) < w):
        return None
    ys = np.arange(max(y0, 0), min(y1, h - 1) + 1)
    xs = np.rint(c0 + (ys - r0) / (r1 - r0) * (c1 - c0)).astype(np.int64)
    near = np.zeros((len(ys), 5), bool)
    for i, dx in enumerate(range(-2, 3)):
        x = xs + dx
        ok = (x >= 0) & (x < w)
        near[ok, i] = mask[ys[ok], x[ok]]
    if near.any(axis=1).mean() < COVERED:
        return None
    lo, hi = int(xs.min()) - 2, int(xs.max()) + 2
    band = np.zeros((w, h), bool)  # mask.T orientation
    band[max(lo, 0) : hi + 1, max(int(np.floor(r0)), 0) : int(np.ceil(r1)) + 1] = True
    offset = shear_offset(0.0, h)
    return Line(
        band & mask.T,
        max(int(np.floor(r0)), 0),
        min(int(np.ceil(r1)), h - 1),
        (lo + offset, hi + offset),
        0.0,
        offset,
    )


def corners(line: Line, across: list[Line], tolerance: float) -> int:
    """How many of the line's two ends meet a perpendicular line (boxes are made of these)."""
    found = 0
    for end in (line.start, line.stop):
        found += any(
            abs(other.row - end) <= tolerance
            and other.start - tolerance <= line.row <= other.stop + tolerance
            for other in across
        )
    return found


# --- components --------------------------------------------------------------------------


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components: (labels with 0 = background and 1..n, n). Numpy only.

    Union-find over the ink pixels, hooking roots in bulk and halving paths with
    `parent[parent]` until stable: O(log n) passes of vectorised work.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    y0, y1 = (rows[0], rows[-1] + 1) if len(rows) else (0, 0)
    x0, x1 = (cols[0], cols[-1] + 1) if len(cols) else (0, 0)
    if len(rows) and (y1 - y0, x1 - x0) != mask.shape:
        # Ink is sparse: label just the box around it (all the work below scales with it).
        inside, n = label(mask[y0:y1, x0:x1])
        labels = np.zeros(mask.shape, np.int32)
        labels[y0:y1, x0:x1] = inside
        return labels, n
    h, w = mask.shape
    padded = np.zeros((h + 1, w + 2), bool)  # a blank column each side and row below: no wrap
    padded[:h, 1:-1] = mask
    flat = padded.ravel()
    pixels = np.flatnonzero(flat)
    labels = np.zeros((h + 1, w + 2), np.int32)
    if len(pixels) == 0:
        return labels[:h, 1:-1], 0
    node = np.zeros(flat.size, np.int64)
    node[pixels] = np.arange(len(pixels))
    us, vs = [], []
    for offset in (w + 1, w + 2, w + 3):  # down-left, down, down-right
        neighbour = pixels + offset
        linked = flat[np.minimum(neighbour, flat.size - 1)] & (neighbour < flat.size)
        us.append(np.flatnonzero(linked))
        vs.append(node[neighbour[linked]])
    u, v = np.concatenate(us), np.concatenate(vs)
    # Each horizontal run starts joined to its first pixel (the left blank column means every
    # pixel has a left neighbour), so only links between rows are left to union.
    index = np.arange(len(pixels))
    parent = np.maximum.accumulate(np.where(flat[pixels - 1], 0, index))
    while len(u):
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        u, v, pu, pv = u[differ], v[differ], pu[differ], pv[differ]
        if not len(u):
            break
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    # Roots numbered in order, as np.unique would, without its sort.
    root = parent == index
    number = np.cumsum(root, dtype=np.int32)
    labels.ravel()[pixels] = number[parent]
    return labels[:h, 1:-1], int(number[-1])


def where(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """np.nonzero of a 2-D array, in the same order, about twice as fast."""
    return np.divmod(np.flatnonzero(a), a.shape[1])


@dataclass
class Components:
    area: np.ndarray  # per component (index = label - 1)
    y0: np.ndarray
    x0: np.ndarray
    y1: np.ndarray  # exclusive
    x1: np.ndarray


def components(labels: np.ndarray, n: int) -> Components:
    ys, xs = where(labels)
    ids = labels[ys, xs] - 1
    y0, x0 = np.full(n, labels.shape[0], np.intp), np.full(n, labels.shape[1], np.intp)
    y1, x1 = np.zeros(n, np.intp), np.zeros(n, np.intp)
    np.minimum.at(y0, ids, ys)  # unbuffered per-label reductions: no sort of all the pixels
    np.minimum.at(x0, ids, xs)
    np.maximum.at(y1, ids, ys)
    np.maximum.at(x1, ids, xs)
    return Components(np.bincount(ids, minlength=n), y0, x0, y1 + 1, x1 + 1)


def select_digit(labels: np.ndarray, n: int, c: Components | None = None) -> np.ndarray:
    """Component ids (1-based) of the digit: the largest piece and the pieces that belong to it.

    A piece joins when it is close to the digit so far (within a third of its size) and more
    than a speck (3 % of its ink), or when it lies inside the digit's box (1 %). Dust is never
    a piece: a small, round, filled blob, where a digit's stray pieces are bits of stroke.
    """
    c = components(labels, n) if c is None else c
    h, w = c.y1 - c.y0, c.x1 - c.x0
    main = int(np.argmax(c.area))  # returned first
    blob = filled_round(c.area, h, w)
    chosen = np.zeros(n, bool)
    chosen[main] = True
    while True:
        y0, x0 = c.y0[chosen].min(), c.x0[chosen].min()
        y1, x1 = c.y1[chosen].max(), c.x1[chosen].max()
        size = max(y1 - y0, x1 - x0)
        ink = c.area[chosen].sum()
        gap_y = np.maximum(0, np.maximum(y0 - c.y1, c.y0 - y1))
        gap_x = np.maximum(0, np.maximum(x0 - c.x1, c.x0 - x1))
        near = (np.hypot(gap_y, gap_x) <= size / 3) & (c.area >= 0.03 * ink)
        inside = (c.y0 >= y0) & (c.y1 <= y1) & (c.x0 >= x0) & (c.x1 <= x1) & (c.area >= 0.01 * ink)
        dust = blob & (np.maximum(h, w) <= 0.2 * size)
        joined = chosen | ((near | inside) & ~dust)
        if np.array_equal(joined, chosen):
            others = np.flatnonzero(chosen & (np.arange(n) != main))
            return np.concatenate([[main], others]) + 1
        chosen = joined


def filled_round(
    area: np.ndarray | int, h: np.ndarray | int, w: np.ndarray | int, fill: float = 0.6
) -> np.ndarray:
    """Whether ink of `area` pixels in a box h x w is a round, filled blob (dust, an ink blot, a
    punched hole): a digit's strokes leave much of their box empty."""
    return np.asarray((area >= fill * h * w) & (np.maximum(h, w) <= 2 * np.minimum(h, w)))


def blot_ink(digit: Digit, strong: np.ndarray) -> np.ndarray | None:
    """The clear ink of the digit chosen when it is one round filled blob, else None. Only the
    digit's box is counted: this runs on every page."""
    y0, x0, y1, x1 = digit.box
    clear = int(np.count_nonzero(digit.mask[y0:y1, x0:x1] & strong[y0:y1, x0:x1]))
    return digit.mask & strong if filled_round(clear, y1 - y0, x1 - x0) else None


# A pale digit is read past the dark blots beside it when its ink weighs this many times theirs.
BLOTTED_DIGIT = 3.0


def find_digits(ink: np.ndarray, min_size: float) -> Reading | str:
    """The digits' ink in an ink-strength map, in reading order, or why there is none (a blank
    reason).

    The mask comes from a lightly smoothed copy, which keeps pencil grain and paper noise from
    breaking strokes apart or passing for ink, with hysteresis: faint ink counts where it is
    connected to ink above the threshold, so a grainy pencil stroke stays whole and faint
    specks stay out. Printed lines and scanner borders are often darker than a pencil digit
    and would pull the threshold above it: once they are known, the threshold is chosen again
    without them. So would dark dust or an ink blot beside a large pale pencil digit, leaving
    the blot as the only ink: when what was found is a blot, the page is read again with the
    blot's pixels (`blotted`) left out of the threshold, and that reading is taken when it
    finds far more ink than the blot. A digit smaller than `min_size` px is a speck.
    """
    smooth = smoothed(ink)
    return digits_in(smooth, max(noise_floor(smooth), CONTRAST_FLOOR), min_size)


def digits_in(
    smooth: np.ndarray, floor: float, min_size: float, blotted: np.ndarray | None = None
) -> Reading | str:
    """`find_digits` of the smoothed ink map, its noise `floor` known."""
    t = max(threshold(smooth if blotted is None else np.where(blotted, 0, smooth)), floor)
    if not (smooth >= t).any():
        return "no ink darker than the paper"
    low = max(floor, HYSTERESIS * t)
    raw = smooth >= low
    mask = clear_border(raw)
    frame = raw & ~mask
    horizontal, vertical = line_candidates(mask), line_candidates(mask.T)
    structure = frame.copy()
    for line in horizontal:
        structure |= line.pixels
    for line in vertical:
        structure |= line.pixels.T
    plain = not structure.any()
    if not plain:
        quiet = np.where(neighbourhood(structure, np.logical_or), 0, smooth)
        t = min(t, max(threshold(quiet), floor))
        if max(floor, HYSTERESIS * t) < low - 0.02:
            low = max(floor, HYSTERESIS * t)
            mask = clear_border(smooth >= low)
            if np.count_nonzero(mask & frame) > 0.1 * np.count_nonzero(frame):
                # Fainter, the paper beyond the frame found holds enough grain that
                # clear_border no longer sees (all of) a frame behind a margin: the frame
                # stays cleared, with its rim.
                mask &= ~neighbourhood(frame, np.logical_or)
            horizontal, vertical = line_candidates(mask), line_candidates(mask.T)
    cleaned = remove_lines(mask, horizontal, vertical)
    strong = cleaned & (smooth >= t)
    labels, n = label(cleaned)
    plain = plain and n == 1
    labels, n = keep_labels(labels, n, np.flatnonzero(np.bincount(labels[strong], minlength=1)))
    if n == 0:
        return "only lines, no digit"
    pieces = components(labels, n)
    frames = box_frames(labels, pieces)
    if frames.any():
        labels, n = keep_labels(labels, n, np.flatnonzero(~frames) + 1)
        pieces = components(labels, n)
    ids = select_digit(labels, n, pieces)
    single = digit_of(chosen(labels, n, ids), strong, t)
    assert single is not None  # the largest piece has strong ink: it was kept for that
    blot = None if blotted is not None else blot_ink(single, strong)
    if blot is not None:
        paler = read_past_blots(smooth, floor, min_size, blot, t)
        if paler is not None:
            return paler
    if is_speck(labels == ids[0], min_size):  # a digit's largest piece is more than a speck
        return "only specks, no digit"
    found = read_marks(labels, pieces, strong, t, single)
    found.plain, found.whole = plain, single
    return found


FRAME_RIM = 0.12  # of a piece's shorter side: a drawn box's ink lies this close to its edges
FRAME_SHARE = 0.9  # ... this much of it


def box_frames(labels: np.ndarray, c: Components) -> np.ndarray:
    """Per piece, whether it is a box drawn around another piece: its ink hugs the edges of its
    own bounding box (a rectangle's sides; a 0's ink touches them only at four points) and
    another piece lies inside it. Its sides may be too short or too faint to be found as lines
    (a light box around one digit on squared paper), and as one piece it outweighs a thin 1."""
    frames = np.zeros(len(c.area), bool)
    for i in np.flatnonzero((c.y1 - c.y0 >= 8) & (c.x1 - c.x0 >= 8)):
        y0, x0, y1, x1 = int(c.y0[i]), int(c.x0[i]), int(c.y1[i]), int(c.x1[i])
        inside = (c.y0 > y0) & (c.x0 > x0) & (c.y1 < y1) & (c.x1 < x1)
        if not inside.any():
            continue
        rim = max(2, round(FRAME_RIM * min(y1 - y0, x1 - x0)))
        piece = labels[y0:y1, x0:x1] == i + 1
        core = piece[rim:-rim, rim:-rim]
        frames[i] = np.count_nonzero(core) <= (1 - FRAME_SHARE) * c.area[i]
    return frames


def read_past_blots(
    smooth: np.ndarray, floor: float, min_size: float, blot: np.ndarray, t: float
) -> Reading | None:
    """The page read again with the blot found as its digit left out of the threshold, when
    that finds one paler mark (a lower threshold) of clear ink (on average twice the noise
    `floor`, where faint remains of lines, grain or shading are not) with BLOTTED_DIGIT times
    the blot's ink; else None. A bold filled 0, or a digit too small or blurred to show its
    strokes, stays what was found."""
    again = digits_in(smooth, floor, min_size, blotted=blot)
    if not isinstance(again, Reading) or len(again.positions) != 1:
        return None
    weight = smooth[again.digits[0].mask]
    if again.digits[0].threshold >= 0.8 * t or float(weight.mean()) < 2 * floor:
        return None
    return again if float(weight.sum()) >= BLOTTED_DIGIT * float(smooth[blot].sum()) else None


def digit_of(mask: np.ndarray, strong: np.ndarray, t: float) -> Digit | None:
    """A Digit of the ink `mask`, boxed by its clear ink (faint rims would widen the box)."""
    ys, xs = where(mask & strong)
    if not len(ys):
        return None
    return Digit(mask, (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1), t)


# Marks: pieces of ink stacked one above the other (a 5's detached flag, an 8 with a gap, a 4
# in two strokes) are one mark; a mark is a digit when it is at least this part of the height
# of the typical digit-sized mark. Separators, dashes, underlines, ticks and dots are lower.
STACKED_OVERLAP = 0.5  # of the narrower piece's width, overlapping left to right
STACKED_GAP = 0.15  # of the taller piece's height, at most, between them
DIGIT_HEIGHT = 0.5  # of the typical digit's height
BLOT_HEIGHT = 0.75  # of the typical digit's height: a filled mark lower is an ink blot
FLAG_GAP = 0.3  # of the typical digit's height, at most, between a 5's flag and its body
PIECE = 0.12  # of the typical digit's height: a smaller mark is a speck, not a broken stroke
SLASH_GAP = 0.1  # of the typical digit's height: a dash this close after a line's last mark
LETTER_HEIGHT = 0.3  # of the typical digit's height: lowercase print is this tall or more
PRINTED_LINE = 1.5  # times a printed word's tallest letter: taller marks are handwriting
WORD_GAP = 0.15  # of the typical digit's height: printed letters stand closer than this
STACKED_PIECE = 0.02  # of the largest piece's ink: smaller pieces are dust, grain
WIDE = 1.15  # a mark wider than this times its height may be digits touching each other
TRAILING_HEIGHT = 0.4  # of a digit's height: a dash or `=` touching the digit before it ...
TRAILING_BAND = (0.25, 0.8)  # ... lies with its middle this far down the mark


def read_marks(
    labels: np.ndarray, c: Components, strong: np.ndarray, t: float, single: Digit
) -> Reading:
    """The digits of the page in reading order: marks grouped into lines (a tilted line is
    still one line, each mark joining the line whose last mark it overlaps vertically), left
    to right, lines top to bottom. A page with one digit-sized mark reads as it always has:
    the digit `select_digit` chose."""
    if np.count_nonzero(c.area >= STACKED_PIECE * c.area.max()) == 1:  # the common case, fast
        return Reading([alternatives(single, strong)], [0], [])
    groups = stacked(c)
    n = len(c.area)
    boxes = np.array([[c.y0[g].min(), c.x0[g].min(), c.y1[g].max(), c.x1[g].max()] for g in groups])
    area = np.array([c.area[g].sum() for g in groups])
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # The digits' height: the tallest marks' (not dashes, underlines, nor printed lowercase).
    big = (area >= 0.2 * area.max()) & (h >= 0.75 * h.max())
    if not big.any():  # the inkiest mark is flat (a blot, a bar), the tallest thin: no line
        return Reading([alternatives(single, strong)], [0], [])
    typical = float(np.median(h[big]))
    # An ink blot is filled and round; a bold 0 as tall as the digits is filled too, but a digit.
    blob = filled_round(area, h, w, fill=0.7) & (h < BLOT_HEIGHT * typical)
    digit = (h >= DIGIT_HEIGHT * typical) & (area >= 0.05 * area.max()) & ~blob
    joined: list[tuple[int, int]] = []
    free = ~digit  # pieces that may still join a digit
    # A short 5 whose flag came off is two small pieces; a 5's flag may lie apart from its body.
    for find in (lambda: halves(boxes, free, typical), lambda: flags(boxes, digit, free, typical)):
        for i, j in find():
            groups[j] = groups[j] + groups[i]
            boxes[j, :2] = np.minimum(boxes[j, :2], boxes[i, :2])
            boxes[j, 2:] = np.maximum(boxes[j, 2:], boxes[i, 2:])
            digit[j], free[i], free[j] = True, False, False
            joined.append((i, j))
    order = np.flatnonzero(digit)
    lines = in_lines(order, boxes)
    text = [i for line in lines for i in printed(line, boxes, free, typical)]
    if text and len(text) < len(order):  # a printed label beside the handwritten number
        digit[text] = False
        order = np.flatnonzero(digit)
        lines = in_lines(order, boxes)
    elif len(order) <= 1 or one_column(lines, boxes):
        y0, x0, y1, x1 = single.box
        outside = (
            (boxes[:, 0] >= y1) | (boxes[:, 2] <= y0) | (boxes[:, 1] >= x1) | (boxes[:, 3] <= x0)
        )
        apart = len(order) > 1 and column_gap(lines, boxes) > FLAG_GAP * typical
        dropped = [as_box(b) for b in boxes[outside]]
        return Reading([alternatives(single, strong)], [0], dropped, column=apart)
    width = float(np.median(w[order]))
    flagged = {i for i, _ in joined}
    others = np.array([i for i in np.flatnonzero(~digit) if i not in flagged], dtype=np.int64)
    positions: list[list[list[Digit]]] = []
    line_of: list[int] = []
    slashes: list[int] = []
    for number, line in enumerate(lines):
        for i in line:
            whole = digit_of(chosen(labels, n, np.asarray(groups[i]) + 1), strong, t)
            if whole is None:
                continue
            if i == line[-1] and slash_before_dash(boxes, i, others, typical):
                slashes.append(len(positions))
            positions.append(alternatives(whole, strong, typical, width))
            line_of.append(number)
    dropped = [as_box(boxes[i]) for i in others]
    return Reading(positions, line_of, dropped, typical=typical, slashes=slashes)


def slash_before_dash(boxes: np.ndarray, i: int, others: np.ndarray, typical: float) -> bool:
    """Whether mark i, the last of its line, may be the slash of a `/-` written after an amount
    (the model reads a slash as a 1, surely): a narrow mark with a short dash at its mid-height
    starting no further than SLASH_GAP to its right. A 1 so followed is as likely; a person
    decides."""
    y0, x0, y1, x1 = boxes[i]
    if not len(others) or x1 - x0 > 0.8 * (y1 - y0):
        return False
    b = boxes[others]
    h, w, middle = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1], (b[:, 0] + b[:, 2]) / 2
    dash = (
        (w >= 2 * h)
        & (w <= typical)
        & (b[:, 1] > (x0 + x1) / 2)
        & (b[:, 1] <= x1 + SLASH_GAP * typical)
        & (np.abs(middle - (y0 + y1) / 2) < 0.25 * (y1 - y0))
    )
    return bool(dash.any())


def printed(line: list[int], boxes: np.ndarray, free: np.ndarray, typical: float) -> list[int]:
    """The digit-sized marks of a line that belong to printed words ("Amount:", "Total").

    The line's marks, small ones within its height included, are grouped into words where
    they stand closer than WORD_GAP of a digit's height; type sets letters that close, and a
    word with two lowercase-sized letters (a third to a half of a digit's height, not flat
    like a dash, nor thin like a comma) is text: its capitals and tall letters are not
    digits. A handwritten number has no such marks - its separators are dots, commas and
    flat strokes. A line holding such words and nothing taller than PRINTED_LINE times their
    letters is a printed line, all of it."""
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    top, bottom = boxes[line, 0].min(), boxes[line, 2].max()
    middle = (boxes[:, 0] + boxes[:, 2]) / 2
    small = np.flatnonzero(free & (middle > top) & (middle < bottom)).tolist()
    letter = (h >= LETTER_HEIGHT * typical) & (h < DIGIT_HEIGHT * typical) & (2 * h >= w)
    letter &= w >= LETTER_HEIGHT * typical * 2 / 3  # not a comma, nor a slash
    marks = sorted(line + small, key=lambda i: boxes[i, 1])
    found: list[int] = []
    word: list[int] = []
    reach, text_height = -1, 0
    for i in [*marks, -1]:
        if i < 0 or (word and boxes[i, 1] - reach > WORD_GAP * typical):
            if np.count_nonzero(letter[word]) >= 2:
                found += [j for j in word if j in line]
                text_height = max(text_height, int(h[word].max()))
            word, reach = [], -1
        if i >= 0:
            word.append(i)
            reach = max(reach, int(boxes[i, 3]))
    if text_height and h[line].max() <= PRINTED_LINE * text_height:
        return list(line)  # a line of print ("Invoice No."), no handwriting taller than it
    return found


def halves(boxes: np.ndarray, free: np.ndarray, typical: float) -> list[tuple[int, int]]:
    """(piece, piece) pairs that join marks too low for a digit into one: pieces one above the
    other, overlapping left to right, each within FLAG_GAP of the next, together as tall as a
    digit and no wider than one (a 5 whose flag came off; a 3 a skipping pen broke into three
    dashes). Two pieces join only if one is a stroke more than flat, so a `=` stays two dashes;
    specks (under PIECE of a digit's height) join none, so noise cannot make a chain. Each piece
    joins the group's tallest."""
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    small = np.flatnonzero(free & (np.maximum(h, w) >= PIECE * typical))
    y0, x0, y1, x1 = (boxes[small, k] for k in range(4))
    overlap = np.minimum(x1[:, None], x1[None, :]) - np.maximum(x0[:, None], x0[None, :])
    gap = np.maximum(y0[:, None], y0[None, :]) - np.minimum(y1[:, None], y1[None, :])
    narrow = np.minimum.outer(x1 - x0, x1 - x0)
    join = (overlap >= 0.2 * narrow) & (gap <= FLAG_GAP * typical)
    pairs = []
    for group in clusters(join):
        members = small[group]
        if len(members) < 2 or (len(members) == 2 and h[members].max() < 0.3 * typical):
            continue
        tall = boxes[members, 2].max() - boxes[members, 0].min()
        wide = boxes[members, 3].max() - boxes[members, 1].min()
        if tall >= DIGIT_HEIGHT * typical and wide <= 1.1 * typical:
            keep = int(members[np.argmax(h[members])])
            pairs += [(int(i), keep) for i in members if i != keep]
    return pairs


def clusters(join: np.ndarray) -> list[list[int]]:
    """Indices grouped by a symmetric join matrix: each joined to any member of its group."""
    parent = list(range(len(join)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(join, 1)), strict=True):
        parent[root(int(i))] = root(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(join)):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def flags(
    boxes: np.ndarray, digit: np.ndarray, free: np.ndarray, typical: float
) -> list[tuple[int, int]]:
    """(piece, digit) pairs: a small piece touching the upper part of one digit's box from
    above or inside it, and overlapping it left to right by a fifth of its own width (a 5's
    flag, a 7's or 4's detached stroke). Pieces at the foot of a digit (a decimal point, a
    comma, an underline) and pieces between digits (a dash) stay apart."""
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    pairs = []
    for i in np.flatnonzero(free).tolist():
        overlap = np.minimum(boxes[i, 3], boxes[:, 3]) - np.maximum(boxes[i, 1], boxes[:, 1])
        middle = (boxes[i, 0] + boxes[i, 2]) / 2
        near = (
            digit
            & (overlap >= 0.2 * w[i])
            & (w[i] <= 1.5 * w)
            & (boxes[i, 2] >= boxes[:, 0] - FLAG_GAP * typical)  # just above it or inside
            & (middle <= boxes[:, 0] + 0.5 * h)  # in its upper half
        )
        if np.count_nonzero(near) == 1:
            pairs.append((i, int(np.flatnonzero(near)[0])))
    return pairs


def in_lines(order: np.ndarray, boxes: np.ndarray) -> list[list[int]]:
    """The marks `order` (indices into boxes) grouped into lines, each left to right, top line
    first. A mark joins the line whose last mark it overlaps most vertically (by at least 30 %
    of the lower one), so a tilted line stays one line."""
    h = boxes[:, 2] - boxes[:, 0]
    lines: list[list[int]] = []
    for i in sorted(order.tolist(), key=lambda i: (boxes[i, 1] + boxes[i, 3]) / 2):
        best, overlap = None, 0.0
        for line in lines:
            j = line[-1]
            shared = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            if shared > max(overlap, 0.3 * min(h[i], h[j])):
                best, overlap = line, float(shared)
        if best is None:
            lines.append([i])
        else:
            best.append(i)
    return sorted(lines, key=lambda line: float(np.mean([boxes[i, 0] + boxes[i, 2] for i in line])))


def column_gap(lines: list[list[int]], boxes: np.ndarray) -> int:
    """The widest gap between marks one above the other, one per line."""
    tops = sorted((int(boxes[line[0], 0]), int(boxes[line[0], 2])) for line in lines)
    return max(top - bottom for (_, bottom), (top, _) in itertools.pairwise(tops))


def one_column(lines: list[list[int]], boxes: np.ndarray) -> bool:
    """Marks one above the other, one per line: the pieces of one digit broken across (a 6
    whose loop came apart), not a column of one-digit lines."""
    if any(len(line) > 1 for line in lines):
        return False
    x0, x1 = boxes[[line[0] for line in lines], 1], boxes[[line[0] for line in lines], 3]
    return bool(x0.max() < x1.min())


def as_box(row: np.ndarray) -> Box:
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def stacked(c: Components) -> list[list[int]]:
    """Pieces (component indices) grouped into marks: stacked pieces join (see above); pieces
    under 2 % of the largest piece's ink are left out (dust, grain)."""
    keep = np.flatnonzero(c.area >= STACKED_PIECE * c.area.max())
    y0, x0, y1, x1 = c.y0[keep], c.x0[keep], c.y1[keep], c.x1[keep]
    h, w = y1 - y0, x1 - x0
    overlap = np.minimum(x1[:, None], x1[None, :]) - np.maximum(x0[:, None], x0[None, :])
    gap = np.maximum(y0[:, None], y0[None, :]) - np.minimum(y1[:, None], y1[None, :])
    narrow, wide = np.minimum(w[:, None], w[None, :]), np.maximum(w[:, None], w[None, :])
    join = (
        (overlap >= STACKED_OVERLAP * narrow)
        & (gap <= STACKED_GAP * np.maximum(h[:, None], h[None, :]))
        & ((gap <= 0) | (wide <= 2 * narrow))  # not an underline below a digit
    )
    return [[int(keep[i]) for i in group] for group in clusters(join)]


def alternatives(
    whole: Digit, strong: np.ndarray, typical: float = 0, width: float = 0
) -> list[list[Digit]]:
    """A mark as one digit, and, when it is too wide for one, cut into two or three digits
    (over-segmentation: the model's probabilities choose). Too wide: wider than WIDE times its
    height (or the typical digit's), and, among other digits, half as wide again as they are
    (a flat 5 among narrow digits is one digit)."""
    y0, x0, y1, x1 = whole.box
    h, w = y1 - y0, x1 - x0
    height = max(h, 0.8 * typical)
    if w <= WIDE * height or w <= 1.5 * width:
        return [[whole]]
    found: list[list[Digit]] = [[whole]]  # a wide single digit (a flat 2, a 0) stays a choice
    rows = np.flatnonzero(whole.mask[:, x0:x1].any(axis=1))
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    ink = whole.mask[r0:r1, x0:x1]
    for k in cut_ways(w, height):
        for regions in cut_into(ink, k):
            pieces = []
            for region in regions:
                piece = np.zeros_like(whole.mask)
                piece[r0:r1, x0:x1] = region
                part = digit_of(piece, strong, whole.threshold)
                if part is not None and region.sum() >= 0.1 * ink.sum() / k:
                    pieces.append(part)
            if len(pieces) == k:
                found.append(pieces)
                if k == 2 and trailing_stroke(pieces[-1].box, whole.box, height):
                    found.append(pieces[:-1])  # "6-", "8=": the digit without its filler
    return found


def trailing_stroke(piece: Box, mark: Box, height: float) -> bool:
    """Whether the last piece cut from a mark is a dash or `=` written against the digit
    before it (a filler after an amount, "125=" or "6-"): flat (under TRAILING_HEIGHT of the
    digit's height) and at mid-height, where no digit's flat stroke lies (a 2's foot is at the
    bottom, a 7's or 5's bar at the top)."""
    y0, _, y1, _ = piece
    top, _, bottom, _ = mark
    middle = ((y0 + y1) / 2 - top) / max(bottom - top, 1)
    return y1 - y0 < TRAILING_HEIGHT * height and TRAILING_BAND[0] < middle < TRAILING_BAND[1]


def cut_ways(width: float, height: float) -> list[int]:
    """Into how many digits a mark this wide for its height may be cut."""
    return [2] if width <= 1.9 * height else [2, 3] if width <= 2.4 * height else [3]


# Two digits written fast touch or overlap: a straight cut through where they meet can give one
# digit a piece of the other (a 7's bar over the 5 after it reads "25"), and a cut that follows
# the way across crossing the least ink can cut a loop instead ("99" reads "97"). The seam is
# offered too where it crosses fewer strokes than the straight cut (round a bar's end; never in
# a wide 0, which any cut crosses twice), and the model's probabilities choose. It stays within
# SEAM_REACH of the mark's width of its column and moves at most one column a row; SEAM_DRIFT
# (of a stroke pixel, per column away from its column) keeps it straight where no ink tells it
# where to go. Touching pairs 92.33 -> 93.00 % clean, 88.33 -> 88.67 % varied, to review 57 -> 47
# and 65 -> 61 %; single digits read the same, 2 more of 2,000 to review in each set
# (bench_numbers.py, bench_scans.py, seed 2024).
SEAM_REACH = 0.12
SEAM_DRIFT = 0.01


def cut_into(ink: np.ndarray, k: int) -> list[list[np.ndarray]]:
    """The ways to cut a mark's `ink` into k digits, each as the pieces' masks: at each set of
    columns `cut_sets` picks, straight down and along its seam (see SEAM_REACH)."""
    h = len(ink)
    sets = cut_sets(ink.sum(axis=0), k)
    paths = iter(seams(ink, [x for cuts in sets for x in cuts]))
    found = []
    for cuts in sets:
        down = np.repeat(np.asarray(cuts)[:, None], h, axis=1)
        found.append(pieces_between(ink, down))
        seam = np.maximum.accumulate([next(paths) for _ in cuts], axis=0)  # seams never cross
        if strokes_crossed(ink, seam) < strokes_crossed(ink, down):
            found.append(pieces_between(ink, seam))
    return found


def strokes_crossed(ink: np.ndarray, paths: np.ndarray) -> int:
    """How many strokes the cut `paths` cross: runs of ink along each path, summed."""
    on = ink[np.arange(ink.shape[0]), paths] > 0  # (cuts, rows)
    return int(np.count_nonzero(on[:, 1:] & ~on[:, :-1]) + np.count_nonzero(on[:, 0]))


def seams(ink: np.ndarray, cuts: Sequence[int]) -> np.ndarray:
    """Per cut column, the column each row of `ink` is cut at: the path from top to bottom
    crossing the least ink (a seam, found by dynamic programming for all cuts at once)."""
    h, w = ink.shape
    reach = max(1, round(SEAM_REACH * w))
    offsets = np.arange(-reach, reach + 1)
    cols = np.clip(np.asarray(cuts)[:, None] + offsets, 0, w - 1)  # (cuts, window)
    cost = ink.astype(np.float32)[:, cols] + SEAM_DRIFT * np.abs(offsets)  # (h, cuts, window)
    total = cost[0]
    back = np.zeros(cost.shape, np.int8)  # per row, where the cheapest way came from: -1, 0, 1
    edge = np.full((len(cols), 1), np.inf, np.float32)
    for r in range(1, h):
        left = np.concatenate((edge, total[:, :-1]), axis=1)
        right = np.concatenate((total[:, 1:], edge), axis=1)
        from_left = left < total
        best = np.where(from_left, left, total)
        from_right = right < best
        back[r] = from_right.view(np.int8) - from_left.view(np.int8) * ~from_right
        total = np.where(from_right, right, best) + cost[r]
    at = total.argmin(axis=1)
    path = np.empty((h, len(cols)), np.intp)
    lanes = np.arange(len(cols))
    for r in range(h - 1, -1, -1):
        path[r] = cols[lanes, at]
        at = at + back[r, lanes, at]
    return path.T


def pieces_between(ink: np.ndarray, paths: np.ndarray) -> list[np.ndarray]:
    """The masks of `ink`'s pieces between the cut `paths` (per cut, per row, the first column
    of the piece to its right), left to right."""
    h, w = ink.shape
    bounds = [np.zeros(h, np.intp), *paths, np.full(h, w, np.intp)]
    columns = np.arange(w)
    return [
        (ink > 0) & (columns >= lo[:, None]) & (columns < hi[:, None])
        for lo, hi in itertools.pairwise(bounds)
    ]


def inked(plane: np.ndarray, above: float = 0.0) -> np.ndarray:
    """The plane cut to the box around its values over `above` (empty when there are none)."""
    rows = np.flatnonzero((plane > above).any(axis=1))
    cols = np.flatnonzero((plane > above).any(axis=0))
    if not len(rows):
        return plane[:0, :0]
    return plane[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def cut_sets(profile: np.ndarray, k: int) -> list[list[int]]:
    """Columns to cut a mark into k digits. For two: evenly spaced through its middle part
    and its two thinnest columns there (the thinnest column is often the middle of a 0, not
    where two digits touch, so the model chooses among them all); for three: the thinnest
    column near each third."""
    w = len(profile)
    if k == 2:
        lo, hi = round(0.3 * w), round(0.7 * w)
        picked = [round(f * w) for f in np.linspace(0.32, 0.68, 5)]
        for x in (lo + np.argsort(profile[lo:hi], kind="stable")).tolist():
            if all(abs(x - p) >= max(2, 0.04 * w) for p in picked):
                picked.append(x)
            if len(picked) == 7:
                break
        return [[x] for x in sorted(picked)]
    cuts = []
    for low, high in ((0.2, 0.45), (0.55, 0.8)):
        a, b = round(low * w), max(round(high * w), round(low * w) + 1)
        cuts.append(a + int(np.argmin(profile[a:b])))
    return [cuts]


PIECE_INK = 0.1  # of a 28x28's full ink: fainter pixels are its anti-aliased rim


def cuts_of(image: np.ndarray) -> list[tuple[list[np.ndarray], list[float]]]:
    """A mark's own 28x28 cut in two (or three, when it is wide enough) the ways `alternatives`
    cuts a page's mark, each piece normalised again: [(pieces, their ink's width / height)].

    For a mark the model reads as not one digit but too narrow for preprocessing to have
    offered it cut (digits overlapping are as narrow as one): its 28x28 holds the mark at a
    digit's size, so the pieces lose little."""
    mark = inked(image, PIECE_INK)
    h, w = mark.shape
    if np.count_nonzero((mark > PIECE_INK).any(axis=0)) < 4:
        return []
    found = []
    for k in cut_ways(w, h):
        for regions in cut_into(mark, k):
            pieces, shapes = [], []
            for region in regions:
                part = np.where(region, mark, 0)
                piece = inked(part, PIECE_INK)
                if part.sum() < 0.1 * mark.sum() / k or not piece.size:
                    break
                pieces.append(boxed(piece))
                shapes.append(piece.shape[1] / piece.shape[0])
            if len(pieces) == k:
                found.append((pieces, shapes))
                rows = np.flatnonzero((regions[-1] & (mark > PIECE_INK)).any(axis=1))
                if k == 2 and trailing_stroke((rows[0], 0, rows[-1] + 1, 0), (0, 0, h, w), h):
                    found.append((pieces[:-1], shapes[:-1]))  # the digit without its filler
    return found


def aspect(box: Box, typical: float = 0.0) -> float:
    """Width over height of a box (y0, x0, y1, x1), or over the `typical` digit height where
    that is taller: a flat 2 in a number is not wide for its line, two digits touching are."""
    y0, x0, y1, x1 = box
    return (x1 - x0) / max(y1 - y0, typical, 1)


def marks_of(
    images: np.ndarray, slots: Sequence[tuple[tuple[int, ...], ...]], count: int
) -> np.ndarray | None:
    """One 28x28 of `images` per digit when the page holds `count` marks (a number's digits,
    each its own mark, read whole), in reading order; None otherwise: then which ink is which
    digit is not known, and a person's reading of the page cannot label it."""
    if count < 1 or len(slots) != count:
        return None
    return images[[slot[0][0] for slot in slots]]


def chosen(labels: np.ndarray, n: int, ids: np.ndarray) -> np.ndarray:
    """The mask of the components `ids` (a lookup table: np.isin sorts)."""
    table = np.zeros(n + 1, bool)
    table[ids] = True
    return table[labels]


def keep_labels(labels: np.ndarray, n: int, keep: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 1..k keeping only the ids in `keep` (0 = background is dropped)."""
    kept = np.zeros(n + 1, bool)
    kept[keep] = True
    kept[0] = False
    renumber = (np.cumsum(kept) * kept).astype(labels.dtype)
    return renumber[labels], int(kept.sum())


def is_speck(piece: np.ndarray, min_size: float) -> bool:
    rows, cols = np.flatnonzero(piece.any(axis=1)), np.flatnonzero(piece.any(axis=0))
    return max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 < min_size


def smoothed(ink: np.ndarray) -> np.ndarray:
    """A [1 2 1] / 4 blur each way: noise drops to 40 %, a 1 px line keeps half its strength."""
    return blur121(blur121(ink.astype(np.float32), 0), 1)


def blur121(a: np.ndarray, axis: int) -> np.ndarray:
    """[1 2 1] / 4 along one axis, edges repeated (in place on a copy: no padding)."""
    a = a if axis == 0 else a.T
    out = a * np.float32(0.5)
    quarter = a * np.float32(0.25)
    out[1:] += quarter[:-1]
    out[:-1] += quarter[1:]
    out[0] += quarter[0]
    out[-1] += quarter[-1]
    return out if axis == 0 else out.T


def noise_floor(ink: np.ndarray) -> float:
    """Far above the paper's own noise, measured where the page is quietest: its lower quartile
    is the paper's level, and the lower quartile of the differences between neighbouring pixels
    its noise. Quartiles, not medians: in a digit cropped tight, ink and stroke edges can be
    half the pixels, and would pass for paper and noise."""
    steps = np.abs(np.diff(ink[::2], axis=1))
    noise = 2.2 * quantile(steps, 0.25)  # |difference| of two N(0, s^2): lower quartile 0.45 s
    return quantile(ink[::2, ::2], 0.25) + NOISE_SIGMAS * noise


def quantile(a: np.ndarray, q: float, interpolate: bool = False) -> float:
    """The q-quantile of an array by one partition (np.quantile sorts, twenty times slower on a
    digit's few thousand pixels): the nearest rank below, or with `interpolate` the value
    np.quantile gives (linear interpolation between the two ranks around it)."""
    values = a.ravel()
    if values.size == 0:
        return math.nan
    index = q * (values.size - 1)
    lo = math.floor(index)
    if not interpolate:
        return float(np.partition(values, lo)[lo])
    hi = min(lo + 1, values.size - 1)
    part = np.partition(values, [lo, hi] if hi > lo else lo)
    below, above, t = part[lo], part[hi], index - lo
    step = above - below
    return float(above - step * (1 - t) if t >= 0.5 else below + step * t)  # as numpy's lerp


# --- normalising -------------------------------------------------------------------------


def normalise(ink: np.ndarray, digit: Digit) -> tuple[np.ndarray, np.ndarray]:
    """(28x28 float32, the crop it was made from): MNIST's size and position normalisation."""
    y0, x0, y1, x1 = digit.box
    # The anti-aliased rim belongs to the digit (found within a pixel's margin of the box).
    ay, ax = max(0, y0 - 1), max(0, x0 - 1)
    around = (slice(ay, y1 + 1), slice(ax, x1 + 1))
    near = neighbourhood(digit.mask[around], np.logical_or)
    crop = np.where(near, ink[around], 0)[y0 - ay : y1 - ay, x0 - ax : x1 - ax]
    core = ink[digit.mask]
    level = max(quantile(core, 0.9, interpolate=True), digit.threshold, 1e-3)
    crop = np.clip(crop / level, 0, 1).astype(np.float32)

    # No stroke-width normalisation: thickening fine pens and thinning markers measured no
    # better on scans (the model was trained on thicker, thinner and fainter strokes).
    return boxed(crop), crop


def boxed(crop: np.ndarray) -> np.ndarray:
    """Ink cropped to its box (0..1) -> the model's 28x28: fitted into 20x20 keeping its aspect
    ratio, placed by its centre of mass."""
    h, w = crop.shape
    scale = DIGIT_BOX / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return centre(np.clip(resized(crop, size), 0, 1))


def centre(small: np.ndarray) -> np.ndarray:
    """Place a <=20x20 digit in 28x28 with its centre of mass at the centre (as MNIST did)."""
    out = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    h, w = small.shape
    mass = float(small.sum())
    if mass <= 0:
        cy, cx = (h - 1) / 2, (w - 1) / 2
    else:
        cy = float((small.sum(axis=1) * np.arange(h)).sum()) / mass
        cx = float((small.sum(axis=0) * np.arange(w)).sum()) / mass
    half = IMAGE_SIZE // 2
    oy = min(max(round(half - cy), 0), IMAGE_SIZE - h)
    ox = min(max(round(half - cx), 0), IMAGE_SIZE - w)
    out[oy : oy + h, ox : ox + w] = small
    return out


# --- the pipeline ------------------------------------------------------------------------


# --- the sheet in a photo -----------------------------------------------------------------

# A phone photo shows the sheet lying on a table: a bright quadrilateral on a darker surround
# that reaches the frame's edge. Read as it is, the table is the "paper" of the page's polarity
# (dark enough, it makes the sheet itself read as ink) and the sheet's edges become strokes.
# So the sheet is found first and the photo is read as a scan of the sheet alone. What is
# taken for a table must be all of these, or the page is read as before:
SHEET_CLOSING = 0.03  # of the page's longer side: ink narrower than this is closed over
TABLE_CONTRAST = 0.85  # the table's median brightness at most this times the sheet's ...
DARK_TABLE = 0.6  # ... and unless this dark, the table frames the sheet: it lies along at
FRAMING = 0.75  # least this share of the frame's edge (a grey band along a form's top does not)
TABLE_DEPTH = 0.12  # of the frame's side: the table reaches this deep somewhere (a scanner's
# dark frame is shallower, and `clear_border`'s)
SHEET_EDGE = 5.0  # the sheet's edge is sharp: this many times steeper than the light beside it,
EDGE_SHARE = 0.5  # and a step: across it at least this share of the step further off (a
LINE_EDGE = 1.5  # posterised vignette steps in many small steps), at most this times it (a line)
SHEET_CONVEX = 0.97  # the sheet is convex (one sheet, not split by a bold stroke): its rows and
# columns are this full of it ...
SHEET_BOX = 0.5  # ... it fills this much of its box (a quadrilateral turned < 45 degrees) ...
SHEET_SIDE = 0.2  # ... whose shorter side is at least this share of the frame's (no stroke)
SHEET_PAPER = 0.85  # the sheet is paper: this much of it is bright (not bright ink closed up)
TABLE_INK = 0.3  # of the step: a mark this much darker (lighter) than the table around it is
# writing, and a table has less than this share of such marks (paper in a shadow, or a page of
# light ink, has more):
EMPTY_TABLE = 0.001
MIN_SHEET = 0.05  # of the frame's area, at least, and the table ...
MIN_TABLE = 0.03  # ... at least this much of it, along at least this much of the frame's edge:
TABLE_RING = 0.1
SHEET_MARGIN = 2  # overview pixels of the sheet's rim taken as table: its edge is blurred
FAR = (8, 16)  # overview pixels from the edge: the step across it is measured here in full,
MIN_BAND = 10  # on each side of the sheet where each band has this many pixels


@dataclass
class Sheet:
    """Where the sheet lies in a photo's overview: its box (y0, x0, y1, x1) and, in that
    box, which pixels are table and the paper to paint there (0..1, the page's channels)."""

    box: Box
    table: np.ndarray
    paper: np.ndarray


def otsu(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of values in 0..1."""
    hist = np.bincount(
        np.clip((values.ravel() * bins).astype(np.int32), 0, bins - 1), minlength=bins
    )
    p = hist / max(1, hist.sum())
    omega, mu = np.cumsum(p), np.cumsum(p * (np.arange(bins) + 0.5) / bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = np.nan_to_num((mu[-1] * omega - mu) ** 2 / (omega * (1 - omega)))[:-1]
    return (int(np.argmax(between)) + 1) / bins


def row_fill(mask: np.ndarray) -> float:
    """How full the rows of `mask` are between their first and last pixel (1: every row is
    one run, as in a convex shape)."""
    rows = mask.any(axis=1)
    first = np.argmax(mask[rows], axis=1)
    last = mask.shape[1] - np.argmax(mask[rows][:, ::-1], axis=1)
    return float(mask.sum() / max(1, (last - first).sum()))


def edge_steps(g: np.ndarray, sheet: np.ndarray, table: np.ndarray) -> list[tuple[float, float]]:
    """On each side of the sheet (above, right of, below and left of its middle, as a
    scanner's sharp frame may run beside a shadow's soft edge): the step in brightness across
    the edge (within 2 pixels of it) against the steepest slope of the light beside it on
    either side (over 2 pixels, 3-7 pixels off the edge), and against the step measured FAR
    from it. A sheet's edge is far steeper than the light on it and on the table; the soft
    edge of a shadow or of uneven light is a slope like the light around it; a line along
    the edge makes the step larger there than further off."""

    def band(a: np.ndarray, b: np.ndarray, near: int, far: int) -> np.ndarray:
        """The pixels of `a` more than `near` and at most `far` pixels from `b`."""
        within = [window(b.astype(np.float32), 2 * r + 1, np.maximum) > 0 for r in (near, far)]
        return a & within[1] & ~within[0]

    h, w = g.shape
    ys, xs = where(sheet)
    dy = (np.arange(h) - ys.mean())[:, None] / h
    dx = (np.arange(w) - xs.mean())[None, :] / w
    side = np.argmax(np.stack(np.broadcast_arrays(-dy, dx, dy, -dx)), axis=0)
    bands = [
        band(a, b, *reach)
        for reach in ((0, 2), (3, 5), (5, 7), FAR)
        for a, b in ((sheet, table), (table, sheet))
    ]
    steps = []
    for s in range(4):
        level = [g[b & (side == s)] for b in bands]
        if min(len(v) for v in level) < MIN_BAND:
            continue
        m = [float(v.mean()) for v in level]
        slope = max(abs(m[2] - m[4]), abs(m[3] - m[5]), 1e-6)
        steps.append(((m[0] - m[1]) / slope, (m[0] - m[1]) / max(m[6] - m[7], 1e-6)))
    return steps


def is_sheet(g: np.ndarray, sheet: np.ndarray, t: float) -> bool:
    """Whether `sheet` has a sheet's size and shape and is paper (see the rules above)."""
    h, w = g.shape
    ys, xs = where(sheet)
    box_h, box_w = ys.max() + 1 - ys.min(), xs.max() + 1 - xs.min()
    return bool(
        MIN_SHEET <= sheet.mean() <= 1 - MIN_TABLE
        and min(box_h / h, box_w / w) >= SHEET_SIDE
        and len(ys) >= SHEET_BOX * box_h * box_w
        and min(row_fill(sheet), row_fill(sheet.T)) >= SHEET_CONVEX
        and (g[sheet] > t).mean() >= SHEET_PAPER
    )


def may_be_table(g: np.ndarray, dark: np.ndarray) -> bool:
    """Whether the `dark` part of a page (what is not paper once the ink is closed over) may
    hold a table: large enough, along enough of the frame's edge, deep and dark enough."""
    h, w = g.shape
    ring = np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]])
    if not MIN_TABLE <= dark.mean() <= 1 - MIN_SHEET or ring.mean() < TABLE_RING:
        return False
    ys, xs = where(dark)
    depth = np.minimum(np.minimum(ys, h - 1 - ys) / h, np.minimum(xs, w - 1 - xs) / w)
    return bool(
        depth.max() >= TABLE_DEPTH and np.median(g[dark]) <= TABLE_CONTRAST * np.median(g[~dark])
    )


def frames_sheet(g: np.ndarray, table: np.ndarray, sheet: np.ndarray) -> bool:
    """Whether `table` lies around `sheet` as a table does: darker, deep, framing it unless dark."""
    h, w = g.shape
    paper_level, table_level = float(np.median(g[sheet])), float(np.median(g[table]))
    ys, xs = where(table)
    depth = np.minimum(np.minimum(ys, h - 1 - ys) / h, np.minimum(xs, w - 1 - xs) / w).max()
    along = np.concatenate([table[0], table[-1], table[:, 0], table[:, -1]]).mean()
    return not (
        table_level > TABLE_CONTRAST * paper_level
        or (table_level > DARK_TABLE * paper_level and along < FRAMING)
        or depth < TABLE_DEPTH
    )


def bare_table(s: Segments) -> bool:
    """Whether the sheet's edges are a sheet's and the table is bare while the sheet is
    written on (see the rules above)."""
    g, sheet, table, k = s.g, ~s.table, s.table, s.k
    h, w = g.shape
    steps = edge_steps(g, sheet, table)
    if not steps or not all(
        slope >= SHEET_EDGE and EDGE_SHARE <= far <= LINE_EDGE for slope, far in steps
    ):
        return False
    step = float(np.median(g[sheet]) - np.median(g[table]))
    # The table away from the sheet and from the frame's edge, where the closing is sure.
    inside = window(sheet.astype(np.float32), 2 * k + 1, np.maximum) == 0
    inside[: k // 2] = inside[h - k // 2 :] = False
    inside[:, : k // 2] = inside[:, w - k // 2 :] = False
    opened = window(window(g, k, np.minimum), k, np.maximum)
    dark = s.closed - g > TABLE_INK * step
    writing = dark | (g - opened > TABLE_INK * step)  # dark or light
    bare = int(np.count_nonzero(writing & inside)) <= EMPTY_TABLE * max(1, int(inside.sum()))
    return bare and bool((dark & sheet).any())  # and what is read is written on the sheet


@dataclass
class Segments:
    """A page split into the table (what is darker than paper, once the ink is closed over,
    and reaches the frame's edge) and the sheet (the rest, the writing on it included)."""

    g: np.ndarray
    closed: np.ndarray  # g with the ink closed over
    t: float  # the threshold between table and paper
    k: int  # the closing's width
    table: np.ndarray


def segment(g: np.ndarray) -> Segments | None:
    """The page `g` split as a photo of a sheet would be, or None where the parts have not
    the size, shape and brightness of a sheet and a table (most pages: paper all over)."""
    h, w = g.shape
    ring = np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])
    if np.mean(ring < TABLE_CONTRAST * np.quantile(g, 0.9)) < TABLE_RING:
        return None  # the common case, paper all round the frame: no need to look further
    k = max(3, round(SHEET_CLOSING * max(h, w))) | 1
    closed = window(window(g, k, np.maximum), k, np.minimum)  # no ink ...
    smooth = window(window(closed, k, np.minimum), k, np.maximum)  # ... nor glints on the table
    t = otsu(smooth)
    bright = smooth > t
    if not may_be_table(g, ~bright):
        return None  # cheaply, before the components are labelled
    off, _ = label(~bright)
    edge = np.unique(np.concatenate([off[[0, -1]].ravel(), off[:, [0, -1]].ravel()]))
    table = np.isin(off, edge[edge > 0])  # the writing, apart from the frame's edge, is sheet
    if not (is_sheet(g, ~table, t) and frames_sheet(g, table, ~table)):
        return None
    return Segments(g, closed, t, k, table)


def find_sheet(page: np.ndarray, thumbnail: np.ndarray | None = None) -> Sheet | None:
    """The sheet of paper in the overview `page` of a photo, or None for a page that is no
    photo of a sheet on a table (see the rules above: each guards against a page being cut
    away, such as a shadow's soft edge, a vignette, a bold digit against the frame, a scanner's
    frame or a light-ink page, whose paper is dark). The page's `thumbnail` (see
    `polarity_thumbnail`), where given, turns most pages away at a tenth of the cost."""
    if thumbnail is not None and segment(grey(thumbnail)) is None:
        return None
    s = segment(grey(page))
    if s is None or not bare_table(s):
        return None
    g, t, k, table = s.g, s.t, s.k, s.table
    sheet = ~table
    ys, xs = where(sheet)
    box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    # The closing also closed over any strip of table narrower than itself along the frame's
    # edge: dark pieces there that touch the table or run along the edge are table too (not
    # the writing near the frame's edge: short).
    near = table.copy()
    near[[0, -1]] = near[:, [0, -1]] = True
    dark, n = label((g <= t) & (window(near.astype(np.float32), k, np.maximum) > 0))
    c = components(dark, n)
    touching = np.unique(dark[neighbourhood(table, np.logical_or)])
    strips = np.flatnonzero(np.maximum(c.y1 - c.y0, c.x1 - c.x0) >= 4 * k) + 1
    wide = table | np.isin(dark, np.union1d(touching[touching > 0], strips))
    for _ in range(SHEET_MARGIN):
        wide = neighbourhood(wide, np.logical_or)
    y0, x0, y1, x1 = box
    planes = page[y0:y1, x0:x1].reshape(y1 - y0, x1 - x0, -1)
    paper = np.stack([window(window(p, k, np.maximum), k, np.minimum) for p in planes.T], -1)
    return Sheet(box, wide[y0:y1, x0:x1], grown(paper.transpose(1, 0, 2), ~wide[y0:y1, x0:x1]))


def grown(values: np.ndarray, known: np.ndarray) -> np.ndarray:
    """`values` (h, w, channels) where `known`, carried outwards into the rest: each unknown
    pixel takes the mean of its known neighbours, ring by ring, so the paper painted over the
    table continues the sheet's own light."""
    values = np.where(known[..., None], values, 0).astype(np.float32)
    known = known.copy()
    while not known.all():
        weight = neighbourhood(known.astype(np.float32), np.add)
        ring = ~known & (weight > 0)
        if not ring.any():  # nothing known at all
            break
        sums = np.stack([neighbourhood(v, np.add) for v in values.transpose(2, 0, 1)], -1)
        values[ring] = sums[ring] / weight[ring][:, None]
        known |= ring
    return values


def on_sheet(img: Image.Image, sheet: Sheet, scale: float) -> Image.Image:
    """The photo `img` cut to the sheet found in its overview at `scale`, the table left in
    the sheet's box painted the colour of its paper."""
    y0, x0, y1, x1 = sheet.box
    box = (
        max(0, int(x0 / scale)),
        max(0, int(y0 / scale)),
        min(img.width, math.ceil(x1 / scale)),
        min(img.height, math.ceil(y1 / scale)),
    )
    cut = np.array(img.crop(box))
    size = (cut.shape[0], cut.shape[1])
    table = resized(sheet.table.astype(np.float32), size) > 0.5
    paper = [resized(p, size) for p in sheet.paper.transpose(2, 0, 1)]
    fill = np.clip(np.round(255 * np.stack(paper, -1)), 0, 255).astype(np.uint8)
    cut[table] = fill[table] if cut.ndim == 3 else fill[table][:, 0]
    return Image.fromarray(cut)


def prepare(pixels: np.ndarray | Image.Image, debug: bool = False, spare: bool = True) -> Prepared:
    """A page (as `decode` yields it, or any numeric array) -> the model's 28x28 images of its
    digits in reading order, or blank; for a page whose ink may be light or dark (see
    UNCLEAR_INK), also the page read the other way round, in `other`. `spare=False` takes
    every closer look, also those `reads_as_closer` spares (to check that sparing them changes
    no reading).

    Raises DecodeError only for arrays that are not images at all (wrong rank or dtype).
    """
    img = as_page(pixels)
    crop = max(img.size) < CROP_PIXELS
    if crop:
        img = with_margin(img)
    w, h = img.size
    if min(h, w) < 3:
        return Prepared(NO_IMAGES, "image too small to hold a digit")
    page = page_pixels(img, overview_size(h, w))
    thumbnail = polarity_thumbnail(page)
    sheet = None if crop else find_sheet(page, thumbnail)
    if sheet is not None:
        img = on_sheet(img, sheet, page.shape[0] / h)
        w, h = img.size
        page = page_pixels(img, overview_size(h, w))
        thumbnail = polarity_thumbnail(page)
    ratio = ink_ratio(thumbnail)
    prepared = read_page(img, page, ratio < LIGHT_INK, debug, spare, crop)
    if LIGHT_INK <= ratio < UNCLEAR_INK:
        prepared.other = read_page(img, page, True, debug, spare, crop)
    return prepared


def polarity_thumbnail(page: np.ndarray) -> np.ndarray:
    """The page's overview in grey, shrunk to about POLARITY_PIXELS: polarity is a global
    question."""
    oh, ow = page.shape[:2]
    return shrunk(grey(page), max(1, round(math.sqrt(oh * ow / POLARITY_PIXELS))))


def read_page(
    img: Image.Image, page: np.ndarray, light: bool, debug: bool, spare: bool, is_crop: bool
) -> Prepared:
    """`prepare` of a page whose ink is light (on dark paper) or dark, or of a crop of one
    digit (see CROP_PIXELS), enlarged with a margin; `page`: its overview."""
    look = overview(img, page, light)
    if not isinstance(look.found, Reading) and look.scale < 0.5:
        # A tiny digit may have faded into the paper: a finer overview.
        w, h = img.size
        look = overview(img, page_pixels(img, overview_size(h, w, 4 * OVERVIEW_PIXELS)), light)
    ink, found = look.ink, look.found
    if isinstance(found, Reading):
        y0, x0, y1, x1 = found.box
        size = digit_size(found)
        wanted = max(look.scale, min(1.0, DIGIT_PIXELS / (size / look.scale)))
        # A small digit gets a closer look at finer resolution; one far smaller than the page
        # a second look anyway: a form box around it is only a long line next to the digit.
        extent = max(y1 - y0, x1 - x0)
        small = size < MIN_OVERVIEW_DIGIT and wanted > 1.3 * look.scale
        if small or extent < 0.5 * max(ink.shape):
            region = closer_region(img.size, found.box, look.scale)
            if not (spare and wanted == look.scale and reads_as_closer(look, found, region)):
                closer = look_closer(img, look.light, look.paper, region, look.scale, wanted)
                if isinstance(closer[1], Reading):
                    ink, found = closer
                elif small:
                    # What the overview took for a small digit is, seen closer, no digit: a
                    # piece of a grid or a frame, or a speck. Reading it would file a guess.
                    ink, found = closer[0], f"no digit on a closer look ({closer[1]})"
    if is_crop and isinstance(found, Reading):
        found = found.as_one_digit()
    steps = {"page": look.page, "ink": ink} if debug else {}
    if not isinstance(found, Reading):
        return Prepared(NO_IMAGES, found, steps=steps)
    images: list[np.ndarray] = []
    shapes: list[float] = []
    slots: list[tuple[tuple[int, ...], ...]] = []
    crops = []
    for alternatives in found.positions:
        slot = []
        for pieces in alternatives:
            indices = []
            for digit in pieces:
                image, crop = normalise(ink, digit)
                indices.append(len(images))
                images.append(image)
                shapes.append(aspect(digit.box, found.typical))
                crops.append(crop)
            slot.append(tuple(indices))
        slots.append(tuple(slot))
    if not images:  # every mark's clear ink was cut away: nothing left to read
        return Prepared(NO_IMAGES, "only specks, no digit", steps=steps)
    prepared = Prepared(
        np.stack(images),
        "",
        slots,
        found.lines,
        shapes,
        found.slashes,
        steps,
        crop=is_crop,
        # A column seen whole in the overview is still one where the closer look at its
        # digit no longer sees the rest of it.
        column=found.column or (isinstance(look.found, Reading) and look.found.column),
    )
    if debug:
        mask = np.zeros(ink.shape, bool)
        for digit in found.digits:
            mask |= digit.mask
        steps.update(mask=mask.astype(np.float32), crop=crops[0])
        prepared.marks = [(a[0][0].box, True) for a in found.positions]
        prepared.marks += [(box, False) for box in found.dropped]
    return prepared


NO_IMAGES = np.zeros((0, IMAGE_SIZE, IMAGE_SIZE), np.float32)


def digit_size(found: Reading) -> int:
    """The size a digit is read at: the longer side of a lone digit (as always), the height of
    the tallest of several (a wide mark may be digits touching)."""
    boxes = [a[0][0].box for a in found.positions]
    if len(boxes) == 1:
        y0, x0, y1, x1 = boxes[0]
        return max(y1 - y0, x1 - x0)
    return max(y1 - y0 for y0, _, y1, _ in boxes)


def with_margin(img: Image.Image) -> Image.Image:
    """A small image is a crop of one digit (a dataset's, a form field's), often cut so tight
    that the digit touches the edges: no paper to measure, and strokes taken for a frame. Give
    it a margin of its own paper (the typical colour along its edges) and, enlarged, enough
    pixels for smoothing and line finding to see strokes as on a scan."""
    w, h = img.size
    a = np.asarray(img)
    edges = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    paper = np.median(edges, axis=0).astype(np.uint8)
    margin = max(2, round(0.25 * max(w, h)))
    page = np.empty((h + 2 * margin, w + 2 * margin, *a.shape[2:]), np.uint8)
    page[...] = paper
    page[margin : margin + h, margin : margin + w] = a
    framed = Image.fromarray(page)
    factor = DIGIT_PIXELS / max(w, h)
    if factor <= 1:
        return framed
    size = (round(page.shape[1] * factor), round(page.shape[0] * factor))
    return framed.resize(size, Image.Resampling.BILINEAR)


@dataclass
class Look:
    """The page seen whole at reduced resolution, and what was found there."""

    page: np.ndarray
    light: bool
    paper: np.ndarray
    ink: np.ndarray
    scale: float
    found: Reading | str


def overview(img: Image.Image, page: np.ndarray, light: bool) -> Look:
    """The page `img` seen whole in `page` (its pixels at reduced size), ink `light` or dark."""
    w, h = img.size
    oh = page.shape[0]
    plane = ink_plane(page, light)
    paper = background(plane)
    ink = ink_strength(plane, paper)
    scale = oh / h
    return Look(page, light, paper, ink, scale, find_digits(ink, min_digit_size(max(h, w), scale)))


def min_digit_size(page_side: int, scale: float) -> float:
    """The smallest digit worth reading, in pixels at `scale` of a page `page_side` px long."""
    return max(MIN_DIGIT_PX, MIN_DIGIT_FRACTION * page_side) * scale


def closer_region(size: tuple[int, int], box: Box, scale: float) -> Box:
    """The part of a page of `size` (w, h) a closer look at the digits found in `box` (y0, x0,
    y1, x1 at `scale`) reads, in the page's pixels: their box and a margin of 0.6 of its
    longer side, where a printed label beside a number is seen whole."""
    w, h = size
    y0, x0, y1, x1 = (v / scale for v in box)
    margin = 0.6 * max(y1 - y0, x1 - x0)
    iy0, ix0 = max(0, int(y0 - margin)), max(0, int(x0 - margin))
    return iy0, ix0, min(h, math.ceil(y1 + margin)), min(w, math.ceil(x1 + margin))


FAINT_INK = 1 / 16  # fainter ink never counts towards a threshold (see `threshold`)


def reads_as_closer(look: Look, found: Reading, region: Box) -> bool:
    """Whether a closer look at `region` at the overview's own scale would find what the
    overview found, so it can be spared (it is most of the work on a small clean page).

    Only on a plain page: one piece of ink, no frame, line or speck (`Reading.plain`), no
    wider than tall, no ink outside the region (so the threshold there is the overview's), and
    no line inside it (a form box around the digit, too short for a line of the page, is long
    in the region).
    Anything else takes the closer look.
    """
    if not found.plain or len(found.digits) != 1:
        return False
    y0, x0, y1, x1 = found.digits[0].box
    if x1 - x0 > y1 - y0:  # nearly wide enough for touching digits: cuts hang on its exact box
        return False
    s = look.scale
    y0, x0 = math.floor(region[0] * s), math.floor(region[1] * s)
    y1, x1 = math.ceil(region[2] * s), math.ceil(region[3] * s)
    faint = look.ink >= FAINT_INK
    if np.count_nonzero(faint) != np.count_nonzero(faint[y0:y1, x0:x1]):
        return False
    mask = found.digits[0].mask[y0:y1, x0:x1]
    return not line_candidates(mask) and not line_candidates(mask.T)


def look_closer(
    img: Image.Image,
    light: bool,
    paper: np.ndarray,
    region: Box,
    scale: float,
    wanted: float,
) -> tuple[np.ndarray, Reading | str]:
    """Read `region` (see `closer_region`) around the digits found small in the overview
    again at `wanted` scale: its ink and what was found there (or why nothing was).

    The region is read at no more than CLOSER_PIXELS: marks scattered over a page would
    otherwise be read at full resolution.
    The paper estimate of the overview is reused (it is smooth); lines and specks are cleaned
    again at the finer resolution.
    """
    w, h = img.size
    iy0, ix0, iy1, ix1 = region
    wanted = min(wanted, max(scale, math.sqrt(CLOSER_PIXELS / ((iy1 - iy0) * (ix1 - ix0)))))
    size = (max(3, round((iy1 - iy0) * wanted)), max(3, round((ix1 - ix0) * wanted)))
    plane = ink_plane(page_pixels(img, size, (ix0, iy0, ix1, iy1)), light)
    ph, pw = paper.shape
    paper_box = (
        min(ix0 * scale, pw),
        min(iy0 * scale, ph),
        min(ix1 * scale, pw),
        min(iy1 * scale, ph),
    )
    ink = ink_strength(plane, resized(paper, size, box=paper_box))
    return ink, find_digits(ink, min_digit_size(max(h, w), wanted))


DIGIT_COLOUR, DROPPED_COLOUR, SEPARATOR = (0, 160, 0), (220, 0, 0), (255, 0, 255)


def strip(
    steps: dict[str, np.ndarray],
    caption: str = "",
    marks: Sequence[tuple[Box, bool]] = (),
    digits: Sequence[tuple[np.ndarray, str]] = (),
    height: int = 112,
) -> np.ndarray:
    """The debug picture of one page: uint8 RGB.

    The result on top; below, each step at a common height with its name: the page, the ink
    and the mask (every mark boxed: digits green and numbered in reading order, what was
    dropped as a separator or noise red), the crop, and each digit's 28x28 with what was read.
    """
    tiles = []
    for name, image in steps.items():
        tile = Image.fromarray(tile_pixels(image, height))
        if name in ("ink", "mask") and marks:
            draw_marks(tile, marks, tile.height / image.shape[0])
        tiles.append((name, tile))
    for image, label in digits:
        tiles.append((label, Image.fromarray(tile_pixels(image, height))))
    font = ImageFont.load_default()
    line = 14
    widths = [max(t.width, 8 * len(name)) for name, t in tiles]
    width = max(sum(widths) + 4 * max(len(tiles) - 1, 0), 8 * len(caption) + 8, 1)
    out = Image.new("RGB", (width, height + 2 * line + 4), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    draw.text((2, 1), caption, fill=(0, 0, 0), font=font)
    x = 0
    for (name, tile), w in zip(tiles, widths, strict=True):
        draw.text((x + 1, line + 2), name, fill=(0, 0, 120), font=font)
        out.paste(tile, (x, 2 * line + 4))
        if x:
            draw.rectangle([x - 4, line + 2, x - 1, out.height], fill=SEPARATOR)
        x += w + 4
    return np.asarray(out)


def tile_pixels(image: np.ndarray, height: int) -> np.ndarray:
    a = np.clip(np.nan_to_num(image), 0, 1)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    h, w = a.shape[:2]
    width = max(1, round(w * height / h))
    tile = Image.fromarray((a * 255).astype(np.uint8)).resize(
        (width, height), Image.Resampling.NEAREST if h < height else Image.Resampling.BOX
    )
    return np.asarray(tile)


def draw_marks(tile: Image.Image, marks: Sequence[tuple[Box, bool]], scale: float) -> None:
    draw = ImageDraw.Draw(tile)
    number = 0
    for (y0, x0, y1, x1), is_digit in marks:
        colour = DIGIT_COLOUR if is_digit else DROPPED_COLOUR
        box = [
            x0 * scale,
            y0 * scale,
            max(x0 * scale, x1 * scale - 1),
            max(y0 * scale, y1 * scale - 1),
        ]
        draw.rectangle(box, outline=colour)
        if is_digit:
            number += 1
            draw.text((box[0] + 1, box[1] + 1), str(number), fill=colour)
