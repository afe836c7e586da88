"""Health: the state file `digit-inbox status` reads and the Prometheus textfile."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from digit_inbox.daemon import __version__, cli, health
from digit_inbox.daemon.health import Health
from digit_inbox.daemon.rows import Row, Status, format_rows, header_line
from tests.helpers import digit_png, drop, wait_until, write_config

# --- A strict reader of the Prometheus text exposition format (0.0.4) -------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(
    rf"^(?P<name>{NAME})(?:\{{(?P<labels>{LABEL}(?:,{LABEL})*)?\}})? (?P<value>\S+)$"
)
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m[1] == "n" else m[1], value)


def parse_prometheus(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """Families with their types, and samples by (name, labels); fails on anything not valid."""
    assert text.endswith("\n"), "the exposition must end with a line feed"
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, frozenset], float] = {}
    family = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert re.fullmatch(NAME, name) and name not in helps, line
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert re.fullmatch(NAME, name) and kind in TYPES and name not in types, line
            family, types[name] = name, kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            assert family is not None, f"sample before any TYPE: {line!r}"
            allowed = [family + s for s in SUFFIXES.get(types[family], ("",))]
            assert match["name"] in allowed, f"{match['name']} outside its family {family}"
            pairs = LABEL_PAIR.findall(match["labels"] or "")
            labels = frozenset((k, unescape(v)) for k, v in pairs)
            key = (match["name"], labels)
            assert key not in samples, f"duplicate sample {line!r}"
            samples[key] = float(match["value"])
    assert set(types) == helps, "every family needs both HELP and TYPE"
    for name, kind in types.items():
        if kind == "histogram":
            check_histogram(name, samples)
    return types, samples


def check_histogram(name: str, samples: dict[tuple[str, frozenset], float]) -> None:
    """Per series: a +Inf bucket, cumulative buckets, and a _count equal to the +Inf bucket."""
    series: dict[frozenset, list[tuple[float, float]]] = {}
    for (sample, labels), count in samples.items():
        if sample == name + "_bucket":
            le = dict(labels)["le"]
            series.setdefault(labels - {("le", le)}, []).append((float(le), count))
    assert series, f"{name} has no buckets"
    for labels, buckets in series.items():
        buckets.sort()
        assert buckets[-1][0] == math.inf, "a histogram needs a +Inf bucket"
        counts = [count for _, count in buckets]
        assert counts == sorted(counts), "histogram buckets must be cumulative"
        assert samples[(name + "_count", labels)] == counts[-1]
        assert (name + "_sum", labels) in samples


def value(samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# --- Fixtures ---------------------------------------------------------------------------------


def row(name: str, status: Status, digit: str = "") -> Row:
    return Row(file=name, status=status, digits=digit, time="2030-01-02T03:04:05+00:00")


ROWS = [
    row("a.png", Status.OK, "7"),
    row("b.png", Status.OK, "1"),
    row("c.png", Status.LOW_CONFIDENCE, "4"),
    row("d.png", Status.BLANK),
    row("e.png", Status.ERROR),
    row("=cmd.png", Status.OK, "3"),
]


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "state" / "status.json", tmp_path / "metrics" / "digit-inbox.prom"


@pytest.fixture
def monitor(paths) -> Health:
    state_file, textfile = paths
    state_file.parent.mkdir()
    textfile.parent.mkdir()
    return Health(state_file, textfile, model_id="cnn-test")


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


# --- The state file -----------------------------------------------------------------------------


def test_the_state_file_counts_files_by_status_and_names_the_last_one(monitor, paths):
    for r in ROWS:
        monitor.record(r, 0.01)
    monitor.set_queue_depth(4)
    monitor.write()
    state = read_json(paths[0])
    # `corrected` rows come from `digit-inbox correct`, never from the daemon.
    expected = {"ok": 3, "low_confidence": 1, "blank": 1, "error": 1, "corrected": 0}
    assert state["counts"]["total"] == expected
    assert state["counts"]["today"] == {"date": health.today(), **expected}
    assert state["queue_depth"] == 4
    assert state["last_file"] == {
        "name": "=cmd.png",
        "status": "ok",
        "digits": "3",
        "time": "2030-01-02T03:04:05+00:00",
    }
    assert state["pid"] == os.getpid()
    assert state["model_id"] == "cnn-test"


def test_before_any_file_the_state_says_so(monitor, paths):
    monitor.write()
    state = read_json(paths[0])
    assert state["last_file"] is None
    assert state["last_success"] is None
    assert set(state["counts"]["total"].values()) == {0}


def test_errors_do_not_count_as_a_success(monitor, paths):
    monitor.record(row("bad.png", Status.ERROR), 0.1)
    monitor.write()
    assert read_json(paths[0])["last_success"] is None
    monitor.record(row("good.png", Status.BLANK), 0.1)
    monitor.write()
    assert read_json(paths[0])["last_success"] is not None


def test_a_restart_keeps_todays_counts_but_starts_the_totals_afresh(monitor, paths):
    monitor.record(row("a.png", Status.OK, "1"), 0.01)
    monitor.record(row("b.png", Status.BLANK), 0.01)
    monitor.write()
    restarted = Health(paths[0], paths[1], model_id="cnn-test")
    restarted.record(row("c.png", Status.OK, "2"), 0.01)
    restarted.write()
    counts = read_json(paths[0])["counts"]
    assert counts["today"]["ok"] == 2 and counts["today"]["blank"] == 1
    assert counts["total"]["ok"] == 1 and counts["total"]["blank"] == 0


def test_todays_counts_start_from_zero_after_midnight(monitor, paths, monkeypatch):
    monitor.record(row("a.png", Status.OK, "1"), 0.01)
    monkeypatch.setattr(health, "today", lambda: "2999-12-31")
    monitor.write()
    counts = read_json(paths[0])["counts"]
    assert counts["today"] == {"date": "2999-12-31", **dict.fromkeys(health.STATUSES, 0)}
    assert counts["total"]["ok"] == 1


def test_files_are_replaced_atomically_with_no_temporary_left_and_sane_modes(monitor, paths):
    monitor.write()
    monitor.write()
    state_file, textfile = paths
    assert os.listdir(state_file.parent) == [state_file.name]
    assert os.listdir(textfile.parent) == [textfile.name]
    assert state_file.stat().st_mode & 0o777 == 0o640
    assert textfile.stat().st_mode & 0o777 == 0o644


def test_without_a_textfile_only_the_state_is_written(tmp_path):
    Health(tmp_path / "status.json", None, model_id="m").write()
    assert os.listdir(tmp_path) == ["status.json"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(monitor, paths, monkeypatch):
    monitor.write()
    before = paths[0].read_text()

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError):
        monitor.write()
    assert paths[0].read_text() == before
    assert os.listdir(paths[0].parent) == [paths[0].name]


def test_records_from_many_threads_are_all_counted(monitor, paths):
    def work(status: Status) -> None:
        for i in range(300):
            monitor.record(row(f"{status}-{i}.png", status), 0.002)
            if i % 50 == 0:
                monitor.write()

    threads = [threading.Thread(target=work, args=(s,)) for s in Status for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    monitor.write()
    assert read_json(paths[0])["counts"]["total"] == dict.fromkeys(health.STATUSES, 600)
    _, samples = parse_prometheus(paths[1].read_text())
    assert value(samples, "digit_inbox_processing_seconds_count") == 600 * len(Status)


# --- The Prometheus textfile ---------------------------------------------------------------------


def test_the_textfile_is_valid_exposition_format_with_every_metric(monitor, paths):
    for r in ROWS:
        monitor.record(r, 0.01)
    monitor.set_queue_depth(2)
    monitor.write()
    types, samples = parse_prometheus(paths[1].read_text())
    assert types == {
        "digit_inbox_files_total": "counter",
        "digit_inbox_queue_depth": "gauge",
        "digit_inbox_processing_seconds": "histogram",
        "digit_inbox_last_success_timestamp_seconds": "gauge",
        "digit_inbox_model_info": "gauge",
        "digit_inbox_start_time_seconds": "gauge",
    }
    assert value(samples, "digit_inbox_queue_depth") == 2
    assert value(samples, "digit_inbox_model_info", model_id="cnn-test", version=__version__) == 1
    now = time.time()
    assert now - 60 < value(samples, "digit_inbox_start_time_seconds") <= now
    assert now - 60 < value(samples, "digit_inbox_last_success_timestamp_seconds") <= now


def test_the_counters_match_the_csv_rows_written_for_the_same_files(monitor, paths):
    for r in ROWS:
        monitor.record(r, 0.01)
    monitor.write()
    report = csv.DictReader(io.StringIO(header_line() + format_rows(ROWS)))
    from_csv = {s: 0 for s in health.STATUSES}
    for line in report:
        from_csv[line["status"]] += 1
    _, samples = parse_prometheus(paths[1].read_text())
    from_metrics = {s: value(samples, "digit_inbox_files_total", status=s) for s in from_csv}
    assert from_metrics == from_csv
    assert sum(from_csv.values()) == len(ROWS)


def test_latencies_fall_into_cumulative_buckets(monitor, paths):
    for seconds in (0.001, 0.005, 0.02, 0.3, 100.0):
        monitor.record(row("x.png", Status.OK, "1"), seconds)
    monitor.write()
    _, samples = parse_prometheus(paths[1].read_text())

    def bucket(le: str) -> float:
        return value(samples, "digit_inbox_processing_seconds_bucket", le=le)

    assert bucket("0.005") == 2  # `le` means less than or equal
    assert bucket("0.025") == 3
    assert bucket("0.5") == 4
    assert bucket("30.0") == 4
    assert bucket("+Inf") == 5
    assert value(samples, "digit_inbox_processing_seconds_sum") == pytest.approx(100.326)


def test_a_model_id_with_quotes_is_escaped_in_its_label(tmp_path):
    odd = 'cnn "v2"\\new\nline'
    Health(tmp_path / "s.json", tmp_path / "m.prom", model_id=odd).write()
    _, samples = parse_prometheus((tmp_path / "m.prom").read_text())
    assert value(samples, "digit_inbox_model_info", model_id=odd, version=__version__) == 1


def test_with_an_inbox_every_sample_names_it_so_several_daemons_never_clash(tmp_path):
    lab = Health(tmp_path / "s.json", tmp_path / "m.prom", model_id="m", inbox=Path("/srv/lab"))
    lab.record(row("a.png", Status.OK, "1"), 0.01)
    lab.write()
    _, samples = parse_prometheus((tmp_path / "m.prom").read_text())
    assert {dict(labels).get("inbox") for _, labels in samples} == {"/srv/lab"}
    assert value(samples, "digit_inbox_files_total", inbox="/srv/lab", status="ok") == 1
    assert "/srv/lab" in health.describe(read_json(tmp_path / "s.json"), time.time())


def test_the_strict_reader_rejects_what_node_exporter_would():
    with pytest.raises(AssertionError):
        parse_prometheus("digit_inbox_queue_depth 1\n")  # no TYPE
    with pytest.raises(AssertionError):
        parse_prometheus("# HELP x x\n# TYPE x gauge\nx{a=b} 1\n")  # unquoted label
    with pytest.raises(AssertionError):
        parse_prometheus("# HELP x x\n# TYPE x gauge\nx 1")  # no final newline


# --- `digit-inbox status` -------------------------------------------------------------------------


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_fresh_daemon_has_no_problem(monitor, paths):
    monitor.write()
    assert health.problem(read_json(paths[0]), time.time(), stale_after=30) is None


def test_a_dead_pid_under_systemd_is_a_problem_that_points_at_the_journal(monitor, paths):
    monitor.write()
    state = read_json(paths[0]) | {"pid": dead_pid(), "systemd_unit": "digit-inbox@lab.service"}
    why = health.problem(state, time.time(), stale_after=30)
    assert why is not None and why.startswith("digit-inbox is not running")
    assert "`journalctl -u digit-inbox@lab.service`" in why
    assert "`sudo systemctl start digit-inbox@lab.service`" in why


def test_a_daemon_started_in_a_terminal_gets_advice_without_systemd(monitor, paths):
    monitor.write()
    state = read_json(paths[0]) | {"pid": dead_pid(), "config": "/home/me/config.yaml"}
    assert state["systemd_unit"] is None  # the tests run outside systemd
    why = health.problem(state, time.time(), stale_after=30)
    assert why is not None and "journalctl" not in why and "systemctl" not in why
    assert "digit-inbox run --config /home/me/config.yaml" in why


def test_the_unit_is_recorded_when_systemd_started_the_daemon(tmp_path, monkeypatch):
    monkeypatch.setenv("INVOCATION_ID", "0123456789abcdef")
    assert health.systemd_unit() is not None and health.systemd_unit().endswith(".service")
    monkeypatch.delenv("INVOCATION_ID")
    assert health.systemd_unit() is None


def test_a_stale_state_file_is_a_problem(monitor, paths):
    monitor.write()
    why = health.problem(read_json(paths[0]), time.time() + 120, stale_after=30)
    assert why is not None and "2m 00s ago" in why


def test_the_description_shows_queue_counts_last_file_uptime_and_model(monitor, paths):
    for r in ROWS:
        monitor.record(r, 0.01)
    monitor.set_queue_depth(5)
    monitor.write()
    text = health.describe(read_json(paths[0]), time.time() + 3700)
    assert "5 files waiting" in text
    assert "3 ok, 1 low_confidence, 1 blank, 1 error" in text
    assert "=cmd.png: ok digit 3" in text
    assert "1h 01m" in text
    assert "cnn-test" in text
    assert f"pid {os.getpid()}" in text


def test_a_missing_state_file_says_how_to_start_the_daemon(tmp_path):
    with pytest.raises(health.RuntimeFault, match="systemctl start digit-inbox"):
        health.read_state(tmp_path / "status.json")


def test_status_prints_the_running_daemon_and_exits_zero(tmp_path, capsys):
    config = write_config(tmp_path)
    state_file = tmp_path / "var" / "state" / "status.json"
    state_file.parent.mkdir(parents=True)
    monitor = Health(state_file, None, model_id="cnn-test")
    monitor.record(row("a.png", Status.OK, "7"), 0.01)
    monitor.write()
    assert health.print_status(config) == 0
    out = capsys.readouterr().out
    assert "a.png: ok digit 7" in out and "1 ok" in out


def test_status_does_not_need_to_write_the_daemons_folders(tmp_path, capsys):
    (tmp_path / "not-a-folder").write_text("")
    config = write_config(tmp_path, paths={"outbox": "./not-a-folder/outbox"})
    state_file = tmp_path / "var" / "state" / "status.json"
    state_file.parent.mkdir(parents=True)
    Health(state_file, None, model_id="cnn-test").write()
    assert health.print_status(config) == 0
    assert "cnn-test" in capsys.readouterr().out


def test_status_of_a_stopped_daemon_says_so_plainly_and_exits_non_zero(tmp_path, capsys, caplog):
    config = write_config(tmp_path)
    state_file = tmp_path / "var" / "state" / "status.json"
    state_file.parent.mkdir(parents=True)
    monitor = Health(state_file, None, model_id="cnn-test")
    monitor.record(row("a.png", Status.OK, "7"), 0.01)
    monitor.set_queue_depth(3)
    monitor.write()
    state_file.write_text(json.dumps(read_json(state_file) | {"pid": dead_pid()}))
    assert health.print_status(config) == health.ExitCode.RUNTIME
    out = capsys.readouterr().out
    assert re.match(r"daemon +not running \(was pid \d+ on ", out)
    assert "a.png: ok digit 7" in out and "1 ok, 0 low_confidence" in out
    assert "running," not in out and "queue" not in out and "uptime" not in out
    assert "is not running" in caplog.text


def test_status_says_how_old_its_answer_is(tmp_path, capsys):
    config = write_config(tmp_path)
    state_file = tmp_path / "var" / "state" / "status.json"
    state_file.parent.mkdir(parents=True)
    Health(state_file, None, model_id="cnn-test").write()
    assert health.print_status(config) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("daemon") and "running, pid" in lines[0]
    assert re.fullmatch(r"as of +\d+s ago", lines[1])


def test_status_run_from_another_folder_suggests_the_config_option(tmp_path, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["status"]) == health.ExitCode.CONFIG
    assert "digit-inbox status --config PATH" in caplog.text and "copy" not in caplog.text


def test_status_without_a_state_file_exits_with_the_runtime_code(tmp_path, caplog):
    config = write_config(tmp_path)
    assert cli.main(["status", "--config", str(config)]) == health.ExitCode.RUNTIME
    assert "no state file" in caplog.text


# --- End to end: the daemon's metrics against the rows it wrote ---------------------------------


def csv_statuses(rows: list[dict[str, str]]) -> dict[str, int]:
    counts = dict.fromkeys(health.STATUSES, 0)
    for line in rows:
        counts[line["status"]] += 1
    return counts


@pytest.mark.slow
def test_the_daemons_counters_match_the_csv_rows_it_wrote(tmp_path, start_daemon):
    from PIL import Image

    blank = io.BytesIO()
    Image.new("L", (120, 120), 255).save(blank, format="PNG")
    scans = {
        "seven.png": digit_png(0)[0],
        "two.png": digit_png(1)[0],
        "blank.png": blank.getvalue(),
        "corrupt.png": b"not a PNG at all",
    }
    textfile = "./var/state/digit-inbox.prom"
    daemon = start_daemon(write_config(tmp_path, metrics={"textfile": textfile}))
    for name, data in scans.items():
        drop(daemon.folders.inbox, name, data)
    rows = daemon.wait_rows(len(scans))

    inbox = str(daemon.folders.inbox)

    def metrics() -> dict | None:
        if not (tmp_path / textfile).exists():
            return None
        _, samples = parse_prometheus((tmp_path / textfile).read_text())
        done = value(samples, "digit_inbox_processing_seconds_count", inbox=inbox) == len(scans)
        return samples if done else None

    samples = wait_until(metrics, what="the metrics to count every file")
    from_csv = csv_statuses(rows)
    files_total = "digit_inbox_files_total"
    assert {s: value(samples, files_total, inbox=inbox, status=s) for s in from_csv} == from_csv
    assert from_csv["error"] >= 1 and from_csv["ok"] + from_csv["low_confidence"] >= 1
    today = read_json(daemon.folders.state / "status.json")["counts"]["today"]
    assert {s: today[s] for s in from_csv} == from_csv
    assert daemon.stop() == 0
