"""Recognition on scan-like images: accuracy against MNIST, throughput, and two peers.

1. Accuracy: `digit-inbox classify` on N varied and N clean scans of MNIST test digits, next to
   the model's own accuracy on the very same 28x28 digits; the gap is what scanning costs.
   Per-tag accuracy shows which variation costs it.
2. Crops: MNIST test digits stored as digit collections store them (cut tight, 16x16, 8x8),
   read by `digit-inbox classify`, next to the model on the same originals.
3. Throughput: `digit-inbox classify DIR` (a subprocess, start-up included) against one Python
   process that merely decodes each PNG with Pillow; the ratio is the target (>= 1.0). Then
   the CPU cost of each stage per file, and the best ratio two cores allow with it.
4. Peers on the same files: Tesseract (single-character mode, digits only) and the classic
   recipe (greyscale, resize to 28x28, invert, same ONNX model).

Run by hand, not in CI:

    python bench/bench_scans.py [--count 2000] [--throughput-count 10000] [--peer-count 500]

Generated sets are cached under --work-dir (keyed by recipe and count), so a rerun measures
only. Prints markdown tables; --out DIR also writes bench_scans.md and bench_scans.json.
"""

from __future__ import annotations

import argparse
import csv
import functools
import hashlib
import io
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from digit_inbox.daemon.rows import FORMULA_PREFIXES, Status
from digit_inbox.export import mnist

try:
    from bench import scans
except ImportError:  # run as a script: bench/ itself is on sys.path, the repo root is not
    import scans  # type: ignore[no-redef]

DEFAULT_SEED = 2024  # the committed samples use seed 1; these sets must differ from them
READ_STATUSES = (Status.OK.value, Status.LOW_CONFIDENCE.value)  # a digit was read
NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# Scoring (pure; tested on fabricated CSVs)


@dataclass(frozen=True)
class Score:
    n: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else NAN


def file_key(cell: str) -> str:
    """The file name a result row refers to: the CSV may hold a path, formula-neutralised."""
    if cell.startswith("'") and cell[1:].startswith(FORMULA_PREFIXES):
        cell = cell[1:]
    return Path(cell).name


def predictions_from_csv(text: str) -> dict[str, str]:
    """File name -> digits read, from `classify` output; blank and error rows read nothing.
    Reads both schemas: `digits` (numbers) and the older `digit`."""
    predicted = {}
    for row in csv.DictReader(io.StringIO(text)):
        digit = row.get("digits", row.get("digit", "")) if row["status"] in READ_STATUSES else ""
        predicted[file_key(row["file"])] = digit
    return predicted


def statuses_from_csv(text: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for row in csv.DictReader(io.StringIO(text)):
        counts[row["status"]] += 1
    return dict(counts)


def score(labels: Iterable[scans.Label], predicted: Mapping[str, str]) -> Score:
    """Accuracy over `labels`; a file with no prediction (missing, blank, error) is wrong."""
    items = list(labels)
    correct = sum(predicted.get(item.file, "") == str(item.label) for item in items)
    return Score(len(items), correct)


@dataclass(frozen=True)
class TagScore:
    tag: str
    n: int
    pipeline: float
    reference: float

    @property
    def gap_points(self) -> float:
        return 100 * (self.reference - self.pipeline)


def per_tag(
    labels: Sequence[scans.Label], predicted: Mapping[str, str], reference: Mapping[str, str]
) -> list[TagScore]:
    """Accuracy per variation tag, next to the reference (MNIST) accuracy on the same digits."""
    by_tag: dict[str, list[scans.Label]] = defaultdict(list)
    for item in labels:
        for tag in item.tags:
            by_tag[tag].append(item)
    return [
        TagScore(
            tag, len(items), score(items, predicted).accuracy, score(items, reference).accuracy
        )
        for tag, items in sorted(by_tag.items())
    ]


# ---------------------------------------------------------------------------------------------
# Sets, the pipeline and the reference


def cached_set(
    work_dir: Path,
    count: int,
    seed: int,
    preset: str,
    formats: Sequence[str] | None,
    workers: int,
    max_side: int = 1600,
) -> tuple[Path, list[scans.Label]]:
    """A generated scan set, reused when a complete one is already there."""
    name = f"{preset}-{'+'.join(formats or ['all'])}-seed{seed}-n{count}"
    name += f"-max{max_side}" if max_side != 1600 else ""
    write = functools.partial(
        scans.write_set,
        count=count,
        seed=seed,
        preset=preset,
        formats=formats,
        workers=workers,
        max_side=max_side,
    )
    return cached(work_dir, name, write)


def cached(
    work_dir: Path, name: str, write: Callable[[Path], list[Any]], generator: Any = scans
) -> tuple[Path, list[Any]]:
    """The set `write` makes in a folder, reused when a complete one (labels.csv present) is
    already there. The key includes a hash of the generator module's source (and of scans.py,
    which every generator draws with), so editing either never reuses stale sets."""
    sources = {Path(scans.__file__), Path(generator.__file__)}
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(sources))).hexdigest()[:8]
    folder = work_dir / f"{name}-{digest}"
    labels_csv = folder / "labels.csv"
    if labels_csv.exists():
        return folder, generator.read_labels(labels_csv)
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    labels = write(folder)
    log(f"generated {len(labels)} files in {time.perf_counter() - start:.0f} s: {folder}")
    return folder, labels


def classify_command(folder: Path, output: Path, args: argparse.Namespace) -> list[str]:
    command = [sys.executable, "-m", "digit_inbox.daemon", "classify", str(folder)]
    command += ["--output", str(output)]
    if args.workers:
        command += ["--workers", str(args.workers)]
    if args.model:
        command += ["--model", str(args.model)]
    return command


def run_classify(folder: Path, args: argparse.Namespace) -> tuple[str, float]:
    """CSV text and wall seconds of `digit-inbox classify folder` (start-up included)."""
    output = folder.parent / f"{folder.name}.classify.csv"
    command = classify_command(folder, output, args)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1) or not output.exists():  # 1: some files had status error
        raise RuntimeError(
            f"`{shlex.join(command)}` exited {done.returncode}: "
            + " / ".join(done.stderr.strip().splitlines()[-3:])
        )
    return output.read_text(encoding="utf-8"), seconds


def mnist_reference(labels: Sequence[scans.Label], model: Path | None) -> dict[str, str]:
    """What the model reads from the original 28x28 digits behind each file."""
    digits = model_reads([item.mnist_index for item in labels], model)
    return {item.file: str(d) for item, d in zip(labels, digits, strict=True)}


def model_reads(indices: Sequence[int], model: Path | None) -> list[int]:
    """The digits the model reads from MNIST test digits `indices`, fed as 28x28 arrays."""
    from digit_inbox.daemon.classifier import Classifier

    test = mnist.load_split(mnist.resolve_data_dir(None), "test")
    images = test.images[list(indices)].astype(np.float32) / 255
    return [int(d) for d in Classifier(model).predict(images).argmax(axis=1)]


# ---------------------------------------------------------------------------------------------
# Peers


def classic_recipe(folder: Path, labels: Sequence[scans.Label], model: Path | None) -> dict:
    """Greyscale, squash to 28x28, invert, same model: what most MNIST tutorials do."""
    from digit_inbox.daemon.classifier import Classifier

    classifier = Classifier(model)
    start = time.perf_counter()
    batch, predicted = [], {}
    for item in labels:
        with Image.open(folder / item.file) as image:
            small = image.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
        batch.append(1 - np.asarray(small, dtype=np.float32) / 255)
    digits = classifier.predict(np.stack(batch)).argmax(axis=1)
    seconds = time.perf_counter() - start
    predicted = {item.file: str(d) for item, d in zip(labels, digits, strict=True)}
    return {"predicted": predicted, "seconds": seconds}


def tesseract_one(path: Path, psm: int = 10) -> str:
    """The first digit Tesseract reads in `path`, "" for none (digits-only whitelist)."""
    return tesseract_digits(path, psm)[:1]


def tesseract_digits(path: Path, psm: int) -> str:
    """Every digit Tesseract reads in `path`, in its order (digits-only whitelist)."""
    command = ["tesseract", str(path), "stdout", "--psm", str(psm)]
    command += ["-c", "tessedit_char_whitelist=0123456789"]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "OMP_THREAD_LIMIT": "1"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    return "".join(c for c in done.stdout if c.isdigit())


def tesseract(folder: Path, labels: Sequence[scans.Label], workers: int, psm: int) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        paths = [folder / item.file for item in labels]
        digits = list(pool.map(lambda p: tesseract_one(p, psm), paths))
    seconds = time.perf_counter() - start
    return {
        "predicted": dict(zip([i.file for i in labels], digits, strict=True)),
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------
# The three benchmarks


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_accuracy(args: argparse.Namespace, results: dict) -> dict[str, tuple[Path, list]]:
    sets = {}
    for preset in ("varied", "clean"):
        folder, labels = cached_set(
            args.work_dir, args.count, args.seed, preset, None, args.gen_workers
        )
        sets[preset] = (folder, labels)
        reference = mnist_reference(labels, args.model)
        entry: dict = {"n": len(labels), "mnist": score(labels, reference).accuracy}
        try:
            text, seconds = run_classify(folder, args)
        except RuntimeError as exc:
            entry["error"] = str(exc)
            log(f"accuracy/{preset}: classify failed: {exc}")
            results["accuracy"][preset] = entry
            continue
        predicted = predictions_from_csv(text)
        entry.update(
            pipeline=score(labels, predicted).accuracy,
            statuses=statuses_from_csv(text),
            seconds=seconds,
            images_per_s=len(labels) / seconds,
            tags=[
                asdict(t) | {"gap_points": t.gap_points}
                for t in per_tag(labels, predicted, reference)
            ],
            predicted=predicted,
        )
        entry["gap_points"] = 100 * (entry["mnist"] - entry["pipeline"])
        results["accuracy"][preset] = entry
    return sets


def bench_crops(args: argparse.Namespace, results: dict) -> None:
    """Digits as collections store them (scans.CROP_STYLES), read by `classify` like scans."""
    for style in scans.CROP_STYLES:
        slug = "".join(c if c.isalnum() else "-" for c in style)
        folder, labels = cached(
            args.work_dir,
            f"crops-{slug}-seed{args.seed}-n{args.count}",
            lambda out, style=style: scans.write_crops(out, args.count, args.seed, style),
        )
        entry: dict = {
            "n": len(labels),
            "mnist": score(labels, mnist_reference(labels, args.model)).accuracy,
        }
        try:
            text, _ = run_classify(folder, args)
            entry.update(
                pipeline=score(labels, predictions_from_csv(text)).accuracy,
                statuses=statuses_from_csv(text),
            )
        except RuntimeError as exc:
            entry["error"] = str(exc)
            log(f"crops/{style}: classify failed: {exc}")
        results["crops"][style] = entry


def pillow_load(path: Path) -> int:
    """Open and decode one file with Pillow, and nothing else: the baseline. -> its pixels."""
    with Image.open(path) as image:
        image.load()
        return image.width * image.height


def cpu_per_file(paths: Sequence[Path], model: Path | None) -> dict[str, float]:
    """CPU milliseconds per file of each stage, in this process: where the time goes, and what
    two cores could do at best (every stage but Pillow's own decoding is overhead on it)."""
    from digit_inbox.daemon import decode, preprocess
    from digit_inbox.daemon.classifier import Classifier

    def per_file(work: Callable[[Any], object], items: Sequence[Any]) -> float:
        start = time.process_time()
        for item in items:
            work(item)
        return 1000 * (time.process_time() - start) / len(items)

    pages = [decode.decode(path).image for path in paths]
    box = Image.Resampling.BOX  # the cheapest look at the whole page
    bare_resize = per_file(lambda page: page.convert("L").resize((28, 28), box, None, 2.0), pages)
    prepare = per_file(preprocess.prepare, pages)
    batch = np.zeros((256, 28, 28), np.float32)
    classifier = Classifier(model)
    start = time.process_time()
    for _ in range(8):
        classifier.predict(batch)
    infer = 1000 * (time.process_time() - start) / (8 * len(batch))
    out = {
        "files": len(paths),
        "pillow_open_load": per_file(pillow_load, paths),
        "decode": per_file(decode.decode, paths),
        "preprocess": prepare,
        "bare_resize": bare_resize,
        "inference": infer,
    }
    pipeline = out["decode"] + out["preprocess"] + infer
    out["two_core_ceiling"] = 2 * out["pillow_open_load"] / pipeline
    out["two_core_ceiling_bare"] = 2 * out["pillow_open_load"] / (pipeline - prepare + bare_resize)
    return out


# Form-field crops as archives store them: clean, about 150 px square.
SMALL_SIDE = 150


def bench_throughput(args: argparse.Namespace, results: dict) -> None:
    varied = cached_set(
        args.work_dir, args.throughput_count, args.seed + 1, "varied", ["png"], args.gen_workers
    )
    results["throughput"] = throughput_on(*varied, args, cpu_breakdown=True)
    small = cached_set(
        args.work_dir,
        args.throughput_count,
        args.seed + 2,
        "clean",
        ["png"],
        args.gen_workers,
        max_side=SMALL_SIDE,
    )
    results["throughput_small"] = throughput_on(*small, args, cpu_breakdown=False)


def throughput_on(
    folder: Path, labels: Sequence[scans.Label], args: argparse.Namespace, cpu_breakdown: bool
) -> dict:
    """Bare Pillow decoding vs `classify` on the same files, one after the other."""
    paths = [folder / item.file for item in labels]
    for path in paths:  # warm the page cache so neither side pays for the disk
        path.read_bytes()
    start = time.perf_counter()
    pixels = sum(pillow_load(path) for path in paths)
    decode_s = time.perf_counter() - start
    entry: dict = {
        "n": len(paths),
        "mean_megapixels": pixels / len(paths) / 1e6,
        "decode_s": decode_s,
        "decode_images_per_s": len(paths) / decode_s,
    }
    if cpu_breakdown:
        entry["cpu_ms"] = cpu_per_file(paths[: args.cpu_count], args.model)
    try:
        text, seconds = run_classify(folder, args)
        entry.update(
            classify_s=seconds,
            classify_images_per_s=len(paths) / seconds,
            rows=sum(statuses_from_csv(text).values()),
        )
        entry["ratio"] = entry["classify_images_per_s"] / entry["decode_images_per_s"]
    except RuntimeError as exc:
        entry["error"] = str(exc)
        log(f"throughput: classify failed: {exc}")
    return entry


def bench_peers(args: argparse.Namespace, results: dict, sets: Mapping[str, tuple]) -> None:
    have_tesseract = shutil.which("tesseract") is not None
    if not have_tesseract:
        log("tesseract not installed (apt-get install tesseract-ocr): skipping it")
    for preset, (folder, labels) in sets.items():
        accuracy = results["accuracy"].get(preset, {})
        rows = []
        if "pipeline" in accuracy:
            rows.append(
                {
                    "peer": "digit-inbox classify",
                    "n": len(labels),
                    "accuracy": accuracy["pipeline"],
                    "images_per_s": accuracy["images_per_s"],
                }
            )
        classic = classic_recipe(folder, labels, args.model)
        rows.append(
            {
                "peer": "classic recipe (grey, 28x28, invert, same model)",
                "n": len(labels),
                "accuracy": score(labels, classic["predicted"]).accuracy,
                "images_per_s": len(labels) / classic["seconds"],
            }
        )
        if have_tesseract:
            subset = labels[: args.peer_count]
            tess = tesseract(folder, subset, args.gen_workers, args.tesseract_psm)
            rows.append(
                {
                    "peer": f"tesseract --psm {args.tesseract_psm} ({args.gen_workers} processes)",
                    "n": len(subset),
                    "accuracy": score(subset, tess["predicted"]).accuracy,
                    "images_per_s": len(subset) / tess["seconds"],
                }
            )
            if "predicted" in accuracy:
                rows.append(
                    {
                        "peer": "digit-inbox on the tesseract subset",
                        "n": len(subset),
                        "accuracy": score(subset, accuracy["predicted"]).accuracy,
                        "images_per_s": NAN,
                    }
                )
        results["peers"][preset] = rows


# ---------------------------------------------------------------------------------------------
# Report


def pct(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f} %"


def rate(value: float) -> str:
    return "n/a" if value != value else f"{value:.1f}"


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_section(accuracy: Mapping[str, dict]) -> list[str]:
    rows = []
    for preset, e in accuracy.items():
        gap = f"{e['gap_points']:+.2f}" if "gap_points" in e else "n/a"
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(e.get("statuses", {}).items()))
        rows.append([preset, e["n"], pct(e.get("pipeline", NAN)), pct(e["mnist"]), gap, statuses])
    header = ["preset", "n", "pipeline", "MNIST, same digits", "gap (points)", "statuses"]
    out = ["## Accuracy (blank/error = wrong; low_confidence counts with its digit)", ""]
    out += [table(header, rows), "", "Target: gap <= 1.0 point."]
    for preset, e in accuracy.items():
        if "error" in e:
            out += ["", f"{preset}: classify failed: {e['error']}"]
        if "tags" in e:
            tags = sorted(e["tags"], key=lambda t: -t["gap_points"])
            rows = [
                [
                    t["tag"],
                    t["n"],
                    pct(t["pipeline"]),
                    pct(t["reference"]),
                    f"{t['gap_points']:+.1f}",
                ]
                for t in tags
            ]
            out += ["", f"### Per variation tag, {preset} (worst gap first)", ""]
            out.append(table(["tag", "n", "pipeline", "MNIST", "gap (points)"], rows))
    return out


def crops_section(crops: Mapping[str, dict]) -> list[str]:
    rows = [
        [
            style,
            e["n"],
            pct(e.get("pipeline", NAN)),
            pct(e["mnist"]),
            f"{100 * (e['mnist'] - e['pipeline']):+.2f}" if "pipeline" in e else e.get("error", ""),
            ", ".join(f"{k} {v}" for k, v in sorted(e.get("statuses", {}).items())),
        ]
        for style, e in crops.items()
    ]
    header = ["stored as", "n", "pipeline", "MNIST, same digits", "gap (points)", "statuses"]
    return ["## Digits as datasets store them (PNG crops, no page)", "", table(header, rows)]


def throughput_section(
    tp: Mapping[str, Any],
    title: str = "Throughput (varied scans, PNG only, page cache warm)",
    target: str = "1.0",
) -> list[str]:
    rows = [
        [
            "(a) one process: Image.open(p).load()",
            tp["n"],
            tp["decode_s"],
            tp["decode_images_per_s"],
        ]
    ]
    if "classify_s" in tp:
        rows.append(
            [
                "(b) `digit-inbox classify DIR`",
                tp["n"],
                tp["classify_s"],
                tp["classify_images_per_s"],
            ]
        )
    out = [f"## {title}", ""]
    out.append(
        table(
            ["what", "files", "seconds", "images/s"],
            [[what, n, rate(seconds), rate(speed)] for what, n, seconds, speed in rows],
        )
    )
    out += ["", f"Mean page {tp['mean_megapixels']:.2f} MP; (b) includes process start-up."]
    if "ratio" in tp:
        out.append(f"Ratio (b)/(a) = **{tp['ratio']:.2f}** (target >= {target}).")
    if "cpu_ms" in tp:
        c = tp["cpu_ms"]
        out += ["", f"CPU per file, one process, first {c['files']} files:", ""]
        stages = ["pillow_open_load", "decode", "preprocess", "inference", "bare_resize"]
        out.append(table(["stage", "ms/file"], [[k, f"{c[k]:.2f}"] for k in stages]))
        out += [
            "",
            f"Best two cores can do, (a) / (decode + preprocess + inference) x 2: "
            f"{c['two_core_ceiling']:.2f}; with preprocessing replaced by a bare 28x28 resize: "
            f"{c['two_core_ceiling_bare']:.2f}.",
        ]
    if "error" in tp:
        out.append(f"classify failed: {tp['error']}")
    return out


def peers_section(peers: Mapping[str, list[dict]]) -> list[str]:
    rows = [
        [preset, r["peer"], r["n"], pct(r["accuracy"]), rate(r["images_per_s"])]
        for preset, entries in peers.items()
        for r in entries
    ]
    out = ["## Peers (same files)", ""]
    out.append(table(["preset", "reader", "n", "accuracy", "images/s"], rows))
    out += ["", "Tesseract reads only the first --peer-count files of each set (it is slow)."]
    return out


def markdown(results: Mapping[str, dict]) -> str:
    meta = results["meta"]
    out = [
        "# bench_scans",
        "",
        f"Command: `{meta['command']}`  ",
        f"Seed {meta['seed']}, model `{meta['model_id']}`, {meta['cpus']} CPUs, "
        f"load average at start {meta['load_average']}, {meta['date']}, commit {meta['commit']}",
    ]
    if results.get("accuracy"):
        out += ["", *accuracy_section(results["accuracy"])]
    if results.get("crops"):
        out += ["", *crops_section(results["crops"])]
    if results.get("throughput"):
        out += ["", *throughput_section(results["throughput"])]
    if results.get("throughput_small"):
        title = f"Throughput (small clean scans, at most {SMALL_SIDE} px a side, PNG, cache warm)"
        out += ["", *throughput_section(results["throughput_small"], title, target="0.5")]
    if results.get("peers"):
        out += ["", *peers_section(results["peers"])]
    return "\n".join(out) + "\n"


def git_commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def model_id(model: Path | None) -> str:
    from digit_inbox.daemon.classifier import Classifier

    return Classifier(model).model_id


def run_meta(script: str, argv: Sequence[str] | None, args: argparse.Namespace) -> dict[str, Any]:
    """What a report prints above its figures so that they can be reproduced."""
    shown = sys.argv[1:] if argv is None else list(argv)
    return {
        "command": shlex.join(["python", script, *shown]),
        "seed": args.seed,
        "model_id": model_id(args.model),
        "cpus": os.cpu_count(),
        "gen_workers": args.gen_workers,
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "commit": git_commit(),
    }


def add_run_options(parser: argparse.ArgumentParser, seed: int, report: str) -> None:
    """The options every accuracy bench takes: the sets, the reader, where results go."""
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--model", type=Path, help="ONNX model (default: the embedded one)")
    parser.add_argument("--workers", type=int, help="passed to classify --workers")
    parser.add_argument("--gen-workers", type=int, default=os.cpu_count() or 1,
                        help="processes for generating sets and running tesseract")  # fmt: skip
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "digit-inbox-bench",
        help="where generated sets are cached",
    )
    parser.add_argument("--out", type=Path, help=f"also write {report}.md and .json here")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="scans per preset for accuracy")
    parser.add_argument("--throughput-count", type=int, default=10_000)
    parser.add_argument("--cpu-count", type=int, default=1000,
                        help="files timed stage by stage for the CPU breakdown")  # fmt: skip
    parser.add_argument("--peer-count", type=int, default=500, help="tesseract files per preset")
    parser.add_argument("--tesseract-psm", type=int, default=10,
                        help="page segmentation mode (10: single character)")  # fmt: skip
    parser.add_argument("--only", default="accuracy,crops,throughput,peers",
                        help="comma-separated subset of accuracy,crops,throughput,peers")  # fmt: skip  # noqa: E501
    add_run_options(parser, DEFAULT_SEED, "bench_scans")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    only = set(args.only.split(","))
    mnist.resolve_data_dir(None)  # fail now, not after generating, when MNIST is not set up
    results: dict = {
        "meta": run_meta("bench/bench_scans.py", argv, args),
        "accuracy": {},
        "crops": {},
        "peers": {},
    }
    steps: list[tuple[str, Callable[[], object]]] = []
    sets: dict = {}
    if "accuracy" in only or "peers" in only:
        steps.append(("accuracy", lambda: sets.update(bench_accuracy(args, results))))
    if "crops" in only:
        steps.append(("crops", lambda: bench_crops(args, results)))
    if "throughput" in only:
        steps.append(("throughput", lambda: bench_throughput(args, results)))
    if "peers" in only:
        steps.append(("peers", lambda: bench_peers(args, results, sets)))
    for name, step in steps:
        start = time.perf_counter()
        step()
        log(f"{name}: {time.perf_counter() - start:.0f} s")
    report = markdown(results)
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_scans.md").write_text(report, encoding="utf-8")
        for entry in results["accuracy"].values():
            entry.pop("predicted", None)
        (args.out / "bench_scans.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
