"""The daemon stays inside its folders: it writes only to the inbox (claims), outbox, review,
failed, reports and state, never opens what a link in the inbox points to, and runs only the
model whose sha256 the config pins.

Two views of one run: a snapshot of everything else in a sandbox folder (contents, times and the
access times of the links' targets), and, where strace can trace here, every file system call
of the daemon and its decoding workers.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bench.torture import Ledger, account, digit_png
from digit_inbox.daemon.classifier import embedded_model
from digit_inbox.daemon.config import ROLES
from tests.helpers import DaemonProcess, Folders, daemon_env, write_config

pytestmark = pytest.mark.slow

# Calls that create, change or remove a name or its metadata.
CHANGING = {"creat", "mkdir", "mkdirat", "rename", "renameat", "renameat2", "link", "linkat"}
CHANGING |= {"symlink", "symlinkat", "unlink", "unlinkat", "rmdir", "truncate", "chmod"}
CHANGING |= {"fchmodat", "chown", "lchown", "fchownat", "utimensat", "mknod", "mknodat", "bind"}
OPENS = {"open", "openat", "openat2"}
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- The sandbox.


def make_sandbox(root: Path) -> tuple[Path, dict[str, Path]]:
    """A config under `root` with quick settling, a HOME and TMPDIR inside `root`, and things
    outside the daemon's folders that links in the inbox point to (their access time is set
    to 1970, so that reading them would show under relatime)."""
    for name in ("home", "tmp", "secret/folder"):
        (root / name).mkdir(parents=True)
    private = root / "secret" / "private.png"
    private.write_bytes(digit_png(21))
    (root / "secret" / "folder" / "inner.png").write_bytes(digit_png(22))
    for path in (private, root / "secret" / "folder" / "inner.png"):
        os.utime(path, ns=(0, os.stat(path).st_mtime_ns))
    links = {
        "private-link.png": private,
        "folder-link.png": root / "secret" / "folder",
        "passwd.png": Path("/etc/passwd"),
        "dangling.png": root / "secret" / "missing.png",
    }
    config = write_config(
        root,
        watch={"empty_timeout_seconds": 1},
        recognition={"workers": 2, "batch_size": 8},  # a pool of decoding workers too
    )
    return config, links


def environment(root: Path) -> dict[str, str]:
    env = daemon_env(HOME=str(root / "home"), TMPDIR=str(root / "tmp"))
    env.pop("XDG_CACHE_HOME", None)
    env.pop("ORT_DISABLE_TELEMETRY", None)  # the daemon must not need the unit's setting
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def snapshot(root: Path, skip: set[Path]) -> dict[str, tuple[object, ...]]:
    """Every name under `root` (links not followed): type, size and mtime; for files under
    secret/ (what the links point to) the access time too."""
    found: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        for name in dirnames + filenames:
            path = here / name
            if path in skip:
                continue
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                read = st.st_atime_ns if "secret" in path.relative_to(root).parts else None
                found[str(path)] = ("file", st.st_size, st.st_mtime_ns, read)
            elif stat.S_ISLNK(st.st_mode):
                found[str(path)] = ("link", os.readlink(path))
            else:  # a folder's mtime moves with any file made and removed in it: not compared
                found[str(path)] = ("other", stat.S_IFMT(st.st_mode))
    return found


def drop_everything(inbox: Path, links: dict[str, Path]) -> Ledger:
    ledger = Ledger()
    for name, target in links.items():
        (inbox / name).symlink_to(target)
        ledger.dropped[name.encode()] = None
    for i in range(20):  # enough for the decoding pool to start
        ledger.drop(inbox, f"scan-{i}.png".encode(), digit_png(30 + i))
    ledger.drop(inbox, b"broken.png", b"\x89PNG\r\n\x1a\n broken")
    return ledger


def test_nothing_outside_the_daemons_folders_is_read_written_or_followed(tmp_path):
    config, links = make_sandbox(tmp_path)
    var = tmp_path / "var"
    logs = {tmp_path / "daemon.log"}
    before = snapshot(tmp_path, {var, *logs})
    daemon = start(config, tmp_path, [])
    ledger = drop_everything(daemon.folders.inbox, links)
    daemon.wait_rows(len(ledger))
    assert daemon.stop() == 0
    after = snapshot(tmp_path, {var, *logs})
    assert after == before
    assert account(ledger, daemon.folders, [daemon.folders.reports]).problems == []
    for name in links:
        assert (daemon.folders.failed / name).is_symlink()


# --- The same run, traced.


def start(config: Path, root: Path, prefix: list[str]) -> DaemonProcess:
    log_path = root / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "digit_inbox.daemon", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment(root),
            cwd=root,
        )
    daemon = DaemonProcess(config, log_path, proc, Folders.under(root))
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.kill()
        raise
    return daemon


def traced_children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


LINE = re.compile(r"^(?P<call>\w+)\((?P<args>.*)\)\s+=\s+(?P<result>-?\d+|\?)")
# A quoted path, after the folder it is relative to when strace -y names one: `3</dir>, "name"`.
PATH = re.compile(r'(?:\d+<(?P<dir>[^>]*)>, )?"(?P<name>(?:[^"\\]|\\.)*)"')


def calls(trace_dir: Path, cwd: Path) -> list[tuple[str, list[str], str]]:
    """(call, absolute paths, arguments) of every traced call of every process."""
    found = []
    for path in sorted(trace_dir.glob("trace.*")):
        for line in path.read_text(errors="replace").splitlines():
            match = LINE.match(line)
            if match:
                args = match["args"]
                paths = [os.path.join(m["dir"] or cwd, m["name"]) for m in PATH.finditer(args)]
                found.append((match["call"], paths, args))
    return found


def outside(path: str, allowed: list[Path]) -> bool:
    p = Path(os.path.normpath(path))
    return not any(p == a or a in p.parents for a in allowed)


def test_a_traced_run_writes_only_to_its_folders_and_never_opens_a_links_target(tmp_path):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed; the snapshot test still runs")
    probe = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.decode().strip()}")
    config, links = make_sandbox(tmp_path)
    traces = tmp_path / "traces"
    traces.mkdir()
    syscalls = ",".join(sorted(CHANGING | OPENS))
    prefix = ["strace", "-ff", "-qq", "-y", "-e", f"trace={syscalls}", "-e", "signal=none"]
    prefix += ["-o", str(traces / "trace")]
    daemon = start(config, tmp_path, prefix)
    ledger = drop_everything(daemon.folders.inbox, links)
    daemon.wait_rows(len(ledger), timeout=120)
    [pid] = traced_children(daemon.proc.pid)
    os.kill(pid, signal.SIGTERM)
    assert daemon.proc.wait(60) == 0

    var = tmp_path / "var"
    folders = [var / role for role in ROLES]
    allowed = [*folders, Path("/dev/null")]
    # multiprocessing's own: the forkserver's socket folder in TMPDIR and the pool's semaphores
    # in /dev/shm, each gone when the daemon stops (the unit gives it a private /tmp and /dev).
    scratch = [tmp_path / "tmp", Path("/dev/shm")]
    targets = [str(t) for t in links.values()]
    written, followed = [], []
    traced = calls(traces, tmp_path)
    filing = [
        c
        for c, paths, _ in traced
        if c.startswith("link") and any(f"{var}/{to}/" in paths[-1] for to in ("outbox", "review"))
    ]
    assert len(filing) >= 20  # the trace saw the daemon's work
    for call, absolute, args in traced:
        secret = f"{tmp_path}/secret"
        if call in OPENS and any(p in targets or p.startswith(secret) for p in absolute):
            followed.append((call, args))
        writes = call in CHANGING or (call in OPENS and any(f in args for f in WRITE_FLAGS))
        if not writes:
            continue
        if call in ("mkdir", "mkdirat") and any(Path(absolute[0]) in f.parents for f in folders):
            continue  # creating the configured folders' parents
        kept = [p for p in absolute if outside(p, scratch) or os.path.lexists(p)]
        if any(outside(p, allowed) for p in kept):
            written.append((call, args))
    assert written == []
    assert followed == []
    assert account(ledger, daemon.folders, [daemon.folders.reports]).problems == []


# --- The pinned model.


def test_a_model_that_does_not_match_its_pin_stops_the_daemon_with_exit_5(start_daemon, tmp_path):
    model = tmp_path / "models" / "digits.onnx"
    model.parent.mkdir()
    shutil.copyfile(embedded_model(), model)
    pin = sha256_file(model)
    with open(model, "ab") as f:
        f.write(b"\0")  # replaced after review: one byte is enough
    config = write_config(tmp_path, recognition={"model": str(model), "model_sha256": pin})
    daemon = start_daemon(config, wait=False)
    assert daemon.proc.wait(60) == 5
    assert f"recognition.model_sha256 pins {pin}" in daemon.log
    assert "Traceback" not in daemon.log
    assert not (tmp_path / "var").exists()  # refused before touching anything


def test_the_pinned_model_runs(start_daemon, tmp_path):
    pin = sha256_file(embedded_model())
    daemon = start_daemon(write_config(tmp_path, recognition={"model_sha256": pin.upper()}))
    (daemon.folders.inbox / "a.png").write_bytes(digit_png(40))
    [row] = daemon.wait_rows(1)
    assert daemon.stop() == 0
    assert row["status"] == "ok" and row["model"]
