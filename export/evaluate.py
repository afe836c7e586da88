"""Measure an ONNX model on the MNIST test set the way the daemon runs it: through onnxruntime.

Torch-free on purpose (the `Classifier` and the IDX reader only), so a deployed daemon can
check the model it ships. The PNGs are drawn with Pillow: no plotting library to install.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from digit_inbox.daemon.classifier import Classifier
from digit_inbox.daemon.contract import NUM_CLASSES
from digit_inbox.daemon.errors import ExitCode
from digit_inbox.export import mnist

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
        or [np.zeros((0, NUM_CLASSES), np.float32)]
    )
    return Evaluation(labels, probs, time.perf_counter() - started)


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """Counts [10, 10]: rows are the true digit, columns the predicted one."""
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return matrix


def per_digit_accuracy(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(1)
    return np.divide(matrix.diagonal(), totals, out=np.zeros(len(totals)), where=totals > 0)


def format_confusion(matrix: np.ndarray) -> str:
    width = max(5, len(str(int(matrix.max()))) + 1)
    head = "true\\pred" + "".join(f"{d:>{width}}" for d in range(NUM_CLASSES))
    rows = [f"{t:>9}" + "".join(f"{n:>{width}}" for n in matrix[t]) for t in range(NUM_CLASSES)]
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
    n = NUM_CLASSES
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


def main(model_path: Path | None, data_dir: Path, output_dir: Path | None) -> int:
    """`digit-inbox evaluate`: print the report, optionally write confusion.png and errors.png."""
    classifier = Classifier(model_path)
    test = mnist.load_split(data_dir, "test")
    result = run(classifier, test.images, test.labels)
    print(format_report(classifier, result), flush=True)
    if output_dir is not None:
        output_dir.mkdir(parents=True, exist_ok=True)
        matrix = confusion_matrix(result.labels, result.predictions)
        title = f"{classifier.model_id}: {result.accuracy:.2%} on MNIST test"
        draw_confusion(matrix, title).save(output_dir / "confusion.png", optimize=True)
        draw_errors(
            test.images, test.labels, result.probs, title=f"Misclassified digits, {title}"
        ).save(output_dir / "errors.png", optimize=True)
        log.info("wrote %s and %s", output_dir / "confusion.png", output_dir / "errors.png")
    return ExitCode.OK
