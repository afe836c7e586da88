"""Inference speed with and without the /proc the service unit gives the daemon.

    python bench/bench_sandbox.py [--calls 2000]

The unit's `ProcSubset=pid` hides /proc/cpuinfo, and onnxruntime then logs that it cannot
detect the CPU. This measures whether that costs anything: batch-1 latency (median, p99) and
batch-256 throughput of the embedded model, once with the normal /proc and once inside a user
and mount namespace with /proc mounted `subset=pid,hidepid=invisible`, as systemd does. Needs
util-linux's `unshare` and a kernel that allows unprivileged user namespaces. Close other
CPU-heavy work first: these are wall-clock figures, interleaved to share any noise.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys

# Runs in a child process so that onnxruntime starts up under the /proc being measured.
MEASURE = """
import json, os, sys, time
import numpy as np
from digit_inbox.daemon.classifier import Classifier
calls = int(sys.argv[1])
classifier = Classifier()
def run(batch):
    start = time.perf_counter()
    classifier.session.run(None, {"image": batch})
    return time.perf_counter() - start
one = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
many = np.random.default_rng(1).random((256, 1, 28, 28), dtype=np.float32)
for _ in range(50):
    run(one)
single = sorted(run(one) for _ in range(calls))
big = min(run(many) for _ in range(max(5, calls // 100)))
print(json.dumps({"median_ms": 1e3 * single[len(single) // 2],
                  "p99_ms": 1e3 * single[int(len(single) * 0.99)],
                  "per_s_256": 256 / big, "model": classifier.model_id,
                  "cpuinfo": os.path.exists("/proc/cpuinfo")}))
"""

RESTRICTED = [
    "unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork", "sh", "-c",
    'mount -t proc -o subset=pid,hidepid=invisible proc /proc && exec "$@"', "sh",
]  # fmt: skip


def measure(prefix: list[str], calls: int) -> dict[str, float]:
    result = subprocess.run(
        [*prefix, sys.executable, "-c", MEASURE, str(calls)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="batch-1 calls per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per variant")
    args = parser.parse_args()
    print("$", shlex.join([sys.executable, *sys.argv]))
    runs: dict[str, list[dict[str, float]]] = {"full /proc": [], "ProcSubset=pid": []}
    for _ in range(args.rounds):
        runs["full /proc"].append(measure([], args.calls))
        runs["ProcSubset=pid"].append(measure(RESTRICTED, args.calls))
    model = runs["full /proc"][0]["model"]
    print(f"model {model}, {args.calls} batch-1 calls per run, best of {args.rounds} runs")
    for name, results in runs.items():
        median = min(r["median_ms"] for r in results)
        p99 = min(r["p99_ms"] for r in results)
        rate = max(r["per_s_256"] for r in results)
        cpuinfo = "readable" if results[0]["cpuinfo"] else "hidden"
        print(
            f"{name:>15}: /proc/cpuinfo {cpuinfo:8}  batch 1 median {median:.3f} ms, "
            f"p99 {p99:.3f} ms; batch 256 {rate:,.0f} images/s"
        )


if __name__ == "__main__":
    main()
