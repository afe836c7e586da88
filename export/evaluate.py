"""Measure an ONNX model the way the daemon runs it: through onnxruntime, and for scans and
USPS through the daemon's own decoding and preprocessing, so the figures are what users get.

Torch-free on purpose (the `Classifier`, the IDX and USPS readers only), so a deployed daemon can
check the model it ships. The PNGs are drawn with Pillow: no plotting library to install.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digit_inbox.daemon import preprocess, recognize
from digit_inbox.daemon.classifier import Classifier
from digit_inbox.daemon.contract import NUM_DIGITS
from digit_inbox.daemon.errors import DataError, ExitCode
from digit_inbox.export import calibration, mnist, usps

log = logging.getLogger(__name__)

BATCH = 500
MAX_ERROR_TILES = 100


@dataclass(frozen=True)
class Evaluation:
    labels: np.ndarray  # uint8 [N], the truth
    probs: np.ndarray  # float32 [N, 10]
    seconds: float  # inference only, all batches

    @property
    def predictions(self) -> np.ndarray:
        return np.asarray(self.probs.argmax(1))

    @property
    def confidences(self) -> np.ndarray:
        return np.asarray(self.probs.max(1))

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean())

    @property
    def images_per_second(self) -> float:
        return len(self.labels) / self.seconds if self.seconds > 0 else math.inf


def run(classifier: Classifier, images: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Classify uint8 [N, 28, 28] MNIST images (already in contract layout) in batches."""
    x = images.astype(np.float32)[:, None] / 255.0
    started = time.perf_counter()
    probs = np.concatenate(
        [classifier.predict(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]
        or [np.zeros((0, NUM_DIGITS), np.float32)]
    )
    return Evaluation(labels, probs, time.perf_counter() - started)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Counts [10, 10]: rows are the true digit, columns the predicted one."""
    matrix = np.zeros((NUM_DIGITS, NUM_DIGITS), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return matrix


def per_digit_accuracy(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(1)
    return np.divide(matrix.diagonal(), totals, out=np.zeros(len(totals)), where=totals > 0)


def format_confusion(matrix: np.ndarray) -> str:
    width = max(5, len(str(int(matrix.max()))) + 1)
    head = "true\\pred" + "".join(f"{d:>{width}}" for d in range(NUM_DIGITS))
    rows = [f"{t:>9}" + "".join(f"{n:>{width}}" for n in matrix[t]) for t in range(NUM_DIGITS)]
    return "\n".join([head, *rows])


def format_report(classifier: Classifier, result: Evaluation) -> str:
    matrix = confusion_matrix(result.labels, result.predictions)
    total = len(result.labels)
    correct = int(matrix.trace())
    per_digit = "  ".join(f"{d}: {a:.2%}" for d, a in enumerate(per_digit_accuracy(matrix)))
    return "\n".join(
        [
            f"model     {classifier.model_id}",
            f"path      {classifier.path}",
            f"accuracy  {result.accuracy:.2%} ({correct}/{total} MNIST test images, "
            f"{total - correct} errors, through onnxruntime)",
            f"per digit {per_digit}",
            f"speed     {result.images_per_second:,.0f} images/s (batches of {BATCH})",
            "",
            "confusion matrix (rows: true digit, columns: predicted digit)",
            format_confusion(matrix),
        ]
    )


# --- pictures ---------------------------------------------------------------------------------


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _mix(a: tuple[int, int, int], b: tuple[int, int, int], t: float) -> tuple[int, int, int]:
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return (r, g, bl)


WHITE, INK = (255, 255, 255), (30, 30, 30)
BLUE, RED = (33, 102, 172), (202, 0, 32)


def draw_confusion(matrix: np.ndarray, title: str = "") -> Image.Image:
    """Heat-map with counts: correct cells in blue, mistakes in red on a log scale.

    A linear scale would paint every mistake white next to a diagonal of ~1,000.
    """
    cell, left, top, right, bottom = 54, 96, 92, 92, 20
    n = NUM_DIGITS
    size = (left + n * cell + right, top + n * cell + bottom)
    image = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(image)
    small, medium, big = _font(14), _font(16), _font(18)
    draw.text((left, 12), title, fill=INK, font=big)

    totals = matrix.sum(1)
    worst = max(int((matrix - np.diag(matrix.diagonal())).max()), 1)
    accuracy = per_digit_accuracy(matrix)
    for t in range(n):
        for p in range(n):
            count = int(matrix[t, p])
            if t == p:
                share = count / totals[t] if totals[t] else 0.0
                fill = _mix(WHITE, BLUE, 0.35 + 0.65 * share)
            else:
                fill = _mix(WHITE, RED, math.log1p(count) / math.log1p(worst)) if count else WHITE
            x0, y0 = left + p * cell, top + t * cell
            draw.rectangle((x0, y0, x0 + cell, y0 + cell), fill=fill, outline=(210, 210, 210))
            if count:
                dark = sum(fill) < 420
                draw.text(
                    (x0 + cell / 2, y0 + cell / 2),
                    str(count),
                    fill=WHITE if dark else INK,
                    font=small,
                    anchor="mm",
                )
        draw.text((left - 12, top + t * cell + cell / 2), str(t), fill=INK, font=big, anchor="rm")
        draw.text(
            (left + n * cell + 10, top + t * cell + cell / 2),
            f"{accuracy[t]:.1%}",
            fill=INK,
            font=small,
            anchor="lm",
        )
    for p in range(n):
        draw.text((left + p * cell + cell / 2, top - 10), str(p), fill=INK, font=big, anchor="ms")
    centre = left + n * cell / 2
    draw.text((centre, top - 34), "predicted digit", fill=INK, font=medium, anchor="ms")
    draw.text((left + n * cell + 10, top - 10), "recall", fill=INK, font=small, anchor="ls")

    label = Image.new("RGB", (n * cell, 24), WHITE)
    ImageDraw.Draw(label).text((n * cell / 2, 12), "true digit", fill=INK, font=medium, anchor="mm")
    image.paste(label.rotate(90, expand=True), (8, top))
    return image


def draw_errors(
    images: np.ndarray,
    labels: np.ndarray,
    probs: np.ndarray,
    limit: int = MAX_ERROR_TILES,
    title: str = "",
) -> Image.Image:
    """Gallery of misclassified digits, most confident mistakes first, dark ink on paper."""
    predictions, confidences = probs.argmax(1), probs.max(1)
    wrong = np.flatnonzero(predictions != labels)
    wrong = wrong[np.argsort(-confidences[wrong], kind="stable")][:limit]

    columns, scale, caption = 10, 3, 34
    tile_w, tile_h = 28 * scale + 12, 28 * scale + caption
    rows = max(1, math.ceil(len(wrong) / columns))
    header = 56
    gallery = Image.new("RGB", (columns * tile_w + 8, header + rows * tile_h + 8), WHITE)
    draw = ImageDraw.Draw(gallery)
    label_font, note_font = _font(14), _font(12)
    draw.text((8, 8), title, fill=INK, font=_font(16))
    legend = "under each digit: predicted/true  confidence  (most confident mistakes first)"
    draw.text((8, 32), legend, fill=(90, 90, 90), font=note_font)
    if len(wrong) == 0:
        draw.text((8, header + 10), "no misclassified digits", fill=INK, font=label_font)
    for k, i in enumerate(wrong):
        x0, y0 = 4 + (k % columns) * tile_w, header + (k // columns) * tile_h
        tile = Image.fromarray(255 - images[i]).resize(
            (28 * scale, 28 * scale), Image.Resampling.NEAREST
        )
        gallery.paste(tile.convert("RGB"), (x0 + 6, y0))
        draw.rectangle((x0 + 5, y0 - 1, x0 + 6 + 28 * scale, y0 + 28 * scale), outline=(200,) * 3)
        centre = x0 + 6 + 28 * scale / 2
        draw.text(
            (centre, y0 + 28 * scale + 3),
            f"{predictions[i]}/{labels[i]}",
            fill=RED,
            font=label_font,
            anchor="mt",
        )
        draw.text(
            (centre, y0 + 28 * scale + 19),
            f"{confidences[i]:.0%}",
            fill=(90, 90, 90),
            font=note_font,
            anchor="mt",
        )
    return gallery


# --- sets read as the daemon reads files -----------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One labelled set as the daemon decided it: probabilities where a digit was read, and the
    files it sends to review whatever the model says (blank, unreadable, doubtful)."""

    name: str
    labels: np.ndarray  # int [N]
    probs: np.ndarray  # float32 [N, 10]; rows of zeros where nothing was read
    held: np.ndarray  # bool [N]: to review regardless of confidence
    rival: np.ndarray | None = None  # float [N]: see calibration.risk_coverage

    @property
    def read(self) -> np.ndarray:
        return np.asarray(self.probs.sum(1) > 0)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.read & (self.probs.argmax(1) == self.labels)))

    @property
    def ece(self) -> float:
        return calibration.expected_calibration_error(self.probs[self.read], self.labels[self.read])

    def risk_coverage(self) -> list[tuple[float, float, float]]:
        return calibration.risk_coverage(self.probs, self.labels, held=self.held, rival=self.rival)


Candidates = tuple[list[np.ndarray], bool]  # a file's 28x28s to choose from, and held anyway


def reading(
    name: str,
    classifier: Classifier,
    labels: np.ndarray,
    prepared: Sequence[Candidates],
) -> Reading:
    """(candidate images, sent to review anyway) per file -> the set's Reading: each file read
    from its surest candidate, as the daemon takes the surer way round of an unclear page (and
    sends it to review when another candidate reads otherwise as surely: its `rival`)."""
    probs = np.zeros((len(labels), NUM_DIGITS), np.float32)
    rival = np.zeros(len(labels), np.float32)
    owner = np.array([i for i, (images, _) in enumerate(prepared) for _ in images], np.int64)
    if len(owner):
        images = np.stack([im for images, _ in prepared for im in images]).astype(np.float32)
        every = np.concatenate(
            [classifier.predict(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
        )
        order = np.lexsort((every.max(axis=1), owner))  # by file, the surest last
        owners, every = owner[order], every[order]
        last = np.r_[owners[1:] != owners[:-1], True]
        probs[owners[last]] = every[last]
        losers = ~last & (every.argmax(1) != probs[owners].argmax(1))
        np.maximum.at(rival, owners[losers], every[losers].max(1))
    held = np.array([not images or doubtful for images, doubtful in prepared], dtype=bool)
    return Reading(name, labels.astype(np.int64), probs, held, rival)


def one_digit(p: preprocess.Prepared | recognize.Prepared) -> Candidates:
    """The candidate 28x28s of a file of a one-digit set, read as the daemon reads a one-digit
    field (`recognition.digits: 1`): one mark is read whole, and a page with no mark or several
    goes to review whatever the confidence. A page read both ways round (its ink light or dark
    unclear) offers each way's digit."""
    pages = [p] if p.other is None else [p, p.other]
    images = [q.images[q.slots[0][0][0]] for q in pages if len(q.slots) == 1]
    return images, False


def _prepare_pages(pages: Sequence[np.ndarray]) -> list[Candidates]:
    return [one_digit(preprocess.prepare(page)) for page in pages]


def pooled(
    prepare: Callable[[Sequence[Any]], list[Candidates]],
    items: Sequence[Any] | np.ndarray,
    chunk: int,
) -> list[Candidates]:
    """`prepare` over `items`, `chunk` at a time, on every core, in order."""
    chunks = [items[i : i + chunk] for i in range(0, len(items), chunk)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        return [item for done in pool.map(prepare, chunks) for item in done]


def read_pages(classifier: Classifier, pages: np.ndarray, labels: np.ndarray, name: str) -> Reading:
    """Small images (e.g. USPS 16x16, dark on white) prepared as a dropped file would be."""
    return reading(name, classifier, labels, pooled(_prepare_pages, pages, 256))


def _prepare_files(paths: Sequence[Path]) -> list[Candidates]:
    return [one_digit(recognize.prepare_file(path)) for path in paths]


def read_labelled_folder(classifier: Classifier, folder: Path) -> Reading:
    """A folder of scans with labels.csv (columns `file`, `label`), e.g. written by
    `python bench/scans.py --preset varied`: decoded and prepared by the daemon's own code."""
    try:
        with (folder / "labels.csv").open(newline="") as f:
            rows = [(row["file"], int(row["label"])) for row in csv.DictReader(f)]
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(
            f"{folder}: needs a labels.csv with columns file,label ({exc}); "
            "write one with `python bench/scans.py --out DIR`"
        ) from exc
    prepared = pooled(_prepare_files, [folder / name for name, _ in rows], 64)
    labels = np.array([label for _, label in rows], dtype=np.int64)
    return reading(folder.name, classifier, labels, prepared)


def format_sets(readings: Iterable[Reading]) -> str:
    """Accuracy, calibration error and the review/error dial of every set, as plain text."""
    lines = ["", "Scan and USPS sets are read as one-digit fields (recognition.digits: 1)."]
    for r in readings:
        lines += [
            "",
            f"{r.name}: {len(r.labels):,} files, accuracy {r.accuracy:.2%}, "
            f"calibration error (ECE, {calibration.ECE_BINS} bins) {r.ece:.4f}",
            "  min_confidence   to review   filed wrong (per 1,000 filed)",
        ]
        lines += [
            f"  {t:>14g}   {review:>8.2%}   {1000 * error:>6.2f}"
            for t, review, error in r.risk_coverage()
        ]
    return "\n".join(lines)


def draw_reliability(readings: Sequence[Reading]) -> Image.Image:
    """One reliability diagram per set: accuracy against confidence in 10 bins, the diagonal
    is perfect calibration; bar area is not drawn to scale, the count is printed."""
    side, pad, top = 300, 56, 60
    image = Image.new("RGB", (len(readings) * (side + 2 * pad) or 1, side + top + pad + 10), WHITE)
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(11)
    for k, r in enumerate(readings):
        x0, y1 = k * (side + 2 * pad) + pad, top + side
        draw.text((x0, 10), r.name, fill=INK, font=font)
        draw.text((x0, 30), f"ECE {r.ece:.4f}, {int(r.read.sum()):,} read", fill=INK, font=small)
        draw.rectangle((x0, top, x0 + side, y1), outline=(160, 160, 160))
        draw.line((x0, y1, x0 + side, top), fill=(160, 160, 160))
        bins = calibration.reliability(r.probs[r.read], r.labels[r.read])
        width = side / len(bins)
        for b, (conf, acc, count) in enumerate(bins):
            if not count:
                continue
            bx = x0 + b * width
            draw.rectangle(
                (bx + 2, y1 - acc * side, bx + width - 2, y1), fill=_mix(WHITE, BLUE, 0.6)
            )
            cy = y1 - conf * side
            draw.line((bx + 2, cy, bx + width - 2, cy), fill=RED, width=2)
            draw.text((bx + width / 2, y1 + 4), f"{count}", fill=INK, font=small, anchor="mt")
        draw.text(
            (x0 + side / 2, y1 + 22), "confidence (bins of 0.1)", fill=INK, font=small, anchor="mt"
        )
        draw.text((x0 - 6, top), "1", fill=INK, font=small, anchor="rm")
        draw.text((x0 - 6, y1), "0", fill=INK, font=small, anchor="rm")
    draw.text((8, image.height - 16), "blue: accuracy in the bin; red: mean confidence; "
              "below each bar: files", fill=(90, 90, 90), font=small)  # fmt: skip
    return image


def draw_risk_coverage(readings: Sequence[Reading]) -> Image.Image:
    """Two panels against min_confidence: share sent to review, and filed files read wrong."""
    w, h, left, top = 420, 300, 70, 50
    image = Image.new("RGB", (2 * (w + left) + 50, h + top + 90), WHITE)
    draw = ImageDraw.Draw(image)
    font, small = _font(15), _font(11)
    colours = [BLUE, RED, (30, 140, 60), (140, 80, 160), (200, 120, 0)]
    tables = [r.risk_coverage() for r in readings]
    panels = [
        ("sent to review (%)", 1, max([100 * row[1] for t in tables for row in t] + [1.0]), 100),
        (
            "filed wrong (per 1,000 filed)",
            2,
            max([1000 * row[2] for t in tables for row in t] + [1.0]),
            1000,
        ),
    ]
    step = w / (len(calibration.THRESHOLDS) - 1)  # evenly spaced: the high end matters most
    for p, (title, column, top_value, scale) in enumerate(panels):
        x0 = 10 + p * (w + left) + left
        draw.text((x0, 12), title, fill=INK, font=font)
        draw.rectangle((x0, top, x0 + w, top + h), outline=(160, 160, 160))
        for frac in (0, 0.5, 1):
            y = top + h - frac * h
            draw.text((x0 - 6, y), f"{frac * top_value:.1f}", fill=INK, font=small, anchor="rm")
        for i, t in enumerate(calibration.THRESHOLDS):
            x = x0 + i * step
            draw.line((x, top + h, x, top + h + 4), fill=INK)
            draw.text((x, top + h + 6), f"{t:g}", fill=INK, font=small, anchor="mt")
        draw.text((x0 + w / 2, top + h + 22), "min_confidence", fill=INK, font=small, anchor="mt")
        for k, table in enumerate(tables):
            points = [
                (x0 + i * step, top + h - scale * row[column] / top_value * h)
                for i, row in enumerate(table)
            ]
            draw.line(points, fill=colours[k % len(colours)], width=2)
            for x, y in points:
                draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colours[k % len(colours)])
    for k, r in enumerate(readings):
        x, y = 10 + left + 200 * k, top + h + 58
        draw.line((x, y, x + 24, y), fill=colours[k % len(colours)], width=3)
        draw.text((x + 30, y), r.name, fill=colours[k % len(colours)], font=font, anchor="lm")
    return image


def main(
    model_path: Path | None,
    data_dir: Path,
    output_dir: Path | None,
    scans: Sequence[Path] = (),
    usps_path: Path | None = None,
) -> int:
    """`digit-inbox evaluate`: print the report, optionally write the PNGs.

    MNIST test always; each labelled scan folder and USPS when given: accuracy, calibration
    error and the risk-coverage table (the `min_confidence` dial).
    """
    classifier = Classifier(model_path)
    test = mnist.load_split(data_dir, "test")
    result = run(classifier, test.images, test.labels)
    print(format_report(classifier, result), flush=True)
    # MNIST digits are already in the contract layout: the probabilities above, none held.
    held = np.zeros(len(test.labels), dtype=bool)
    readings = [Reading("MNIST test", test.labels.astype(np.int64), result.probs, held)]
    readings += [read_labelled_folder(classifier, folder) for folder in scans]
    if usps_path is not None:
        digits = usps.load(usps_path)
        readings.append(read_pages(classifier, 255 - digits.images, digits.labels, "USPS"))
    print(format_sets(readings), flush=True)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        matrix = confusion_matrix(result.labels, result.predictions)
        title = f"{classifier.model_id}: {result.accuracy:.2%} on MNIST test"
        draw_confusion(matrix, title).save(output_dir / "confusion.png", optimize=True)
        draw_errors(
            test.images, test.labels, result.probs, title=f"Misclassified digits, {title}"
        ).save(output_dir / "errors.png", optimize=True)
        draw_reliability(readings).save(output_dir / "reliability.png", optimize=True)
        draw_risk_coverage(readings).save(output_dir / "risk-coverage.png", optimize=True)
        log.info(
            "wrote confusion.png, errors.png, reliability.png, risk-coverage.png in %s", output_dir
        )
    return ExitCode.OK
