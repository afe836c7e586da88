"""The notify protocol against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from digit_inbox.daemon.notify import Notifier, watchdog_interval


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
