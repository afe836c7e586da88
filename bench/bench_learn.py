"""Does `digit-inbox learn` make an office's handwriting read better?

An "office" whose writers differ from MNIST: USPS (`$DIGIT_INBOX_USPS`, zip.train.gz; used here
only to simulate an office, never to train the shipped model), each digit drawn dark on white
and put through the daemon's own preprocessing. Split by position: the first part arrives first
and is corrected as in real use (only what went to review, optionally plus a 5 % spot check of
what was filed), the later part is never corrected and is what we measure. After 0, 50, 100,
200 and 500 corrections the last layer is adapted exactly as `learn` does (held-out share,
MNIST replay, gate) and we print, on the unseen part, accuracy and the share sent to review,
and MNIST test accuracy.

USPS is an easy office for the shipped model (few of its digits go to review), so `--office`
also draws the same writers' digits as offices MNIST is further from: stored at 8x8 and shown
at 16x16 again (`usps-8x8`, as low-resolution archives keep them), or written with a marker
(`usps-marker`, strokes thickened by a 3x3 minimum filter).

    DIGIT_INBOX_USPS=../shared/usps/zip.train.gz DIGIT_INBOX_MNIST_DIR=../shared/mnist \\
        python -m bench.bench_learn [--first 0.6] [--model M] [--office usps-8x8]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from digit_inbox.daemon import learn, preprocess
from digit_inbox.daemon.classifier import embedded_model
from digit_inbox.daemon.contract import DEFAULT_MIN_CONFIDENCE as MIN_CONFIDENCE  # to review
from digit_inbox.daemon.contract import NUM_DIGITS
from digit_inbox.daemon.learn import Outcome
from digit_inbox.export import mnist, usps

COUNTS = (0, 50, 100, 200, 500)


def stored_at_8x8(page: np.ndarray) -> np.ndarray:
    from PIL import Image

    small = Image.fromarray(page).resize((8, 8), Image.Resampling.BOX)
    return np.asarray(small.resize(page.shape[::-1], Image.Resampling.BILINEAR))


def marker(page: np.ndarray) -> np.ndarray:
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(page).filter(ImageFilter.MinFilter(3)))


OFFICES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "usps": lambda page: page,
    "usps-8x8": stored_at_8x8,
    "usps-marker": marker,
}


def model_inputs(pages: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The daemon's 28x28 inputs; False where preprocessing found no digit (blank)."""
    from PIL import Image

    images, found = [], []
    for page in pages:
        big = np.asarray(Image.fromarray(page).resize((64, 64), Image.Resampling.BILINEAR))
        prepared = preprocess.prepare(np.pad(big, 16, constant_values=255))
        found.append(prepared.image is not None)
        images.append(prepared.image if prepared.image is not None else np.zeros((28, 28)))
    return np.stack(images).astype(np.float32), np.array(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=float, default=0.6, help="share of USPS corrected")
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--office", choices=sorted(OFFICES), default="usps")
    parser.add_argument("--spot-check", type=float, default=0.05)
    parser.add_argument(
        "--cache", type=Path, help="keep the preprocessed inputs here (redone for another --office)"
    )
    parser.add_argument(
        "--methods",
        default="numpy",
        help="numpy (learn's last layer), torch (every layer; the [train] extra), or both: "
        "numpy,torch",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    source = usps.resolve_path(None)
    if source is None:
        print(f"{usps.ENV_USPS} is not set to USPS's zip.train.gz; nothing to measure")
        return 2
    digits = usps.load(source)
    pages = np.stack([OFFICES[args.office](255 - page) for page in digits.images])  # dark on white
    labels = digits.labels.astype(np.int64)
    cached = np.load(args.cache) if args.cache is not None and args.cache.exists() else None
    if cached is not None and str(cached.get("office", "usps")) == args.office:
        images, found = cached["images"], cached["found"]
    else:
        images, found = model_inputs(pages)
        if args.cache is not None:
            np.savez_compressed(args.cache, images=images, found=found, office=args.office)
    images, labels = images[found], labels[found]
    cut = int(len(labels) * args.first)
    print(
        f"{args.office}: {len(labels)} digits found by preprocessing; {cut} arrive first, "
        f"{len(labels) - cut} are the unseen part ({time.perf_counter() - start:.0f} s)"
    )

    surgery = learn.Surgery(args.model or embedded_model())
    session = surgery.feature_session
    x = learn.features(session, images)
    data_dir = mnist.resolve_data_dir(None)
    base = surgery.head
    probs = base.probabilities(x[:cut])
    reviewed = probs.max(1) < MIN_CONFIDENCE
    rng = np.random.default_rng(0)
    spot = rng.random(cut) < args.spot_check
    unseen_x, unseen_y = x[cut:], labels[cut:]

    def numpy_last_layer(chosen: np.ndarray, hold: np.ndarray) -> tuple[np.ndarray, Outcome]:
        head, outcome = learn.adapt(surgery, images[chosen], labels[chosen], hold, data_dir)
        return head.probabilities(unseen_x), outcome

    def torch_finetune(chosen: np.ndarray, hold: np.ndarray) -> tuple[np.ndarray, Outcome]:
        from digit_inbox.export import finetune

        candidate, outcome = finetune.finetune(
            surgery, images[chosen], labels[chosen], hold, data_dir
        )
        return finetune.probabilities(candidate, images[cut:])[:, :NUM_DIGITS], outcome

    methods = {"numpy": numpy_last_layer, "torch": torch_finetune}
    print(f"first part: {reviewed.sum()} of {cut} went to review")
    before = base.probabilities(unseen_x)

    def on_unseen(p: np.ndarray) -> str:
        """Accuracy, errors, errors filed with status ok (nobody looks at them again) and the
        share sent to review, on the unseen part."""
        wrong, filed = p.argmax(1) != unseen_y, p.max(1) >= MIN_CONFIDENCE
        return (
            f"{100 * (1 - wrong.mean()):>8.2f} %  {wrong.sum():>6}  {(wrong & filed).sum():>11}  "
            f"{100 * (1 - filed.mean()):>10.2f} %"
        )

    print(
        "method  corrections  spot-check  used  gate  unseen acc  errors  filed wrong  "
        "review share  MNIST test  seconds  (candidate before the gate: acc, errors, MNIST)"
    )
    print(f"{'-':>6}  {0:>11}  {'':>10}  {0:>4}     -  {on_unseen(before)}")
    for name in args.methods.split(","):
        for spot_checks in (False, True):
            stream = np.flatnonzero(reviewed | (spot & spot_checks))
            for n in COUNTS[1:]:
                chosen = stream[:n]
                hold = learn.hold_mask([f"usps-{i}" for i in chosen])
                began = time.perf_counter()
                p, outcome = methods[name](chosen, hold)
                seconds = time.perf_counter() - began
                candidate_errors = int((p.argmax(1) != unseen_y).sum())
                mnist_acc = outcome.after_mnist
                if not outcome.passes:
                    p, mnist_acc = before, outcome.before_mnist
                print(
                    f"{name:>6}  {n:>11}  {'5 %' if spot_checks else 'no':>10}  {len(chosen):>4}  "
                    f"{'pass' if outcome.passes else 'fail':>4}  "
                    f"{on_unseen(p)}  "
                    f"{100 * mnist_acc:>8.2f} %  {seconds:>7.0f}  "
                    f"({100 * (1 - candidate_errors / len(unseen_y)):.2f} %, {candidate_errors}; "
                    f"MNIST {100 * outcome.after_mnist:.2f} %)",
                    flush=True,
                )
                if len(chosen) < n:
                    break  # every correction the first part offers: the last line
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
