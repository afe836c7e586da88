"""The daemon against its targets: backlog throughput, latency, idle CPU and memory.

1. Throughput: a backlog of N scan-like PNGs (`scans.write_set`, cached) is read by
   `digit-inbox classify DIR`, then by `digit-inbox run` finding a second copy in its inbox at
   start, then by classify again (the ratio uses the mean of the two classify runs, which
   cancels most drift in other load on the machine). Target: daemon >= 0.8 x classify, all timed
   from process start, start-up included. Memory is sampled meanwhile: RSS of the daemon and of its
   decoding workers (and PSS, which counts pages they share once). Target: RSS sum <= 200 MB.
2. Idle: the daemon's CPU time (utime + stime from /proc/PID/stat, workers included) over 10 s
   with nothing to do. Target: ~0 % with inotify.
3. Latency: a feeder renames files into the inbox at a steady rate (default 20 files/s) while
   the bench tails the day's CSV; latency is from the rename to the row appearing in the file.
   Targets: p50 <= 100 ms, p99 <= 500 ms.

Run by hand, not in CI, on an otherwise idle machine:

    python bench/bench_daemon.py [--count 10000] [--latency-files 600] [--rate 20]
        [--workers N] [--preset clean|varied] [--work-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

try:
    from bench import scans
except ImportError:  # run as `python bench/bench_daemon.py`
    import scans  # type: ignore[no-redef]

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- Processes.


def children(pid: int) -> list[int]:
    """All descendants of `pid` (the daemon's forkserver and decoding workers)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 1e6
    except OSError:
        return 0.0


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1e3
    except OSError:
        pass
    return 0.0


def is_helper(pid: int) -> bool:
    """multiprocessing's forkserver (the workers' parent) or resource tracker: not a worker."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return False
    return "resource_tracker" in command or bool(children(pid))


@dataclass
class Memory:
    """Peaks over the samples taken while the backlog was read."""

    daemon_rss: float = 0.0
    workers_rss: float = 0.0  # the decoding worker processes
    helpers_rss: float = 0.0  # multiprocessing's forkserver and resource tracker
    total_rss: float = 0.0
    total_pss: float = 0.0
    workers: int = 0

    def sample(self, pid: int) -> None:
        kids = children(pid)
        helpers = [k for k in kids if is_helper(k)]
        workers = [k for k in kids if k not in helpers]
        main = rss_mb(pid)
        work, help_ = sum(rss_mb(k) for k in workers), sum(rss_mb(k) for k in helpers)
        self.daemon_rss = max(self.daemon_rss, main)
        self.workers_rss = max(self.workers_rss, work)
        self.helpers_rss = max(self.helpers_rss, help_)
        self.total_rss = max(self.total_rss, main + work + help_)
        self.total_pss = max(self.total_pss, pss_mb(pid) + sum(pss_mb(k) for k in kids))
        self.workers = max(self.workers, len(workers))


# --- The set and the daemon's folders.


def scan_set(work: Path, count: int, seed: int, preset: str) -> list[Path]:
    folder = work / f"scans-{preset}-{seed}-{count}"
    if not (folder / "labels.csv").exists():  # written last: its presence means complete
        print(f"generating {count} {preset} scans in {folder} ...", file=sys.stderr)
        scans.write_set(folder, count, seed, preset, formats=["png"], workers=os.cpu_count() or 1)
    return sorted(p for p in folder.iterdir() if p.suffix == ".png")


def write_config(root: Path, workers: int | None, batch_size: int) -> Path:
    config = root / "config.yaml"
    config.write_text(
        "paths: {inbox: ./inbox, outbox: ./outbox, review: ./review, failed: ./failed,\n"
        "        reports: ./reports, state: ./state}\n"
        f"recognition: {{workers: {'null' if workers is None else workers}, "
        f"batch_size: {batch_size}}}\n"
        "log_level: INFO\n"
    )
    return config


def copy_into(files: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, folder / path.name)


def report_lines(reports: Path) -> int:
    total = 0
    for path in reports.glob("*.csv"):
        with open(path, "rb") as f:
            total += max(0, sum(1 for _ in f) - 1)
    return total


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "digit_inbox.daemon", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=config.parent,
        )


def wait_for(condition: object, timeout: float, what: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- The three measurements.


def time_classify(files: list[Path], out: Path, workers: int | None) -> float:
    command = [
        "digit-inbox",
        "--log-level",
        "WARNING",
        "classify",
        str(files[0].parent),
        "--output",
        str(out),
    ]
    if workers is not None:
        command += ["--workers", str(workers)]
    print(f"$ {shlex.join(command)}", file=sys.stderr)
    start = time.perf_counter()
    subprocess.run(command, check=False)
    return time.perf_counter() - start


@dataclass
class Backlog:
    seconds: float
    seconds_after_ready: float
    memory: Memory


def time_backlog(proc: subprocess.Popen[bytes], root: Path, count: int, log: Path) -> Backlog:
    start = time.perf_counter()
    memory = Memory()
    ready_at = None
    reports = root / "reports"
    while report_lines(reports) < count:
        if proc.poll() is not None:
            raise SystemExit(f"the daemon exited with {proc.returncode}; see {log}")
        if ready_at is None and "ready:" in log.read_text(errors="replace"):
            ready_at = time.perf_counter()
        memory.sample(proc.pid)
        time.sleep(0.25)
    end = time.perf_counter()
    return Backlog(end - start, end - (ready_at or start), memory)


def idle_cpu(pid: int, seconds: float = 10.0) -> float:
    """Percent of one core the daemon and its workers used over `seconds` of idleness."""
    pids = [pid, *children(pid)]
    before = sum(cpu_seconds(p) for p in pids)
    time.sleep(seconds)
    after = sum(cpu_seconds(p) for p in pids)
    return 100 * (after - before) / seconds


@dataclass
class Tail:
    """Follows the reports folder and notes when each file's row appears."""

    reports: Path
    seen: dict[str, float] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    offsets: dict[Path, int] = field(default_factory=dict)

    def run(self) -> None:
        while not self.stop.is_set():
            for path in self.reports.glob("*.csv"):
                self.read_new(path)
            time.sleep(0.002)

    def read_new(self, path: Path) -> None:
        offset = self.offsets.get(path, 0)
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        if end == 0:
            return
        now = time.time()
        self.offsets[path] = offset + end
        for row in csv.reader(data[:end].decode("utf-8", "replace").splitlines()):
            if len(row) > 1 and row[1] != "file":
                self.seen.setdefault(row[1], now)


def feed(files: list[Path], inbox: Path, rate: float) -> dict[str, float]:
    """Rename `files` into the inbox at `rate` per second; when each was renamed."""
    renamed = {}
    start = time.perf_counter()
    for i, path in enumerate(files):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        renamed[path.name] = time.time()
        os.rename(path, inbox / path.name)
    return renamed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# --- Main.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000, help="backlog size")
    parser.add_argument("--latency-files", type=int, default=600, help="files fed one by one")
    parser.add_argument("--rate", type=float, default=20.0, help="files per second fed")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--preset", choices=scans.PRESETS, default="clean")
    parser.add_argument("--workers", type=int, help="decoding processes (default: per core)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/digit-inbox-bench-daemon"))
    args = parser.parse_args(argv)

    print(f"# bench_daemon: {shlex.join([sys.argv[0], *(argv or sys.argv[1:])])}")
    print(f"# {platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    work = args.work_dir
    files = scan_set(work, args.count + args.latency_files, args.seed, args.preset)
    backlog_files, feed_files = files[: args.count], files[args.count :]
    root = work / "daemon"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    shutil.rmtree(work / "classify-input", ignore_errors=True)
    copy_into(backlog_files, work / "classify-input")

    inputs = sorted((work / "classify-input").iterdir())
    classify_before = time_classify(inputs, work / "classify.csv", args.workers)
    config = write_config(root, args.workers, args.batch_size)
    copy_into(backlog_files, root / "inbox")
    copy_into(feed_files, root / "staging")
    log = root / "daemon.log"
    proc = start_daemon(config, log)
    try:
        backlog = time_backlog(proc, root, args.count, log)
        time.sleep(2)  # let the drain rescan and the status write pass
        idle = idle_cpu(proc.pid)
        tail = Tail(root / "reports")
        tailer = threading.Thread(target=tail.run)
        tailer.start()
        renamed = feed(sorted((root / "staging").iterdir()), root / "inbox", args.rate)
        total = args.count + len(renamed)
        wait_for(lambda: len(tail.seen) >= total, 120, "the fed files' rows", proc)
        tail.stop.set()
        tailer.join()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(120)
    # Classify again after the daemon: other load on the machine drifts, and the mean of a run
    # before and one after cancels most of that drift out of the ratio.
    classify_after = time_classify(inputs, work / "classify.csv", args.workers)
    classify_s = (classify_before + classify_after) / 2
    latencies = [1000 * (tail.seen[name] - t) for name, t in renamed.items()]

    n = args.count
    classify_rate, daemon_rate = n / classify_s, n / backlog.seconds
    m = backlog.memory
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"\n## Backlog of {n} {args.preset} PNG scans (workers: {args.workers or 'per core'})\n")
    print("| reader | seconds | files/s |")
    print("|---|---:|---:|")
    for label, seconds in (("before", classify_before), ("after", classify_after)):
        print(f"| digit-inbox classify ({label}) | {seconds:.1f} | {n / seconds:.0f} |")
    print(f"| digit-inbox run (from start) | {backlog.seconds:.1f} | {daemon_rate:.0f} |")
    print(
        f"| digit-inbox run (from ready) | {backlog.seconds_after_ready:.1f} | "
        f"{n / backlog.seconds_after_ready:.0f} |"
    )
    ratio = daemon_rate / classify_rate
    print(
        f"\nthroughput ratio daemon/classify: {ratio:.2f} (target >= 0.8) "
        f"{'PASS' if ratio >= 0.8 else 'FAIL'}"
    )
    both = m.daemon_rss + m.workers_rss
    print(
        f"\npeak memory (RSS): daemon {m.daemon_rss:.0f} MB + {m.workers} decoding worker(s) "
        f"{m.workers_rss:.0f} MB = {both:.0f} MB (target <= 200) "
        f"{'PASS' if both <= 200 else 'FAIL'}; with multiprocessing's forkserver and resource "
        f"tracker ({m.helpers_rss:.0f} MB) {m.total_rss:.0f} MB; PSS of them all (shared pages "
        f"counted once) {m.total_pss:.0f} MB"
    )
    print(f"\nidle CPU over 10 s: {idle:.2f} % of one core")
    print(f"\n## Latency, {len(latencies)} files renamed in at {args.rate:g}/s\n")
    print(
        f"p50 {p50:.0f} ms (target <= 100) {'PASS' if p50 <= 100 else 'FAIL'}, "
        f"p90 {percentile(latencies, 90):.0f} ms, p99 {p99:.0f} ms (target <= 500) "
        f"{'PASS' if p99 <= 500 else 'FAIL'}, max {max(latencies):.0f} ms, "
        f"mean {statistics.fmean(latencies):.0f} ms"
    )
    print(f"\ndaemon exit code after SIGTERM: {code}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
