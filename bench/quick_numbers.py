"""Numbers on scan-like pages: string accuracy of `digit-inbox classify`, quickly.

MNIST **test** digits (never trained on) are cut to their ink and set side by side with a gap
(a fraction of the 20 px MNIST digit height; negative: overlapping), then put on a page by
`bench/scans.py`'s `make_scan` (its clean or varied paper, ink, clutter, format and size), so
the whole number is one "digit" to that generator. For each set it prints string accuracy (the
whole number right), digit accuracy (numbers of the right length, digit by digit), the share
sent to review (any status but ok) and how many wrong numbers were filed ok.

    python bench/quick_numbers.py [--count 300] [--seed 5] [--work-dir /tmp/numbers]
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from digit_inbox.export import mnist

try:
    from bench import scans
except ImportError:  # run as a script
    import scans  # type: ignore[no-redef]

# name: (digits per number, gap as a fraction of the digit height, preset)
SETS = {
    "1 digit, varied": (1, 0.3, "varied"),
    "4 digits, normal spacing, clean": (4, 0.3, "clean"),
    "4 digits, normal spacing, varied": (4, 0.3, "varied"),
    "7 digits, normal spacing, varied": (7, 0.3, "varied"),
    "2 digits touching, clean": (2, 0.0, "clean"),
    "2 digits slightly overlapping, clean": (2, -0.05, "clean"),
    "2 digits slightly overlapping, varied": (2, -0.05, "varied"),
}


def number(images: np.ndarray, indices: Sequence[int], gap: float) -> np.ndarray:
    """MNIST digits (28x28, ink 255) cut to their ink and set side by side: (28, W) uint8."""
    tiles = []
    for i in indices:
        cols = np.flatnonzero(images[i].max(axis=0) > 30)
        tiles.append(images[i][:, cols[0] : cols[-1] + 1])
    step = round(gap * 20)
    width = sum(t.shape[1] for t in tiles) + step * (len(tiles) - 1) + 8
    out = np.zeros((28, max(width, 28)), np.uint8)
    x = 4
    for t in tiles:
        out[:, x : x + t.shape[1]] = np.maximum(out[:, x : x + t.shape[1]], t)
        x += t.shape[1] + step
    return out


def write_set(folder: Path, count: int, length: int, gap: float, preset: str, seed: int) -> None:
    data = mnist.load_split(mnist.resolve_data_dir(None), "test")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(count):
        indices = rng.integers(0, len(data.images), length)
        scan = scans.make_scan(number(data.images, indices, gap), rng, preset)
        digits = "".join(str(int(d)) for d in data.labels[indices])
        (folder / f"{k:05d}_{digits}{scan.suffix}").write_bytes(scan.data)


def measure(folder: Path) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "digit_inbox.daemon", "classify", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    right = review = wrong_ok = digits_right = digits = 0
    for row in rows:
        truth = Path(row["file"]).stem.split("_")[1]
        ok = row["digits"] == truth
        right += ok
        review += row["status"] != "ok"
        wrong_ok += not ok and row["status"] == "ok"
        digits += len(truth)
        if len(row["digits"]) == len(truth):
            digits_right += sum(a == b for a, b in zip(truth, row["digits"], strict=True))
    n = max(len(rows), 1)
    return {
        "n": len(rows),
        "string": 100 * right / n,
        "digit": 100 * digits_right / max(digits, 1),
        "review": 100 * review / n,
        "wrong_ok": wrong_ok,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="numbers per set")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "digit-inbox-numbers"
    )
    args = parser.parse_args(argv)
    print("| set | n | string accuracy | digit accuracy | to review | wrong filed ok |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, (name, (length, gap, preset)) in enumerate(SETS.items()):
        folder = args.work_dir / f"seed{args.seed}-n{args.count}-{k}"
        if not folder.exists():
            write_set(folder, args.count, length, gap, preset, args.seed * 100 + k)
        m = measure(folder)
        share = 100 * m["wrong_ok"] / max(m["n"], 1)
        print(
            f"| {name} | {m['n']:.0f} | {m['string']:.2f} % | {m['digit']:.2f} % "
            f"| {m['review']:.1f} % | {m['wrong_ok']:.0f} ({share:.2f} %) |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
