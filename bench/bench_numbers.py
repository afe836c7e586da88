"""Reading whole numbers: string accuracy of `digit-inbox classify` on handwritten numbers.

The sets come from `number_scans.py` (MNIST test digits strung into numbers on scan-like
pages). For each set it prints:

- string accuracy: the whole reading exactly right (lines separated by one space);
- digit accuracy: digits in the right place over all expected digits; a reading with the
  right number of digits is compared position by position (line breaks ignored), a reading
  of another length counts all of its expected digits as wrong (the share read at the right
  length is printed beside it);
- the share sent to review (status low_confidence) and the wrong readings filed with status
  ok, the worst outcome (target: under 0.5 % of the files);
- all of it by length and by variation tag, for a mixed set on clean and varied pages;
- the target sets: 4 digits at normal spacing (clean >= 98 %, varied >= 96 %) and touching
  or overlapping pairs (>= 90 %), each beside the model alone on the same MNIST test digits
  fed as 28x28 arrays (what reading the marks could reach at best);
- the peer on a subset of the same files: Tesseract as one text line (`--psm 7`, digits only).

Blank and error rows read nothing (wrong); low_confidence rows count with what they read.
Reports from before numbers had a `digit` column, not `digits`; either is read.

    python bench/bench_numbers.py [--count 1000] [--target-count 500] [--peer-count 100]

Generated sets are cached under --work-dir (keyed by recipe, count and the generators'
source), so a rerun measures only. --out DIR also writes bench_numbers.md and .json.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import re
import shutil
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from digit_inbox.export import mnist

try:
    from bench import bench_scans, number_scans
except ImportError:  # run as a script: bench/ itself is on sys.path, the repo root is not
    import bench_scans  # type: ignore[no-redef]
    import number_scans  # type: ignore[no-redef]

pct, rate, table, log = bench_scans.pct, bench_scans.rate, bench_scans.table, bench_scans.log

DEFAULT_SEED = 2024  # the committed samples use seed 1; these sets must differ from them
OK = "ok"
REVIEW = "low_confidence"
NAN = float("nan")
# (name, preset, kinds): the mixed sets give the tables by length and tag; the others are
# the sets the targets are stated on.
SETS = (
    ("mixed clean", "clean", "mixed"),
    ("mixed varied", "varied", "mixed"),
    ("4 digits clean", "clean", "four"),
    ("4 digits varied", "varied", "four"),
    ("touching pair clean", "clean", "touching"),
    ("touching pair varied", "varied", "touching"),
)
TARGETS = {"4 digits clean": 0.98, "4 digits varied": 0.96, "touching pair clean": 0.90,
           "touching pair varied": 0.90}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Scoring (pure; tested on fabricated CSVs)


@dataclass(frozen=True)
class Reading:
    text: str  # the digits read, lines separated by one space; "" when nothing was read
    status: str


def normalise(text: str) -> str:
    """Runs of white space become one space; anything but digits and spaces is dropped."""
    return " ".join(re.sub(r"[^0-9\s]", "", text).split())


def readings_from_csv(text: str) -> tuple[str, dict[str, Reading]]:
    """(column used, file name -> Reading) from `classify` output. The column is `digits`,
    or `digit` in reports written before numbers were read."""
    reader = csv.DictReader(io.StringIO(text))
    fields = reader.fieldnames or []
    column = "digits" if "digits" in fields else "digit"
    readings = {}
    for row in reader:
        read = row[column] if row["status"] in bench_scans.READ_STATUSES else ""
        readings[bench_scans.file_key(row["file"])] = Reading(normalise(read), row["status"])
    return column, readings


@dataclass
class Tally:
    """Counts over a group of files."""

    n: int = 0
    strings: int = 0  # whole reading right
    digits: int = 0  # expected digits
    digits_right: int = 0
    length_right: int = 0  # readings with the expected number of digits
    fewer: int = 0  # readings with fewer digits than written (marks merged or missed)
    more: int = 0  # readings with more (marks split, or non-digits read as digits)
    review: int = 0  # status low_confidence
    wrong_ok: int = 0  # wrong reading filed with status ok

    def add(self, expected: str, reading: Reading) -> None:
        want, got = expected.replace(" ", ""), reading.text.replace(" ", "")
        self.n += 1
        self.strings += reading.text == expected
        self.digits += len(want)
        if len(got) == len(want):
            self.length_right += 1
            self.digits_right += sum(a == b for a, b in zip(want, got, strict=True))
        self.fewer += len(got) < len(want)
        self.more += len(got) > len(want)
        self.review += reading.status == REVIEW
        self.wrong_ok += reading.status == OK and reading.text != expected

    def figures(self) -> dict[str, float]:
        def share(k: int, n: int) -> float:
            return k / n if n else NAN

        return {
            "n": self.n,
            "string_accuracy": share(self.strings, self.n),
            "digit_accuracy": share(self.digits_right, self.digits),
            "length_right": share(self.length_right, self.n),
            "fewer_digits": share(self.fewer, self.n),
            "more_digits": share(self.more, self.n),
            "review": share(self.review, self.n),
            "wrong_ok": self.wrong_ok,
            "wrong_ok_share": share(self.wrong_ok, self.n),
        }


def tally(
    labels: Iterable[number_scans.Label], readings: Mapping[str, Reading]
) -> dict[str, Tally]:
    """Tallies for "all" and per tag; a file without a row counts as read as nothing."""
    groups: dict[str, Tally] = defaultdict(Tally)
    for label in labels:
        reading = readings.get(label.file, Reading("", "missing"))
        for group in ("all", *label.tags):
            groups[group].add(label.digits, reading)
    return dict(groups)


# ---------------------------------------------------------------------------------------------
# Sets, the pipeline and the peer


def cached_set(
    work_dir: Path, count: int, seed: int, preset: str, kind: str, workers: int
) -> tuple[Path, list[number_scans.Label]]:
    """A generated number set, reused as bench_scans reuses its sets."""
    write = functools.partial(
        number_scans.write_set, count=count, seed=seed, preset=preset, kinds=(kind,),
        workers=workers,
    )  # fmt: skip
    name = f"numbers-{preset}-{kind}-seed{seed}-n{count}"
    return bench_scans.cached(work_dir, name, write, number_scans)


def model_readings(labels: Sequence[number_scans.Label], model: Path | None) -> dict[str, Reading]:
    """What the model alone reads from the MNIST test digits behind each number, fed as 28x28
    arrays in order (line breaks kept): what reading the marks could reach at best."""
    flat = iter(bench_scans.model_reads([i for item in labels for i in item.mnist_indices], model))
    return {
        item.file: Reading("".join(c if c == " " else str(next(flat)) for c in item.digits), OK)
        for item in labels
    }


def tesseract_line(path: Path) -> str:
    """The digits Tesseract reads in `path` as one text line ("" for none)."""
    return normalise(bench_scans.tesseract_digits(path, 7))


def tesseract(folder: Path, labels: Sequence[number_scans.Label], workers: int) -> dict[str, Any]:
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        texts = list(pool.map(lambda item: tesseract_line(folder / item.file), labels))
    return {
        "read": dict(zip([item.file for item in labels], texts, strict=True)),
        "seconds": time.perf_counter() - start,
    }


def joined_accuracy(labels: Sequence[number_scans.Label], read: Mapping[str, str]) -> float:
    """String accuracy with line breaks and gaps ignored (Tesseract's --psm 7 reads one line,
    and may put spaces between digit groups)."""
    right = sum(
        read.get(item.file, "").replace(" ", "") == item.digits.replace(" ", "") for item in labels
    )
    return right / len(labels) if labels else NAN


def bench_set(
    name: str, preset: str, kind: str, count: int, args: argparse.Namespace, results: dict[str, Any]
) -> None:
    folder, labels = cached_set(args.work_dir, count, args.seed, preset, kind, args.gen_workers)
    entry: dict[str, Any] = {"preset": preset, "kind": kind, "n": len(labels)}
    results["sets"][name] = entry
    try:
        text, seconds = bench_scans.run_classify(folder, args)
    except RuntimeError as exc:
        entry["error"] = str(exc)
        log(f"{name}: classify failed: {exc}")
        return
    column, readings = readings_from_csv(text)
    results["meta"]["column"] = column
    groups = tally(labels, readings)
    entry.update(
        groups.pop("all").figures(),
        statuses=bench_scans.statuses_from_csv(text),
        images_per_s=len(labels) / seconds,
        mnist=tally(labels, model_readings(labels, args.model))["all"].figures()["string_accuracy"],
    )
    if kind == "mixed":
        entry["tags"] = {tag: t.figures() for tag, t in sorted(groups.items())}
    if args.peer_count and shutil.which("tesseract"):
        subset = labels[: args.peer_count]
        tess = tesseract(folder, subset, args.gen_workers)
        ours = {f: r.text for f, r in readings.items()}
        entry["peer"] = {
            "n": len(subset),
            "tesseract": joined_accuracy(subset, tess["read"]),
            "tesseract_images_per_s": len(subset) / tess["seconds"],
            "digit_inbox": joined_accuracy(subset, ours),
        }
    elif args.peer_count:
        log("tesseract not installed (apt-get install tesseract-ocr): skipping the peer")


# ---------------------------------------------------------------------------------------------
# Report


def figures_row(label: str, e: Mapping[str, Any]) -> list[object]:
    return [
        label,
        e["n"],
        pct(e["string_accuracy"]),
        pct(e["digit_accuracy"]),
        pct(e["length_right"]),
        f"{pct(e['fewer_digits'])} / {pct(e['more_digits'])}",
        pct(e["review"]),
        f"{e['wrong_ok']} ({pct(e['wrong_ok_share'])})",
    ]


HEADER = ["set", "n", "string acc.", "digit acc.", "length right", "fewer / more digits",
          "to review", "wrong, ok"]  # fmt: skip


def tag_order(tag: str) -> tuple[int, int, str]:
    """Lengths first, by number; then line counts; then every other tag by name."""
    key, _, value = tag.partition(":")
    rank = {"length": 0, "lines": 1}.get(key, 2)
    return rank, int(value) if rank < 2 and value.isdigit() else 0, tag


def markdown(results: Mapping[str, Any]) -> str:
    meta = results["meta"]
    out = [
        "# bench_numbers",
        "",
        f"Command: `{meta['command']}`  ",
        f"Seed {meta['seed']}, model `{meta['model_id']}`, column `{meta.get('column', '?')}`, "
        f"{meta['cpus']} CPUs, load average at start {meta['load_average']}, {meta['date']}, "
        f"commit {meta['commit']}",
        "",
        "## All sets",
        "",
    ]
    sets = results["sets"]
    rows = [figures_row(name, e) for name, e in sets.items() if "n" in e and "string_accuracy" in e]
    out.append(table(HEADER, rows))
    out += [
        "",
        "String: the whole reading right. Digit: per position when the number of digits is "
        "right, all wrong otherwise. Fewer / more digits: readings short of digits (marks "
        "merged or lost) or with extra ones (marks split, separators or print read as digits). "
        "Wrong, ok: misread and filed with status ok (target < 0.5 %).",
    ]
    for name, e in sets.items():
        if "error" in e:
            out += ["", f"{name}: classify failed: {e['error']}"]
    targets = [
        [name, pct(sets[name].get("string_accuracy", NAN)), f">= {100 * goal:.0f} %",
         "yes" if sets[name].get("string_accuracy", 0) >= goal else "no",
         pct(sets[name].get("mnist", NAN))]
        for name, goal in TARGETS.items()
        if name in sets
    ]  # fmt: skip
    if targets:
        out += ["", "## Targets (string accuracy)", ""]
        out.append(table(["set", "string acc.", "target", "met", "MNIST, same digits"], targets))
        out += [
            "",
            "MNIST, same digits: the model alone on the MNIST test digits behind each number, "
            "fed as 28x28 arrays in order: what reading the marks could reach at best.",
        ]
    for name, e in sets.items():
        if "tags" in e:
            ordered = sorted(e["tags"].items(), key=lambda kv: tag_order(kv[0]))
            rows = [figures_row(tag, t) for tag, t in ordered]
            out += ["", f"## By length and variation tag, {name}", "", table(HEADER, rows)]
    peers = [
        [name, p["n"], pct(p["digit_inbox"]), pct(p["tesseract"]),
         rate(p["tesseract_images_per_s"]), rate(e["images_per_s"])]
        for name, e in sets.items()
        if (p := e.get("peer"))
    ]  # fmt: skip
    if peers:
        out += ["", "## Peer: Tesseract on the same files (first --peer-count of each set)", ""]
        header = ["set", "n", "digit-inbox", "tesseract --psm 7", "tesseract images/s",
                  "digit-inbox images/s (whole set)"]  # fmt: skip
        out.append(table(header, peers))
        out += [
            "",
            "String accuracy with line breaks and spaces ignored for both readers (Tesseract "
            f"reads one line); Tesseract runs {meta['gen_workers']} processes at once, "
            "digit-inbox's rate includes its start-up.",
        ]
    return "\n".join(out) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="files per mixed set")
    parser.add_argument("--target-count", type=int, default=500,
                        help="files per target set (4 digits, touching pairs)")  # fmt: skip
    parser.add_argument("--peer-count", type=int, default=100,
                        help="files of each set also read by tesseract (0: none)")  # fmt: skip
    parser.add_argument(
        "--sets", help="comma-separated subset of: " + ", ".join(n for n, *_ in SETS)
    )
    bench_scans.add_run_options(parser, DEFAULT_SEED, "bench_numbers")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [s for s in SETS if not args.sets or s[0] in args.sets.split(",")]
    mnist.resolve_data_dir(None)  # fail now, not after generating, when MNIST is not set up
    results: dict[str, Any] = {
        "meta": bench_scans.run_meta("bench/bench_numbers.py", argv, args),
        "sets": {},
    }
    for name, preset, kind in chosen:
        start = time.perf_counter()
        count = args.count if kind == "mixed" else args.target_count
        bench_set(name, preset, kind, count, args, results)
        log(f"{name}: {time.perf_counter() - start:.0f} s")
    report = markdown(results)
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_numbers.md").write_text(report, encoding="utf-8")
        (args.out / "bench_numbers.json").write_text(json.dumps(results, indent=2), "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
