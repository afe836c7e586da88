"""Rows/s of `classify --scheduler` on a Dask LocalCluster vs plain `classify`, in one run.

    python bench/bench_dask.py [--count 2000] [--workers 2] [--cores-per-machine 8] [--out DIR]

Both read the same varied PNG scans (bench_scans' set, cached under --work-dir), page cache
warm, one after the other:

(a) `digit-inbox classify DIR --workers W --output F`, a subprocess, start-up included;
(b) `digit-inbox classify DIR --scheduler ADDR --output F`, a subprocess, on a LocalCluster of
    W worker processes (one thread each, 127.0.0.1) started beforehand, as a real cluster is.

Then the costs that decide how far more machines go: CPU ms per file on a worker (the worker
processes' CPU time over (b)), the client's CPU per row (the subprocess of (b), less its
start-up: it receives the rows and writes the CSV) and the scheduler's (this process hosts it;
less its idle heartbeats), and from them the rate to expect on N
machines of --cores-per-machine cores: min(N x cores / worker cost, 1 / client cost,
1 / scheduler cost). Shared storage bandwidth is the other limit, not measured here.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from digit_inbox.daemon.cluster import Options, reader_for
from digit_inbox.export import mnist

try:
    from bench.bench_scans import DEFAULT_SEED, cached_set
except ImportError:  # run as a script: bench/ itself is on sys.path, the repo root is not
    from bench_scans import DEFAULT_SEED, cached_set  # type: ignore[no-redef]


def child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list[str], output: Path) -> dict:
    """Wall and CPU seconds of one `classify` subprocess, and its rows."""
    output.unlink(missing_ok=True)
    cpu, own, start = child_cpu(), time.process_time(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"`{shlex.join(command)}` exited {done.returncode}: {done.stderr}")
    rows = list(csv.DictReader(io.StringIO(output.read_bytes().decode("utf-8"))))
    return {
        "wall_s": wall,
        "rows": len(rows),
        "rows_per_s": len(rows) / wall,
        "client_cpu_s": child_cpu() - cpu,
        "here_cpu_s": time.process_time() - own,
        "worker_ms_per_file": sum(float(r["ms"] or 0) for r in rows) / max(len(rows), 1),
    }


def idle_cpu_per_s(seconds: float = 3.0) -> float:
    """CPU seconds per second this process spends with the cluster idle (heartbeats)."""
    start, wall = time.process_time(), time.perf_counter()
    time.sleep(seconds)
    return (time.process_time() - start) / (time.perf_counter() - wall)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="varied PNG scans to read")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED + 1)
    parser.add_argument("--workers", type=int, default=2, help="processes, both ways")
    parser.add_argument("--cores-per-machine", type=int, default=8)
    parser.add_argument(
        "--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "digit-inbox-bench"
    )
    parser.add_argument("--out", type=Path, help="also write bench_dask.json here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from distributed import Client, LocalCluster

    args = parse_args(argv)
    mnist.resolve_data_dir(None)
    folder, labels = cached_set(
        args.work_dir, args.count, args.seed, "varied", ["png"], os.cpu_count() or 1
    )
    for item in labels:
        (folder / item.file).read_bytes()  # page cache warm for both
    output = folder.parent / f"{folder.name}.dask.csv"
    base = [sys.executable, "-m", "digit_inbox.daemon", "classify", str(folder), "-o", str(output)]
    plain = run([*base, "--workers", str(args.workers)], output)
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(args.workers)
        # The model loaded, as on a cluster already at work.
        client.run(lambda: reader_for(Options()).model_id)
        scheduler = ["--scheduler", cluster.scheduler_address]
        empty = folder.parent / "empty"
        empty.mkdir(exist_ok=True)
        startup = run([*base[:4], str(empty), "-o", str(output), *scheduler], output)
        idle = idle_cpu_per_s()
        workers_cpu = sum(client.run(time.process_time).values())
        dask = run([*base, *scheduler], output)
        workers_cpu = sum(client.run(time.process_time).values()) - workers_cpu
    n = dask["rows"]
    costs = {
        "worker_ms_per_file": 1000 * workers_cpu / n,
        "worker_wall_ms_per_file": dask["worker_ms_per_file"],
        # The client's start-up (imports, connecting) measured on an empty folder, not counted.
        "client_ms_per_row": 1000 * (dask["client_cpu_s"] - startup["client_cpu_s"]) / n,
        # The scheduler (and the nannies) in this process, less what they spend when idle.
        "scheduler_ms_per_file": 1000 * (dask["here_cpu_s"] - idle * dask["wall_s"]) / n,
    }
    limits = {
        "client": 1000 / max(costs["client_ms_per_row"], 1e-6),
        "scheduler": 1000 / max(costs["scheduler_ms_per_file"], 1e-3),
    }
    scaling = {
        machines: min(
            machines * args.cores_per_machine * 1000 / costs["worker_ms_per_file"],
            *limits.values(),
        )
        for machines in (1, 2, 4, 8, 16, 32)
    }
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "bench/bench_dask.py", *given])
    lines = [
        "# bench_dask",
        "",
        f"Command: `{command}`; {args.count} varied PNG scans, {os.cpu_count()} CPUs, "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}",
        "",
        "| how | rows | seconds | rows/s |",
        "|---|---|---|---|",
        f"| (a) classify --workers {args.workers} | {plain['rows']} | {plain['wall_s']:.1f} | "
        f"{plain['rows_per_s']:.0f} |",
        f"| (b) classify --scheduler (LocalCluster, {args.workers} workers) | {n} | "
        f"{dask['wall_s']:.1f} | {dask['rows_per_s']:.0f} |",
        "",
        f"Ratio (b)/(a) = **{dask['rows_per_s'] / plain['rows_per_s']:.2f}**.",
        "",
        f"Per file: {costs['worker_ms_per_file']:.2f} ms of CPU on a worker (decode, "
        f"preprocess, classify; {costs['worker_wall_ms_per_file']:.2f} ms wall on these shared "
        f"cores), {costs['client_ms_per_row']:.3f} ms in the client, "
        f"{costs['scheduler_ms_per_file']:.3f} ms in the scheduler: they cap a cluster at "
        f"{limits['client']:,.0f} and {limits['scheduler']:,.0f} rows/s.",
        "",
        f"Expected on N machines of {args.cores_per_machine} cores (on paper):",
        "",
        "| machines | rows/s |",
        "|---|---|",
        *(f"| {m} | {rate:,.0f} |" for m, rate in scaling.items()),
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        results = {"plain": plain, "dask": dask, "costs": costs, "limits": limits}
        results["scaling"] = scaling
        (args.out / "bench_dask.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
