"""What tests share besides fixtures: deadline waits, sample scans, config files, the folders
of a config, real daemons started as subprocesses, and a stand-in for systemd's notify socket.

A plain module rather than conftest.py, so test modules can import from it
(`from tests.helpers import ...`); the fixtures that use these stay in conftest.py."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench import torture
from digit_inbox.daemon.config import ROLES, Paths

DEFAULT_TIMEOUT = 60.0
# The folders of a config's `paths` section, in the order Folders lists them.


# --- Waiting on deadlines instead of sleeping.


def wait_until(
    condition: Callable[[], Any], timeout: float = DEFAULT_TIMEOUT, what: str = "condition"
) -> Any:
    """Poll `condition` until it returns something truthy, and return that; fail at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


# --- Sample scans.


@functools.cache
def mnist_test_digits() -> tuple[Any, Any]:
    """MNIST test images and labels (the daemon's tests never train on them)."""
    from digit_inbox.export import mnist

    split = mnist.load_split(mnist.resolve_data_dir(None), "test")
    return split.images, split.labels


@functools.cache
def digit_png(index: int, scale: int = 3) -> tuple[bytes, int]:
    """A PNG of MNIST test digit `index` as a scan would show it (dark ink on white), and its
    label. Cached: the same bytes for the same index, so tests that need distinct content
    use distinct indices."""
    from PIL import Image

    images, labels = mnist_test_digits()
    pixels = 255 - images[index]
    image = Image.fromarray(pixels).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), int(labels[index])


def number_png(*indices: int, scale: int = 3, gap: int = 10) -> tuple[bytes, str]:
    """A PNG of MNIST test digits written side by side (a number such as 42), and its digits."""
    from PIL import Image

    digits = [Image.open(io.BytesIO(digit_png(i, scale)[0])) for i in indices]
    side = 28 * scale
    page = Image.new("L", (side * (len(digits) + 2) + gap * len(digits), 2 * side), 255)
    for k, digit in enumerate(digits):
        page.paste(digit, (side + k * (side + gap), side // 2))
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    return buffer.getvalue(), "".join(str(digit_png(i, scale)[1]) for i in indices)


# --- Config files.


# Quick settling and one decoding worker: tests drop few files and want their rows soon.
QUICK = {
    "watch": {"settle_seconds": 0.2, "rescan_seconds": 30},
    "recognition": {"workers": 1, "batch_size": 32},
    "metrics": {"interval_seconds": 1},
}


def write_config(root: Path, **sections: dict[str, Any]) -> Path:
    """A config under `root` with folders in root/var and quick settling; sections override."""
    merged = {name: QUICK.get(name, {}) | sections.get(name, {}) for name in QUICK | sections}
    return torture.write_config(root, **merged)


def threads_left(
    before: set[threading.Thread], ignore: Callable[[threading.Thread], bool] = lambda t: False
) -> list[threading.Thread]:
    """Threads started since `before` still running after 5 s, each joined until then."""
    deadline = time.monotonic() + 5
    leaked = []
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if thread.is_alive() and not ignore(thread):
            leaked.append(thread)
    return leaked


@dataclass(frozen=True)
class Folders(Paths):
    """A daemon's folders, and the test's folder they were made under."""

    root: Path

    @classmethod
    def under(cls, root: Path) -> Folders:
        return cls(*(root / "var" / role for role in ROLES), root=root)

    def report_rows(self) -> list[dict[str, str]]:
        """Every row of every daily report, in file order."""
        rows: list[dict[str, str]] = []
        for path in sorted(self.reports.glob("*.csv")):
            with open(path, newline="", encoding="utf-8") as f:
                rows.extend(csv.DictReader(f))
        return rows

    def filed(self) -> list[Path]:
        """Every file in the outbox, review and failed folders (error notes excluded)."""
        found = []
        for folder in (self.outbox, self.review, self.failed):
            for path in folder.rglob("*"):
                note = path.name.endswith((".error.txt", ".review.txt"))
                if note or (path.is_dir() and not path.is_symlink()):
                    continue
                found.append(path)
        return sorted(found)


# --- Real daemons.


@dataclass
class DaemonProcess:
    """A `digit-inbox run` subprocess; stderr goes to a file the test can read."""

    config: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    folders: Folders
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.log}")
            return "ready:" in self.log

        wait_until(ready, timeout, "the daemon to be ready")

    def wait_rows(self, count: int, timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, str]]:
        def enough() -> list[dict[str, str]] | None:
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited with {self.proc.returncode}:\n{self.log[-5000:]}")
            rows = self.folders.report_rows()
            return rows if len(rows) >= count else None

        return wait_until(enough, timeout, f"{count} report rows")  # type: ignore[no-any-return]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEFAULT_TIMEOUT) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"daemon did not stop within {timeout:g} s:\n{self.log[-5000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def daemon_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def drop(folder: Path, name: str, data: bytes, *, rename: bool = True) -> Path:
    """Put a file into `folder` the way careful producers do: write aside, then rename in."""
    target = folder / name
    if rename:
        aside = folder.parent / f".{name}.incoming"
        aside.write_bytes(data)
        os.rename(aside, target)
    else:
        target.write_bytes(data)
    return target


# --- systemd's notify socket.


class StandIn:
    """The notify socket's receiving end: every datagram, with the monotonic time it arrived."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = path
        self.messages: list[tuple[float, list[str]]] = []

    def wait_for(
        self, line: str, timeout: float, sender: subprocess.Popen[bytes] | None = None
    ) -> list[str]:
        """Receive until a datagram contains `line` and return it; give up early if `sender`
        has exited and sent nothing more."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(min(left, 0.5))
            try:
                message = self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                if sender is not None and sender.poll() is not None:
                    raise AssertionError(f"exited ({sender.returncode}) without {line}") from None
                continue
            self.messages.append((time.monotonic(), message))
            if line in message:
                return message
        raise AssertionError(f"no {line} within {timeout} s; got {self.messages}")

    def times_of(self, line: str, since: float = 0.0) -> list[float]:
        return [t for t, message in self.messages if line in message and t >= since]


def unsure_in_review(
    tmp_path: Path, files: list[tuple[str, int]], confidence: float
) -> tuple[Path, Folders]:
    """A config whose review/ holds scans (name, MNIST test index) the daemon read as 1 with
    `confidence` (runner-up 7), each with its row in a report."""
    from datetime import date

    from digit_inbox.daemon import config, report
    from digit_inbox.daemon.rows import Row, Status

    cfg_path = write_config(tmp_path)
    folders = Folders.under(tmp_path)
    config.make_folders(config.load(cfg_path))
    rows = []
    for name, index in files:
        data, _ = digit_png(index)
        drop(folders.review, name, data)
        rows.append(
            Row(
                file=name,
                status=Status.LOW_CONFIDENCE,
                time="2026-01-01T00:00:00.000+00:00",
                digits="1",
                confidence=confidence,
                runner_up="7",
                runner_up_confidence=0.3,
                sha256=hashlib.sha256(data).hexdigest(),
                model="digits-v1",
                moved_to=f"review/{name}",
            )
        )
    with report.Report(report.path_for(folders.reports, date(2026, 1, 1))) as r:
        r.append(report.encode_line(row) for row in rows)
    return cfg_path, folders


# --- Models of other shapes.


def ensemble_model(path: Path, width: int = 128, temperature: float = 0.5) -> None:
    """Two members (Flatten, Gemm, Relu each) whose features are concatenated (2 x `width`)
    into the last Gemm, then Div(temperature) and Softmax: the shape of a two-model ensemble."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Flatten", ["image"], ["flat"])]
    weights = []
    for m in ("a", "b"):
        nodes += [
            helper.make_node("Gemm", ["flat", f"{m}W", f"{m}B"], [f"{m}z"], transB=1),
            helper.make_node("Relu", [f"{m}z"], [f"{m}f"]),
        ]
        weights += [
            numpy_helper.from_array(rng.normal(0, 0.05, (width, 784)).astype(np.float32), f"{m}W"),
            numpy_helper.from_array(np.zeros(width, np.float32), f"{m}B"),
        ]
    nodes += [
        helper.make_node("Concat", ["af", "bf"], ["features"], axis=1),
        helper.make_node("Gemm", ["features", "W", "B"], ["logits"], transB=1),
        helper.make_node("Div", ["logits", "T"], ["cooled"]),
        helper.make_node("Softmax", ["cooled"], ["probs"], axis=1),
    ]
    weights += [
        numpy_helper.from_array(rng.normal(0, 0.1, (11, 2 * width)).astype(np.float32), "W"),
        numpy_helper.from_array(np.zeros(11, np.float32), "B"),
        numpy_helper.from_array(np.array(temperature, np.float32), "T"),
    ]
    graph = helper.make_graph(
        nodes,
        "ensemble",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 11])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
