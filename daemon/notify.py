"""The systemd notify protocol (sd_notify), in the standard library only.

Under `Type=notify` systemd waits for READY=1 before it calls the service started, restarts it
when WATCHDOG=1 pings stop, and shows STATUS= in `systemctl status`. Outside systemd (no
NOTIFY_SOCKET) every call is a no-op, so the daemon can call these unconditionally. Sending never
raises: losing a status line must not take the daemon down, and a missed watchdog ping is
exactly what systemd is there to act on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(notify_socket: str) -> str | bytes:
    """Translate NOTIFY_SOCKET into an AF_UNIX address: '@name' is the abstract socket '\\0name'."""
    if notify_socket.startswith("@"):
        return b"\0" + notify_socket[1:].encode()
    return notify_socket


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Half the watchdog timeout in seconds, as sd_watchdog_enabled() advises; None if not ours.

    WATCHDOG_PID names the process the watchdog is meant for; a child that inherited the
    environment must not ping on its parent's behalf.
    """
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None and owner.strip() != str(pid):
        return None
    return usec / 2 / 1_000_000


class Notifier:
    """Sends state changes to the service manager; thread-safe, a no-op when not under systemd."""

    def __init__(self, address: str | bytes | None, watchdog_interval: float | None) -> None:
        self.address = address
        self.enabled = address is not None
        self.watchdog_interval = watchdog_interval if self.enabled else None
        self._lock = threading.Lock()
        self._failed = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Notifier:
        notify_socket = env.get("NOTIFY_SOCKET", "")
        address = socket_address(notify_socket) if notify_socket else None
        return cls(address, watchdog_interval(env, os.getpid()))

    def ready(self, status: str = "") -> None:
        self._send("READY=1", f"STATUS={status}" if status else "")

    def status(self, text: str) -> None:
        self._send(f"STATUS={text}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1")

    def _send(self, *assignments: str) -> None:
        if self.address is None:
            return
        # One datagram, one assignment per line; a newline inside STATUS would start a new one.
        message = "\n".join(a.replace("\n", " ") for a in assignments if a)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(message.encode(), self.address)
        except OSError as exc:
            with self._lock:
                first, self._failed = not self._failed, True
            if first:
                log.warning("cannot notify systemd at %r: %s (not logged again)", self.address, exc)
