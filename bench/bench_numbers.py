"""Reading whole numbers: string accuracy of `digit-inbox classify` on handwritten numbers.

Sets come from bench/number_scans.py (MNIST test digits only) on clean and varied pages:

1. `mixed`: lengths 1-10, every spacing, separators, underlines, several lines, printed captions;
2. the targets' own sets: 4 digits at normal spacing, and touching pairs (two digits whose
   strokes meet).

For each set it prints the share of whole strings read exactly, by length and by variation;
the digit accuracy (1 - edit distance / length, so a dropped or extra digit costs one digit, not
the whole string); the share sent to review (status low_confidence); and the worst outcome, a
wrong string filed with status `ok`. A peer reads the same files: Tesseract as one text line
(`--psm 7`, digits whitelist; it cannot say where a line ends, so its strings are compared
without the spaces between lines).

    python bench/bench_numbers.py [--count 500] [--peer-count 200] [--seed 2024]

Generated sets are cached under --work-dir, as bench_scans.py does.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from digit_inbox.export import mnist

try:
    from bench import bench_scans, number_scans
except ImportError:  # run as a script: bench/ itself is on sys.path, the repo root is not
    import bench_scans  # type: ignore[no-redef]
    import number_scans  # type: ignore[no-redef]

DEFAULT_SEED = 2024
NAN = float("nan")
# name -> (preset, kind, length)
SETS = {
    "mixed/clean": ("clean", "mixed", None),
    "mixed/varied": ("varied", "mixed", None),
    "4-digit/clean": ("clean", "plain", 4),  # normal spacing
    "4-digit/varied": ("varied", "plain", 4),
    "touching-pair/clean": ("clean", "touching", 2),
    "touching-pair/varied": ("varied", "touching", 2),
}


@dataclass(frozen=True)
class Reading:
    """What the reader said about one file."""

    digits: str  # "" when nothing was read (blank, error)
    status: str


def readings_from_csv(text: str) -> dict[str, Reading]:
    """File name -> reading, from `classify` output: the `digits` column, or `digit` in reports
    written before numbers were read."""
    out = {}
    for row in csv.DictReader(io.StringIO(text)):
        digits = row["digits"] if "digits" in row else row["digit"]
        read = row["status"] in bench_scans.READ_STATUSES
        out[bench_scans.file_key(row["file"])] = Reading(digits if read else "", row["status"])
    return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions each cost one."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


@dataclass(frozen=True)
class Score:
    n: int
    strings: float  # share of files whose whole string is right
    digits: float  # 1 - summed edit distance / summed true length
    review: float  # share with status low_confidence
    wrong_ok: int  # wrong strings filed with status ok

    @property
    def wrong_ok_share(self) -> float:
        return self.wrong_ok / self.n if self.n else NAN


def score(
    labels: Iterable[number_scans.Label], readings: Mapping[str, Reading], squash: bool = False
) -> Score:
    """Scores over `labels`; a file with no row counts as read wrong. `squash` compares digits
    only, ignoring the spaces between lines (for readers that cannot see lines)."""
    items = list(labels)
    if not items:
        return Score(0, NAN, NAN, NAN, 0)
    right = errors = length = review = wrong_ok = 0
    for item in items:
        reading = readings.get(item.file, Reading("", "missing"))
        truth, read = item.digits, reading.digits
        if squash:
            truth, read = truth.replace(" ", ""), read.replace(" ", "")
        right += read == truth
        errors += min(edit_distance(read.replace(" ", ""), truth.replace(" ", "")), len(truth))
        length += len(truth.replace(" ", ""))
        review += reading.status == "low_confidence"
        wrong_ok += reading.status == "ok" and read != truth
    n = len(items)
    return Score(n, right / n, 1 - errors / length, review / n, wrong_ok)


def grouped(labels: Sequence[number_scans.Label], key: str) -> dict[str, list[number_scans.Label]]:
    """Labels by the value of a tag (`length`), or by every tag when key is empty."""
    groups: dict[str, list[number_scans.Label]] = defaultdict(list)
    for item in labels:
        for tag in item.tags:
            name, _, value = tag.partition(":")
            if not key:
                groups[tag].append(item)
            elif name == key:
                groups[value].append(item)
    return dict(groups)


# ---------------------------------------------------------------------------------------------
# Running the readers


def number_set(
    args: argparse.Namespace, name: str, count: int
) -> tuple[Path, list[number_scans.Label]]:
    preset, kind, length = SETS[name]
    write = functools.partial(
        number_scans.write_set,
        count=count,
        seed=args.seed,
        preset=preset,
        kind=kind,
        length=length,
        workers=args.gen_workers,
    )
    slug = f"numbers-{preset}-{kind}-{length or 'any'}-seed{args.seed}-n{count}"
    return bench_scans.cached(args.work_dir, slug, write, number_scans)


def tesseract(folder: Path, labels: Sequence[number_scans.Label], workers: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        read = list(pool.map(lambda i: bench_scans.tesseract_digits(folder / i.file, 7), labels))
    seconds = time.perf_counter() - start
    pairs = zip(labels, read, strict=True)
    readings = {i.file: Reading(d, "ok" if d else "blank") for i, d in pairs}
    return {"readings": readings, "seconds": seconds}


def bench_set(args: argparse.Namespace, name: str) -> dict:
    count = args.count if name.startswith("mixed") else args.target_count
    folder, labels = number_set(args, name, count)
    text, seconds = bench_scans.run_classify(folder, args)
    readings = readings_from_csv(text)
    entry: dict = {
        "score": score(labels, readings),
        "images_per_s": len(labels) / seconds,
        "by_length": {k: score(v, readings) for k, v in grouped(labels, "length").items()},
        "by_tag": {k: score(v, readings) for k, v in grouped(labels, "").items()},
    }
    if args.peer_count and shutil.which("tesseract"):
        subset = labels[: args.peer_count]
        tess = tesseract(folder, subset, args.gen_workers)
        entry["peer"] = {
            "n": len(subset),
            "tesseract": score(subset, tess["readings"], squash=True),
            "tesseract_images_per_s": len(subset) / tess["seconds"],
            "digit_inbox": score(subset, readings, squash=True),
        }
    return entry


# ---------------------------------------------------------------------------------------------
# Report


def row(name: str, s: Score) -> list[object]:
    pct = bench_scans.pct
    return [
        name,
        s.n,
        pct(s.strings),
        pct(s.digits),
        pct(s.review),
        f"{s.wrong_ok} ({pct(s.wrong_ok_share)})",
    ]


HEADER = ["", "files", "strings right", "digits right", "to review", "wrong, filed ok"]


def markdown(meta: Mapping[str, object], results: Mapping[str, dict]) -> str:
    table = bench_scans.table
    out = [f"`{meta['command']}`", ""]
    out += [
        f"model {meta['model_id']}, seed {meta['seed']}, commit {meta['commit']}, "
        f"{meta['cpus']} CPUs, load {meta['load_average']}, {meta['date']}",
        "",
    ]
    out += ["## Whole strings", ""]
    out += [table(HEADER, [row(name, r["score"]) for name, r in results.items()]), ""]
    peers = [
        [
            name,
            r["peer"]["n"],
            bench_scans.pct(r["peer"]["digit_inbox"].strings),
            bench_scans.pct(r["peer"]["tesseract"].strings),
            f"{r['images_per_s']:.1f} / {r['peer']['tesseract_images_per_s']:.1f}",
        ]
        for name, r in results.items()
        if "peer" in r
    ]
    if peers:
        out += ["## Tesseract (--psm 7, digits whitelist) on the first files of each set", ""]
        out += ["Strings compared without the spaces between lines (Tesseract's one line).", ""]
        header = ["", "files", "digit-inbox", "tesseract", "images/s (digit-inbox / tesseract)"]
        out += [table(header, peers), ""]
    for name, r in results.items():
        if not name.startswith("mixed"):
            continue
        lengths = sorted(r["by_length"].items(), key=lambda kv: int(kv[0]))
        out += [f"## {name}: by length", ""]
        out += [table(HEADER, [row(k, s) for k, s in lengths]), ""]
        out += [f"## {name}: by variation", ""]
        tags = sorted(r["by_tag"].items())
        out += [table(HEADER, [row(k, s) for k, s in tags if not k.startswith("length:")]), ""]
    return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="files per mixed set")
    parser.add_argument(
        "--target-count",
        type=int,
        default=500,
        help="files per target set (4 digits, touching pairs)",
    )
    parser.add_argument("--peer-count", type=int, default=200, help="tesseract files per set")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--sets", default=",".join(SETS), help="comma-separated subset of: " + ", ".join(SETS)
    )
    parser.add_argument("--model", type=Path, help="ONNX model (default: the embedded one)")
    parser.add_argument("--workers", type=int, help="passed to classify --workers")
    parser.add_argument(
        "--gen-workers",
        type=int,
        default=os.cpu_count() or 1,
        help="processes for generating sets and running tesseract",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "digit-inbox-bench",
        help="where generated sets are cached",
    )
    parser.add_argument("--out", type=Path, help="also write bench_numbers.md here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.sets.split(",") if n.strip()]
    unknown = [n for n in names if n not in SETS]
    if unknown:
        print(f"unknown sets {unknown}; choose from {list(SETS)}", file=sys.stderr)
        return 2
    mnist.resolve_data_dir(None)  # fail now, not after generating, when MNIST is not set up
    shown = sys.argv[1:] if argv is None else list(argv)
    meta = {
        "command": shlex.join(["python", "bench/bench_numbers.py", *shown]),
        "seed": args.seed,
        "model_id": bench_scans.model_id(args.model),
        "commit": bench_scans.git_commit(),
        "cpus": os.cpu_count(),
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    results = {}
    for name in names:
        start = time.perf_counter()
        results[name] = bench_set(args, name)
        bench_scans.log(f"{name}: {time.perf_counter() - start:.0f} s")
    report = markdown(meta, results)
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_numbers.md").write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
