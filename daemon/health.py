"""What the running daemon is doing, for people (`digit-inbox status`) and for Prometheus.

The daemon records every row it writes; on its metrics interval it rewrites two small files
atomically: a JSON state file that `digit-inbox status` reads, and optionally a `*.prom` file for
node_exporter's textfile collector. Files rather than an HTTP endpoint keep the service off the
network entirely (the unit denies every address family but AF_UNIX).
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any

from digit_inbox.daemon import __version__
from digit_inbox.daemon.errors import ConfigError, ExitCode, RuntimeFault
from digit_inbox.daemon.rows import Row, Status

log = logging.getLogger(__name__)

STATE_SCHEMA = 1
# Upper bounds (seconds) of the processing-latency histogram: a 28x28 CNN takes milliseconds,
# a huge or corrupt scan can take seconds to decode.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STATUSES = [s.value for s in Status]
# `digit-inbox status` calls the state stale when it is older than this many write intervals.
STALE_INTERVALS = 3


def iso(timestamp: float) -> str:
    """Local time with its UTC offset, like the rows' `time` column."""
    return datetime.fromtimestamp(timestamp).astimezone().isoformat(timespec="seconds")


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def today() -> str:
    """The local date, which names the daily report; a function so tests can move midnight."""
    return date.today().isoformat()


def zero_counts() -> dict[str, int]:
    return dict.fromkeys(STATUSES, 0)


class Health:
    """Counters and gauges of one daemon process; `record` and `write` may run on any thread."""

    def __init__(
        self,
        state_file: Path,
        textfile: Path | None,
        model_id: str,
        inbox: Path | None = None,
        config_file: Path | None = None,
    ) -> None:
        self.state_file = state_file
        self.textfile = textfile
        self.model_id = model_id
        self.inbox = inbox
        self.config_file = config_file
        self.unit = systemd_unit()
        self.pid = os.getpid()
        self.host = socket.gethostname()
        self.started = time.time()
        self._lock = threading.Lock()  # guards the counters below
        self._write_lock = threading.Lock()  # one writer at a time, so files never go backwards
        self._queue_depth = 0
        self._total_counts = zero_counts()
        self._day = today()
        # A restart must not make `status` forget what was done earlier today.
        self._day_counts = self._earlier_today(state_file, self._day)
        self._buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self._latency_sum = 0.0
        self._last_file: dict[str, str] | None = None
        self._last_success: float | None = None

    @staticmethod
    def _earlier_today(state_file: Path, day: str) -> dict[str, int]:
        counts = zero_counts()
        try:
            earlier = json.loads(state_file.read_text())["counts"]["today"]
            if earlier["date"] == day:
                counts.update({s: int(earlier[s]) for s in STATUSES})
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no earlier state (first start) or an unreadable one: start from zero
        return counts

    def _roll_day(self) -> None:
        day = today()
        if day != self._day:
            self._day, self._day_counts = day, zero_counts()

    def record(self, row: Row, latency_seconds: float) -> None:
        """Count one finished file; `latency_seconds` is from noticing it to its row written."""
        now = time.time()
        status = Status(row.status).value
        with self._lock:
            self._roll_day()
            self._total_counts[status] += 1
            self._day_counts[status] += 1
            self._buckets[bisect.bisect_left(LATENCY_BUCKETS, latency_seconds)] += 1
            self._latency_sum += latency_seconds
            self._last_file = {
                "name": row.file,
                "status": status,
                "digits": row.digits,
                "time": row.time or iso(now),
            }
            if status != Status.ERROR.value:
                self._last_success = now

    def set_queue_depth(self, n: int) -> None:
        with self._lock:
            self._queue_depth = n

    def snapshot(self) -> dict[str, Any]:
        """The state file's content: everything `status` prints and the metrics are made of."""
        with self._lock:
            self._roll_day()
            return {
                "schema": STATE_SCHEMA,
                "version": __version__,
                "pid": self.pid,
                "host": self.host,
                "started": iso(self.started),
                "updated": iso(time.time()),
                "model_id": self.model_id,
                "inbox": str(self.inbox) if self.inbox else None,
                "config": str(self.config_file) if self.config_file else None,
                "systemd_unit": self.unit,
                "queue_depth": self._queue_depth,
                "counts": {
                    "today": {"date": self._day, **self._day_counts},
                    "total": dict(self._total_counts),
                },
                "last_file": self._last_file,
                "last_success": iso(self._last_success) if self._last_success else None,
                "latency_seconds": {
                    "le": list(LATENCY_BUCKETS),
                    "counts": list(self._buckets),
                    "sum": self._latency_sum,
                },
            }

    def write(self) -> None:
        """Rewrite the state file and the textfile, each atomically (readers never see half)."""
        with self._write_lock:
            state = self.snapshot()
            # The state is readable by the service's group (operators); metrics by anyone,
            # since node_exporter runs as its own user.
            atomic_write(self.state_file, json.dumps(state, indent=2) + "\n", mode=0o640)
            if self.textfile is not None:
                atomic_write(self.textfile, prometheus_text(state), mode=0o644)


def atomic_write(path: Path, content: str | bytes, mode: int) -> None:
    """Write to a temporary file in the same folder, fsync it, and rename it over `path`.

    The temporary name does not end in `.prom`, so node_exporter never reads a partial file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def escape(value: str) -> str:
    """Escape a label value as the Prometheus text format requires."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def prometheus_text(state: dict[str, Any]) -> str:
    """The state in Prometheus text exposition format (version 0.0.4).

    With an inbox, every sample carries it as a label, so the files of several daemons on one
    host can sit side by side in node_exporter's folder without clashing.
    """
    lines: list[str] = []
    common = {"inbox": state["inbox"]} if state.get("inbox") else {}
    Sample = tuple[str, dict[str, str], float]  # name suffix, labels, value

    def metric(name: str, kind: str, help_text: str, samples: list[Sample]) -> None:
        lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
        for suffix, labels, value in samples:
            pairs = ",".join(f'{k}="{escape(v)}"' for k, v in (common | labels).items())
            braced = f"{{{pairs}}}" if pairs else ""
            lines.append(f"{name}{suffix}{braced} {number(value)}")

    total = state["counts"]["total"]
    metric(
        "digit_inbox_files_total",
        "counter",
        "Files processed since the daemon started, by result status.",
        [("", {"status": s}, total[s]) for s in STATUSES],
    )
    metric(
        "digit_inbox_queue_depth",
        "gauge",
        "Files waiting in the inbox to be processed.",
        [("", {}, state["queue_depth"])],
    )
    latency = state["latency_seconds"]
    cumulative, samples = 0, []
    for le, count in zip([*latency["le"], "+Inf"], latency["counts"], strict=True):
        cumulative += count
        samples.append(("_bucket", {"le": str(le)}, cumulative))
    samples += [("_sum", {}, latency["sum"]), ("_count", {}, cumulative)]
    metric(
        "digit_inbox_processing_seconds",
        "histogram",
        "Time from noticing a file to its report row being written.",
        samples,
    )
    if state["last_success"]:
        metric(
            "digit_inbox_last_success_timestamp_seconds",
            "gauge",
            "Unix time the last file was read without an error.",
            [("", {}, epoch(state["last_success"]))],
        )
    metric(
        "digit_inbox_model_info",
        "gauge",
        "The model classifying the digits (always 1).",
        [("", {"model_id": state["model_id"], "version": state["version"]}, 1)],
    )
    metric(
        "digit_inbox_start_time_seconds",
        "gauge",
        "Unix time the daemon started.",
        [("", {}, epoch(state["started"]))],
    )
    return "\n".join(lines) + "\n"


def read_state(path: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise RuntimeFault(
            f"{path}: no state file, so the daemon has not run with this config; start it "
            "(`systemctl start digit-inbox`) or pass the config it runs with (--config)"
        ) from None
    except (OSError, ValueError) as exc:
        raise RuntimeFault(
            f"{path}: cannot read the state file ({exc}); run `digit-inbox status` as a member "
            "of the daemon's group, or restart the daemon to rewrite it"
        ) from exc
    return state


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it just belongs to another user
    return True


def duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def plural(count: int, noun: str) -> str:
    """`1 file`, `2 files`: every count a person reads."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def counts_text(counts: Mapping[str, int]) -> str:
    """Counts by status, in one order everywhere: the stop summary, `status`, `classify`
    (`corrected`, a person's decisions, only when there are some)."""
    shown = [s for s in STATUSES if s != Status.CORRECTED.value or counts.get(s)]
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in shown)


def systemd_unit() -> str | None:
    """The systemd unit this process runs in (`digit-inbox.service`), or None when it was
    started some other way (a terminal, cron): `status` gives advice that fits."""
    if "INVOCATION_ID" not in os.environ:
        return None
    try:
        with open("/proc/self/cgroup") as f:
            path = f.read().strip().rsplit(":", 1)[-1]
    except OSError:
        path = ""
    unit = path.rstrip("/").rsplit("/", 1)[-1]
    return unit if unit.endswith(".service") else "digit-inbox.service"


def advice(state: dict[str, Any]) -> str:
    """Where to see why the daemon stopped and how to start it, for how it was started."""
    unit = state.get("systemd_unit")
    if unit:
        return f"see why with `journalctl -u {unit}`; start it with `sudo systemctl start {unit}`"
    config = state.get("config") or "CONFIG"
    return (
        "it was started outside systemd, so its own output says why it stopped; start it "
        f"again with `digit-inbox run --config {config}`"
    )


def problem(state: dict[str, Any], now: float, stale_after: float) -> str | None:
    """Why the daemon behind `state` is not running, or None if it looks alive."""
    if state["host"] == socket.gethostname() and not pid_alive(state["pid"]):
        return f"digit-inbox is not running (pid {state['pid']} has exited); {advice(state)}"
    age = now - epoch(state["updated"])
    if age > stale_after:
        return (
            f"digit-inbox is not answering: its state was last written {duration(age)} ago "
            f"(expected every {duration(stale_after / STALE_INTERVALS)}), so it is hung or "
            f"stopped; {advice(state)}"
        )
    return None


def last_file_text(state: dict[str, Any]) -> str:
    last = state["last_file"]
    if not last:
        return "none yet"
    digits = last.get("digits", last.get("digit", ""))  # status files before numbers: digit
    read = f" digit {digits}" if digits else ""
    return f"{last['name']}: {last['status']}{read} at {last['time']}"


def describe(state: dict[str, Any], now: float) -> str:
    """The state of a running daemon as `digit-inbox status` prints it, with its age."""
    day = state["counts"]["today"]
    rows = [
        ("daemon", f"running, pid {state['pid']} on {state['host']}, version {state['version']}"),
        ("as of", f"{duration(now - epoch(state['updated']))} ago"),
        ("uptime", f"{duration(now - epoch(state['started']))} (since {state['started']})"),
        ("inbox", state.get("inbox") or "?"),
        ("model", state["model_id"]),
        ("queue", f"{plural(state['queue_depth'], 'file')} waiting"),
        (f"today {day['date']}", counts_text(day)),
        ("since start", counts_text(state["counts"]["total"])),
        ("last file", last_file_text(state)),
    ]
    return table(rows)


def describe_stopped(state: dict[str, Any], now: float) -> str:
    """What a stopped daemon left: no queue or uptime, which would read as if it were running."""
    day = state["counts"]["today"]
    rows = [
        ("daemon", f"not running (was pid {state['pid']} on {state['host']})"),
        ("last seen", f"{duration(now - epoch(state['updated']))} ago ({state['updated']})"),
        ("inbox", state.get("inbox") or "?"),
        (f"today {day['date']}", counts_text(day)),
        ("last file", last_file_text(state)),
    ]
    return table(rows)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}}  {value}" for key, value in rows)


def print_status(config_path: Path) -> int:
    """`digit-inbox status`: print the running daemon's state; non-zero if it is not running."""
    from digit_inbox.daemon import config

    if not config_path.exists():
        raise ConfigError(
            [
                f"no {config_path} in {Path.cwd()}; pass the config the daemon runs with: "
                "digit-inbox status --config PATH (the service's is "
                "/etc/digit-inbox/config.yaml)"
            ],
            source=str(config_path),
        )
    # Only reading: an operator need not be able to write the daemon's folders.
    cfg = config.load(config_path, check_folders=False)
    state = read_state(cfg.status_file)
    now = time.time()
    why = problem(state, now, STALE_INTERVALS * cfg.metrics.interval_seconds)
    print(describe_stopped(state, now) if why else describe(state, now))
    if why:
        log.error("%s", why)
        return int(ExitCode.RUNTIME)
    return int(ExitCode.OK)
