"""Two folders, one `digit_inbox` namespace; the daemon side never pulls in the training stack."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import digit_inbox.daemon
import digit_inbox.export

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["run", "status", "classify", "train", "export", "evaluate"]
# The daemon runs on watchdog, onnxruntime, numpy, pillow and pyyaml; none of these may load.
FORBIDDEN = ["torch", "onnx", "scipy", "cv2", "matplotlib", "sklearn", "pandas"]


def python(code: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_both_halves_import_from_the_repository_folders() -> None:
    assert Path(digit_inbox.daemon.__file__).parent == REPO / "daemon"
    assert Path(digit_inbox.export.__file__).parent == REPO / "export"


def test_python_dash_m_lists_every_subcommand() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "digit_inbox.daemon", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for command in SUBCOMMANDS:
        assert f"    {command} " in result.stdout, f"{command} missing from:\n{result.stdout}"


def test_importing_every_daemon_module_loads_no_training_or_heavy_library() -> None:
    code = f"""
import importlib, pkgutil, sys
import digit_inbox.daemon as daemon
names = [m.name for m in pkgutil.iter_modules(daemon.__path__) if m.name != "__main__"]
for name in names:
    importlib.import_module("digit_inbox.daemon." + name)
import digit_inbox.export.mnist, digit_inbox.export.evaluate  # torch-free by design
print(",".join(sorted(names)))
print(",".join(m for m in {FORBIDDEN!r} if m in sys.modules))
"""
    result = python(code)
    assert result.returncode == 0, result.stderr
    imported, loaded = result.stdout.splitlines()
    assert {"classifier", "cli", "contract", "errors", "rows"} <= set(imported.split(","))
    assert loaded == "", f"the daemon side loaded {loaded}"


def test_evaluate_works_where_torch_is_not_installed() -> None:
    code = """
import sys
sys.modules["torch"] = None  # any `import torch` now fails, as on a daemon-only install
sys.modules["onnx"] = None
import os
os.environ.pop("DIGIT_INBOX_USPS", None)  # MNIST test only: USPS through preprocessing is slow
from digit_inbox.daemon.cli import main
sys.exit(main(["evaluate"]))
"""
    result = python(code)
    assert result.returncode == 0, result.stderr
    assert "accuracy" in result.stdout
    assert "10000 MNIST test images" in result.stdout


def test_training_without_torch_says_which_extra_to_install() -> None:
    code = """
import sys
sys.modules["torch"] = None
from digit_inbox.daemon.cli import main
sys.exit(main(["train", "--dry-run", "-o", "never-written.pt"]))
"""
    result = python(code)
    assert result.returncode == 2
    assert "pip install 'digit-inbox[train]'" in result.stderr


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """Build from a copy of the tree, so concurrent builds never share a build/ folder."""
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(
        REPO,
        source,
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns(
            ".git", "runs", "build", "dist", "var", "*.egg-info", "__pycache__", ".*_cache", ".venv"
        ),
    )
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = ["pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), "."]
    subprocess.run(
        [sys.executable, "-m", *pip_wheel],
        cwd=source,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("digit_inbox-*.whl")
    return zipfile.ZipFile(built)


def test_the_wheel_holds_only_the_digit_inbox_namespace(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/", 1)[0] for name in wheel.namelist()}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert tops - dist_info == {"digit_inbox"}
    assert not any(n.startswith(("daemon/", "export/")) for n in wheel.namelist())


def test_the_wheel_ships_the_model_and_the_type_marker(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "digit_inbox/daemon/models/digits.onnx" in names
    assert "digit_inbox/daemon/py.typed" in names
    assert "digit_inbox/daemon/cli.py" in names
    assert "digit_inbox/export/evaluate.py" in names
    shipped = wheel.getinfo("digit_inbox/daemon/models/digits.onnx").file_size
    assert shipped == (REPO / "daemon/models/digits.onnx").stat().st_size


def test_the_wheel_installs_the_digit_inbox_command(wheel: zipfile.ZipFile) -> None:
    entry_points = next(n for n in wheel.namelist() if n.endswith("entry_points.txt"))
    assert "digit-inbox = digit_inbox.daemon.cli:main" in wheel.read(entry_points).decode()


def test_pdf_and_heic_readers_are_extras_that_ci_and_the_service_install() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"])
    assert "pypdfium2" not in core and "pillow-heif" not in core  # `pip install .` stays light
    assert project["optional-dependencies"]["pdf"][0].startswith("pypdfium2")
    assert project["optional-dependencies"]["heif"][0].startswith("pillow-heif")
    ci_run = (REPO / ".ci/run").read_text().splitlines()
    ci_pip = next(line for line in ci_run if "pip install" in line)
    assert "pdf" in ci_pip and "heif" in ci_pip  # so CI runs the PDF and HEIC tests
    assert '"$REPO[pdf,heif]"' in (REPO / "systemd/install.sh").read_text()
