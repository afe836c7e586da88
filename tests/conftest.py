"""Fixtures shared by the whole suite: thread-leak checks, real `digit-inbox run` daemons
started as subprocesses on temporary folders, and a stand-in for systemd's notify socket.
Helpers that tests import live in tests/helpers.py."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    DaemonProcess,
    Folders,
    StandIn,
    daemon_env,
    threads_left,
    write_config,
)

# --- Threads.


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread running (an observer or worker not stopped and joined)."""
    before = set(threading.enumerate())
    yield
    leaked = threads_left(before)
    assert not leaked, f"threads left running: {leaked}"


# --- Real daemons.


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Start `digit-inbox run --config CONFIG` (a fresh log each time); all are killed at the end.

    Call with the config path (default: a `write_config(tmp_path)` one), `wait=False` to skip
    waiting for readiness, `host` to run it as if on that machine (tests/as_host.py), and extra
    environment variables as keywords.
    """
    started: list[DaemonProcess] = []

    def start(
        config: Path | None = None, *, wait: bool = True, host: str | None = None, **env: str
    ) -> DaemonProcess:
        config = config or write_config(tmp_path)
        log_path = tmp_path / f"daemon-{len(started)}.log"
        command = ["digit_inbox.daemon"] if host is None else ["tests.as_host", host]
        if host is not None:
            env.setdefault("PYTHONPATH", str(Path(__file__).parent.parent))
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", *command, "run", "--config", str(config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=daemon_env(**env),
                cwd=tmp_path,
            )
        daemon = DaemonProcess(config, log_path, proc, Folders.under(config.parent), env)
        started.append(daemon)
        if wait:
            daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


# --- systemd's notify socket.


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[StandIn]:
    receiver = StandIn(tmp_path / "notify")
    yield receiver
    receiver.sock.close()
