"""Coverage-guided fuzzing of what the daemon does with a file's bytes: decode + preprocess.

Anything but a result or a `DecodeError` is a finding: another exception (a crash), an input
slower than `--timeout` seconds (a hang) or one using more than `--rss-mb` (a bomb). Findings
land in WORK/findings/. An input's first byte picks the file's extension; the rest is the file.
Replay one (`--replay`), fix the code, then keep the file itself as a regression input, where
tests/test_hostile_inputs.py replays every one:

    tail -c +2 WORK/findings/crash-... > tests/data/fuzz/what-it-is.gif

Needs atheris (`pip install atheris`; not a dependency of digit-inbox). Run by hand, not in CI:

    python bench/fuzz_decode.py --seconds 300 [--work-dir DIR] [--timeout 10] [--rss-mb 2048]
    python bench/fuzz_decode.py --replay FILE...

The fuzzer runs in sessions of at most `--session-seconds`, restarted after each finding until
the time is up, so one run can collect several. The instrumented fuzzing process itself grows
by tens of KB per input, so an out-of-memory report is replayed in a fresh process: if that one
input stays small it is not a finding and is set aside. It starts from one small file per format
and encoding, the committed sample scans and the committed findings, and prints the command,
the executions and the findings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FINDINGS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
SUFFIXES = [".png", ".jpg", ".tif", ".bmp", ".gif", ".webp", ".jpeg", ""]
MAX_PIXELS = 4_000_000  # lowered from the daemon's default so a fuzzing run is not all memory


def target(data: bytes) -> str:
    """The daemon's path for one file: the first byte picks the name's extension. Returns a
    one-line outcome; raises for anything that is not a result or a DecodeError."""
    from digit_inbox.daemon import decode, preprocess

    suffix = SUFFIXES[data[0] % len(SUFFIXES)] if data else ""
    try:
        decoded = decode.decode_bytes(data[1:], suffix, MAX_PIXELS)
        prepared = preprocess.prepare(decoded.image)
    except decode.DecodeError as exc:
        return f"refused: {exc.reason}"
    if prepared.image is None:
        return f"blank: {prepared.blank_reason}"
    return f"read: {decoded.format} {decoded.width}x{decoded.height}"


def seeds(folder: Path) -> int:
    """Write the starting corpus: one small picture per format and mode, the sample scans and
    the committed findings, each behind an extension byte."""
    from PIL import Image

    page = Image.new("L", (40, 56), 255)
    page.paste(0, (16, 8, 24, 48))
    count = 0

    def add(data: bytes, suffix: str) -> None:
        nonlocal count
        item = bytes([SUFFIXES.index(suffix) if suffix in SUFFIXES else 0]) + data
        (folder / hashlib.sha1(item).hexdigest()).write_bytes(item)
        count += 1

    for fmt, suffix, modes in (
        ("PNG", ".png", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]),
        ("JPEG", ".jpg", ["L", "RGB", "CMYK"]),
        ("TIFF", ".tif", ["1", "L", "RGB", "RGBA", "CMYK", "I;16", "F"]),
        ("BMP", ".bmp", ["1", "L", "P", "RGB"]),
        ("GIF", ".gif", ["L", "P"]),
        ("WEBP", ".webp", ["RGB", "RGBA"]),
    ):
        for mode in modes:
            buffer = io.BytesIO()
            page.convert(mode).save(buffer, format=fmt)
            add(buffer.getvalue(), suffix)
    for path in sorted((REPO / "tests" / "data" / "scans").glob("*")):
        if path.suffix != ".csv":
            add(path.read_bytes(), path.suffix.lower())
    for path in sorted((REPO / "tests" / "data" / "fuzz").glob("*")):
        if path.name != "README.md":
            add(path.read_bytes(), path.suffix.lower())
    return count


def fuzz_child(args: argparse.Namespace) -> None:
    """One libFuzzer session (exits at the first finding or when the time is up)."""
    import atheris

    with atheris.instrument_imports():
        from PIL import (
            BmpImagePlugin,  # noqa: F401
            GifImagePlugin,  # noqa: F401
            Image,  # noqa: F401
            ImageOps,  # noqa: F401
            JpegImagePlugin,  # noqa: F401
            PngImagePlugin,  # noqa: F401
            TiffImagePlugin,  # noqa: F401
            WebPImagePlugin,  # noqa: F401
        )

        from digit_inbox.daemon import decode, preprocess  # noqa: F401

    def one_input(data: bytes) -> None:
        target(data)

    libfuzzer = [
        sys.argv[0],
        f"-max_total_time={max(1, int(args.seconds))}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={args.rss_mb}",
        f"-artifact_prefix={args.artifacts}/",
        "-close_fd_mask=3",  # the decoders' own chatter; libFuzzer keeps its report
        "-print_final_stats=1",
        str(args.corpus),
    ]
    atheris.Setup(libfuzzer, one_input)
    atheris.Fuzz()


def run(args: argparse.Namespace) -> int:
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="digit-inbox-fuzz-"))
    args.corpus, args.artifacts = work / "corpus", work / "findings"
    args.corpus.mkdir(parents=True, exist_ok=True)
    args.artifacts.mkdir(parents=True, exist_ok=True)
    seeded = seeds(args.corpus)
    print(f"command: python bench/fuzz_decode.py {shlex.join(sys.argv[1:])}")
    print(f"work: {work} ({seeded} seed inputs)")
    deadline = time.monotonic() + args.seconds
    executions, sessions, set_aside = 0, 0, 0
    while (left := deadline - time.monotonic()) > 5:
        sessions += 1
        seconds = int(min(left, args.session_seconds))
        child = [sys.executable, __file__, "--child", "--seconds", str(seconds)]
        child += ["--timeout", str(args.timeout), "--rss-mb", str(args.rss_mb)]
        child += ["--corpus", str(args.corpus), "--artifacts", str(args.artifacts)]
        result = subprocess.run(child, capture_output=True, text=True, errors="replace")
        (work / f"session-{sessions}.log").write_text(result.stderr[-20000:])
        for line in result.stderr.splitlines():
            if line.startswith("stat::number_of_executed_units:"):
                executions += int(line.split(":")[-1])
        if result.returncode == 0:
            continue
        error = [ln for ln in result.stderr.splitlines() if "ERROR: libFuzzer" in ln]
        print(
            f"session {sessions}: {error[-1].split('ERROR: ')[-1] if error else result.returncode}"
        )
        set_aside += set_aside_growth(args.artifacts, args.rss_mb)
    findings = sorted(p for p in args.artifacts.iterdir() if p.name.startswith(FINDINGS))
    corpus = sum(1 for _ in args.corpus.iterdir())
    print(f"executions: {executions}, sessions: {sessions}, corpus: {corpus} inputs")
    print(f"out-of-memory reports set aside (the input alone stays small): {set_aside}")
    print(f"findings: {len(findings)}")
    for path in findings:
        print(f"  {path}: {replay_one(path)}")
    return 1 if findings else 0


def set_aside_growth(artifacts: Path, rss_mb: int) -> int:
    """Move out-of-memory reports whose input alone stays under a quarter of the limit (in a
    fresh process) to artifacts/grown/: the fuzzing process grew, the input is harmless."""
    moved = 0
    for path in sorted(artifacts.glob("oom-*")):
        probe = [sys.executable, __file__, "--replay", str(path)]
        proc = subprocess.Popen(probe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the sessions'
        proc.returncode = os.waitstatus_to_exitcode(status)
        peak_mb = usage.ru_maxrss / 1024
        if peak_mb < rss_mb / 4:
            (artifacts / "grown").mkdir(exist_ok=True)
            path.rename(artifacts / "grown" / path.name)
            moved += 1
    return moved


def replay_one(path: Path) -> str:
    start = time.perf_counter()
    try:
        outcome = target(path.read_bytes())
    except Exception as exc:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f"{Path(frame.filename).name}:{frame.lineno}"
        return f"RAISES {type(exc).__name__}: {exc} (at {where})"
    return f"{outcome} ({time.perf_counter() - start:.2f} s)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory one input may use")
    parser.add_argument("--session-seconds", type=float, default=60, help="restart this often")
    parser.add_argument("--work-dir", help="corpus and findings (default: a new temp folder)")
    parser.add_argument("--replay", nargs="+", type=Path, help="run these inputs and say how")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--artifacts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replay:
        for path in args.replay:
            print(f"{path}: {replay_one(path)}")
        return 0
    if args.child:
        fuzz_child(args)
        return 0
    return run(args)


if __name__ == "__main__":
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    sys.exit(main())
