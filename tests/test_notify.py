"""The notify protocol against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from digit_inbox.daemon.errors import ExitCode
from digit_inbox.daemon.notify import Notifier, watchdog_interval
from tests.helpers import StandIn


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket and the NOTIFY_SOCKET value that reaches it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        path = tmp_path / "notify"
        sock.bind(str(path))
        sock.settimeout(5)
        yield sock, str(path)


def receive(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_sends_ready_and_status_in_one_datagram(systemd_socket):
    sock, address = systemd_socket
    Notifier.from_env({"NOTIFY_SOCKET": address}).ready("watching /srv/inbox")
    assert receive(sock) == ["READY=1", "STATUS=watching /srv/inbox"]


def test_ready_without_status_sends_only_ready(systemd_socket):
    sock, address = systemd_socket
    Notifier.from_env({"NOTIFY_SOCKET": address}).ready()
    assert receive(sock) == ["READY=1"]


def test_status_watchdog_and_stopping_each_send_their_assignment(systemd_socket):
    sock, address = systemd_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": address})
    notifier.status("3 files queued")
    notifier.watchdog()
    notifier.stopping()
    assert [receive(sock) for _ in range(3)] == [
        ["STATUS=3 files queued"],
        ["WATCHDOG=1"],
        ["STOPPING=1"],
    ]


def test_a_newline_in_a_status_cannot_inject_another_assignment(systemd_socket):
    sock, address = systemd_socket
    Notifier.from_env({"NOTIFY_SOCKET": address}).status("evil\nREADY=1")
    assert receive(sock) == ["STATUS=evil READY=1"]


def test_abstract_socket_names_start_with_at():
    name = f"digit-inbox-test-{uuid.uuid4()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).watchdog()
        assert receive(sock) == ["WATCHDOG=1"]


def test_without_notify_socket_the_notifier_is_disabled_and_silent():
    notifier = Notifier.from_env({"WATCHDOG_USEC": "30000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("ignored")  # must not raise
    notifier.watchdog()


def test_a_vanished_socket_is_logged_once_and_never_raised(tmp_path, caplog):
    notifier = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="digit_inbox.daemon.notify"):
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
    assert len(caplog.records) == 1
    assert "cannot notify systemd" in caplog.records[0].getMessage()


def test_from_env_reads_the_real_environment_by_default(systemd_socket, monkeypatch):
    sock, address = systemd_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    notifier = Notifier.from_env()
    notifier.watchdog()
    assert receive(sock) == ["WATCHDOG=1"]
    assert notifier.watchdog_interval == 2.0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "500000"}, 0.25),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout_and_only_for_our_pid(env, expected):
    assert watchdog_interval(env, os.getpid()) == expected


def test_the_watchdog_interval_needs_a_notify_socket_to_ping(systemd_socket):
    _, address = systemd_socket
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "10000000"}
    assert Notifier.from_env(env).watchdog_interval == 5.0
    assert Notifier.from_env({"WATCHDOG_USEC": "10000000"}).watchdog_interval is None


# --- End to end: the real daemon talking to a stand-in for systemd ---------------------------

WATCHDOG_USEC = 1_000_000  # systemd would kill a daemon silent for 1 s; it should ping every 0.5 s


def systemd_env(stand_in: StandIn) -> dict[str, str]:
    return {"NOTIFY_SOCKET": str(stand_in.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}


@pytest.mark.slow
def test_the_daemon_is_ready_after_its_scan_pings_while_running_and_says_when_it_stops(
    stand_in, start_daemon
):
    daemon = start_daemon(wait=False, **systemd_env(stand_in))
    ready = stand_in.wait_for("READY=1", timeout=60, sender=daemon.proc)
    assert f"watching {daemon.folders.inbox}" in ready[-1]
    ready_at = stand_in.messages[-1][0]
    with pytest.raises(AssertionError):
        stand_in.wait_for("never sent", timeout=3, sender=daemon.proc)  # listen for 3 s
    pings = stand_in.times_of("WATCHDOG=1", since=ready_at)
    assert len(pings) >= 4, pings
    gaps = [b - a for a, b in zip([ready_at, *pings], pings, strict=False)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # systemd would never have fired
    assert min(gaps[1:]) > 0.1, gaps  # paced, not spammed

    assert daemon.stop(signal.SIGTERM) == 0
    stand_in.wait_for("STOPPING=1", timeout=5)


@pytest.mark.slow
def test_when_the_inbox_disappears_the_pings_stop_and_the_daemon_exits_for_a_restart(
    stand_in, start_daemon
):
    daemon = start_daemon(wait=False, **systemd_env(stand_in))
    stand_in.wait_for("READY=1", timeout=60, sender=daemon.proc)
    stand_in.wait_for("WATCHDOG=1", timeout=5, sender=daemon.proc)
    shutil.rmtree(daemon.folders.inbox)
    removed_at = time.monotonic()
    assert daemon.proc.wait(timeout=30) == ExitCode.RUNTIME
    stand_in.wait_for("STOPPING=1", timeout=5)
    # At most the ping of the loop turn already under way when the inbox went.
    assert len(stand_in.times_of("WATCHDOG=1", since=removed_at)) <= 1
    # Which words depend on whether the loop or the watcher noticed first.
    assert "removed or replaced" in daemon.log or "is gone" in daemon.log
