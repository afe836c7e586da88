"""Train a digit model on MNIST: `Net`, `train_epoch`, `evaluate`, `train` — readable in one screen.

The validation split is carved from the 60k training images with the seed; it steers nothing in
training but fits the confidence temperature at the end. The 10k test set is only measured at
the end, for the report.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from digit_inbox.daemon.contract import (
    CONTRACT_VERSION,
    IMAGE_SIZE,
    NOT_ONE_DIGIT,
    NUM_CLASSES,
    NUM_DIGITS,
)
from digit_inbox.export import calibration, mnist, pairs

log = logging.getLogger(__name__)


def cnn() -> nn.Module:
    """Five 3x3 conv layers with batch norm (~0.3 M parameters, ~22 M multiply-adds)."""

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2),  # 14x14
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),  # 7x7
        *block(64, 128), nn.MaxPool2d(2),  # 3x3
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 9, 128), nn.ReLU(),
        nn.Dropout(0.3), nn.Linear(128, NUM_CLASSES),
    )  # fmt: skip


def softmax_regression() -> nn.Module:
    """The classic tutorial baseline: one linear layer 784 -> the classes."""
    return nn.Sequential(nn.Flatten(), nn.Linear(IMAGE_SIZE * IMAGE_SIZE, NUM_CLASSES))


ARCHITECTURES = {"cnn": cnn, "softmax": softmax_regression}


def strokes(x: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
    """Synthesise European writing from MNIST strokes: a long flag on some 1s, a bar across some 7s.

    The flag runs down-left from the top of the 1's ink; the bar crosses the 7's stem halfway
    down its ink. Both are drawn as anti-aliased segments with the digit's own pen width.
    """
    n, dev = x.shape[0], x.device
    ink = x[:, 0] > 0.5  # [N, 28, 28]
    rows = ink.any(2).float()
    has_ink = rows.sum(1) > 0
    coords = torch.arange(IMAGE_SIZE, device=dev, dtype=torch.float32)
    top = torch.where(has_ink, (rows * (1e3 - coords)).argmax(1).float(), torch.full((n,), 14.0))
    bottom = torch.where(has_ink, (rows * coords).argmax(1).float(), torch.full((n,), 14.0))

    def centre_of(row: Tensor) -> Tensor:
        line = ink[torch.arange(n, device=dev), row.long()].float()
        return (line * coords).sum(1) / line.sum(1).clamp(min=1)

    def rand(lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=g, device=dev) * (hi - lo) + lo

    width = rand(1.4, 2.4)
    flag = (y == 1) & (torch.rand(n, generator=g, device=dev) < 0.4) & has_ink
    top_x = centre_of(top)
    length, angle = rand(5.0, 10.0), rand(0.35, 0.9)  # 20°..50° below the horizontal
    flag_end = (top_x - length * torch.cos(angle), top + length * torch.sin(angle))
    bar = (y == 7) & (torch.rand(n, generator=g, device=dev) < 0.4) & has_ink
    mid = ((top + bottom) / 2 + rand(-1.5, 1.5)).clamp(0, IMAGE_SIZE - 1)
    stem_x, half = centre_of(mid), rand(3.0, 6.0)
    starts = torch.where(flag, top_x, stem_x - half), torch.where(flag, top, mid)
    ends = torch.where(flag, flag_end[0], stem_x + half), torch.where(flag, flag_end[1], mid)
    return torch.maximum(x, segment(starts, ends, width) * (flag | bar).float().view(n, 1, 1, 1))


def segment(start: tuple[Tensor, Tensor], end: tuple[Tensor, Tensor], width: Tensor) -> Tensor:
    """[N, 1, 28, 28] ink of one anti-aliased line segment per image (pixel coordinates)."""
    coords = torch.arange(IMAGE_SIZE, device=width.device, dtype=torch.float32)
    px, py = coords.view(1, 1, -1), coords.view(1, -1, 1)
    x0, y0 = (v.view(-1, 1, 1) for v in start)
    dx, dy = ((e - s).view(-1, 1, 1) for s, e in zip(start, end, strict=True))
    t = (((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy).clamp(min=1e-6)).clamp(0, 1)
    dist = torch.hypot(px - x0 - t * dx, py - y0 - t * dy)
    return (width.view(-1, 1, 1) / 2 + 0.5 - dist).clamp(0, 1).unsqueeze(1)


def other_writers(x: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
    """Styles MNIST has few of, before `augment`: European 1s and 7s, digits stretched to fill a
    form box (unequal x/y scale), elastic wobble; after it, see `stored`."""
    n, dev = x.shape[0], x.device

    def u(lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=g, device=dev) * (hi - lo) + lo

    def some(p: float) -> Tensor:
        return (torch.rand(n, generator=g, device=dev) < p).float()

    x = strokes(x, y, g)
    stretch = torch.exp(u(-0.45, 0.45) * some(0.4))  # width:height up to 1.6x either way
    sx, sy = stretch.sqrt(), 1 / stretch.sqrt()
    fit = torch.maximum(sx, sy)  # the longer side keeps its size, as the 20x20 box does
    zero = torch.zeros(n, device=dev)
    theta = torch.stack(
        [torch.stack([fit / sx, zero, zero], 1), torch.stack([zero, fit / sy, zero], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    wobble = torch.randn(n, 2, 4, 4, generator=g, device=dev) * 0.03 * some(0.5).view(n, 1, 1, 1)
    grid = grid + F.interpolate(wobble, size=x.shape[-2:], mode="bicubic").permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, align_corners=False)


def stored(x: Tensor, g: torch.Generator) -> Tensor:
    """After `augment`: marker and hairline pens, 16x16 and 8x8 storage, binarised scans."""
    n, dev = x.shape[0], x.device

    def some(p: float) -> Tensor:
        return (torch.rand(n, 1, 1, 1, generator=g, device=dev) < p).float()

    x = x + some(0.1) * (F.max_pool2d(x, 5, 1, 2) - x)  # marker
    x = x + some(0.05) * (((x - 0.6) / 0.4).clamp(min=0) - x)  # hairline: the stroke's core
    for side, p in ((22, 0.15), (11, 0.08)):  # 16x16, 8x8 digits (20 px box in 28) scaled up
        small = F.interpolate(x, size=(side, side), mode="area")
        x = x + some(p) * (F.interpolate(small, size=x.shape[-2:], mode="bilinear") - x)
    threshold = torch.rand(n, 1, 1, 1, generator=g, device=dev) * 0.3 + 0.3
    return x + some(0.1) * ((x > threshold).float() - x)  # binarised


def augment(x: Tensor, g: torch.Generator) -> Tensor:
    """Make MNIST look like normalised scans: tilt, scale, shear, shift, pen width, blur, noise."""
    n, dev = x.shape[0], x.device

    def u(lo: float, hi: float) -> Tensor:
        return torch.rand(n, generator=g, device=dev) * (hi - lo) + lo

    angle, shear = u(-0.26, 0.26), u(-0.3, 0.3)  # about ±15° tilt, ±17° slant
    sx, sy = u(0.82, 1.12), u(0.82, 1.12)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos / sx, (-sin + shear * cos) / sx, u(-0.15, 0.15)], 1),
            torch.stack([sin / sy, (cos + shear * sin) / sy, u(-0.15, 0.15)], 1),
        ],
        1,
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False)

    def some(p: float) -> Tensor:
        return (torch.rand(n, 1, 1, 1, generator=g, device=dev) < p).float()

    strength = u(0.3, 1.0).view(n, 1, 1, 1)
    thicker = F.max_pool2d(x, 3, 1, 1)
    thinner = -F.max_pool2d(-x, 3, 1, 1)
    x = x + some(0.25) * strength * (thicker - x) + some(0.15) * strength * (thinner - x)
    blurred = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)
    x = x + some(0.2) * strength * (blurred - x)
    x = x * (1 - some(0.2) * u(0.0, 0.35).view(n, 1, 1, 1))  # fainter ink
    x = x + some(0.2) * torch.randn(x.shape, generator=g, device=dev) * 0.05
    return x.clamp(0, 1)


def to_tensor(images: Any, device: str) -> Tensor:
    return torch.as_tensor(np.array(images), device=device).float().div(255).unsqueeze(1)


def with_pairs(images: Any, labels: Any, seed: int, device: str) -> tuple[Tensor, Tensor]:
    """The digits and their labels, followed by `pairs.SHARE` as many marks of two or three of
    them touching, labelled NOT_ONE_DIGIT (the model's last class)."""
    x, y = pairs.with_marks(images, labels, seed)
    return torch.as_tensor(x, device=device).unsqueeze(1), torch.as_tensor(y, device=device)


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    x: Tensor,
    y: Tensor,
    batch_size: int,
    g: torch.Generator,
    augmented: bool,
    max_batches: int | None = None,
    writers: bool = False,
) -> tuple[float, float]:
    model.train()
    order = torch.randperm(len(x), generator=g, device=x.device)
    total_loss, correct, seen = 0.0, 0, 0
    for i, start in enumerate(range(0, len(x), batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        idx = order[start : start + batch_size]
        xb, yb = x[idx], y[idx]
        if augmented and writers:
            xb = stored(augment(other_writers(xb, yb, g), g), g)
        elif augmented:
            xb = augment(xb, g)
        logits = model(xb)
        # Label smoothing caps the confidence below 1; the temperature undoes most of it.
        smoothing = 0.05 if augmented and not writers else 0.0
        loss = F.cross_entropy(logits, yb, label_smoothing=smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.item() * len(idx)
        correct += int((logits.argmax(1) == yb).sum())
        seen += len(idx)
    return total_loss / max(seen, 1), correct / max(seen, 1)


@torch.no_grad()
def logits_of(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """(loss, accuracy): a digit is read right when its likeliest digit is it, as the daemon
    reads it; a mark of touching digits when the model's likeliest class is NOT_ONE_DIGIT."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        logits, yb = model(x[start : start + batch_size]), y[start : start + batch_size]
        loss += float(F.cross_entropy(logits, yb, reduction="sum"))
        read = torch.where(yb == NOT_ONE_DIGIT, logits.argmax(1), logits[:, :NUM_DIGITS].argmax(1))
        correct += int((read == yb).sum())
    return loss / len(x), correct / len(x)


def split_indices(count: int, seed: int, val_size: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    """(validation, training) indices into the 60k training images, drawn with the seed."""
    perm = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    return perm[:val_size].numpy(), perm[val_size:].numpy()


def train(
    data_dir: Path,
    output: Path,
    arch: str = "cnn",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    seed: int = 1,
    device: str = "cpu",
    val_size: int = 5000,
    dry_run: bool = False,
    writers: bool = False,
) -> dict[str, Any]:
    """Train, save a checkpoint with its metrics, and return them.

    `writers` adds the other writers' styles (`other_writers`, `stored`) to the scan augmentation
    and drops label smoothing.
    """
    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    is_cnn = arch == "cnn"
    # The softmax baseline follows the classic tutorial: batches of 100, plain SGD at 0.5.
    epochs = epochs if epochs is not None else (30 if is_cnn else 2)
    batch_size = batch_size or (128 if is_cnn else 100)
    lr = lr or (3e-3 if is_cnn else 0.5)

    train_split = mnist.load_split(data_dir, "train")
    test_split = mnist.load_split(data_dir, "test")
    g = torch.Generator(device=device).manual_seed(seed)
    val_idx, train_idx = split_indices(len(train_split.labels), seed, val_size)
    if dry_run:
        train_idx, val_idx, epochs = train_idx[:512], val_idx[:256], 1
    x_train, y_train = with_pairs(train_split.images[train_idx], train_split.labels[train_idx],
                                  seed, device)  # fmt: skip
    x_val, y_val = with_pairs(train_split.images[val_idx], train_split.labels[val_idx],
                              seed + 1, device)  # fmt: skip

    model = ARCHITECTURES[arch]().to(device)
    steps = epochs * math.ceil(len(x_train) / batch_size)
    optimizer: torch.optim.Optimizer
    scheduler = None
    if is_cnn:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr)

    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        loss, acc = train_epoch(
            model, optimizer, scheduler, x_train, y_train, batch_size, g, augmented=is_cnn,
            writers=writers,
        )  # fmt: skip
        val_loss, val_acc = evaluate(model, x_val, y_val)
        elapsed = time.monotonic() - started
        eta = elapsed / epoch * (epochs - epoch)
        log.info(
            "epoch %d/%d  loss %.4f  acc %.4f  val_loss %.4f  val_acc %.4f  %.0fs  ETA %.0fs",
            epoch, epochs, loss, acc, val_loss, val_acc, elapsed, eta,
        )  # fmt: skip

    x_test = to_tensor(test_split.images, device)
    y_test = torch.as_tensor(np.array(test_split.labels), device=device).long()
    _, test_acc = evaluate(model, x_test, y_test)
    log.info("final  val_acc %.4f  test_acc %.4f (test measured once, for the report)",
             val_acc, test_acc)  # fmt: skip
    # Confidence should be the probability of being right: one temperature, fitted on validation.
    val_logits, val_labels = logits_of(model, x_val).cpu().numpy(), y_val.cpu().numpy()
    temperature, val_ece = calibration.fit(val_logits, val_labels)
    log.info("temperature %.3f  validation ECE %.4f", temperature, val_ece)
    result = {
        "arch": arch,
        "augment": "writers" if writers else "scans",
        "temperature": temperature,
        "val_ece": val_ece,
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
        "val_accuracy": val_acc,
        "test_accuracy": test_acc,
        "epochs": epochs,
        "seed": seed,
        "device": device,
        "train_seconds": round(time.monotonic() - started, 1),
        "train_data_md5": mnist.data_fingerprint(),
        "contract_version": CONTRACT_VERSION,
        "dry_run": dry_run,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, output)
    log.info("checkpoint written to %s", output)
    return result


def build(arch: str, state_dict: dict[str, Tensor]) -> nn.Module:
    model = ARCHITECTURES[arch]()
    model.load_state_dict(state_dict)
    return model.eval()
