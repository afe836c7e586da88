"""Service packaging: units systemd accepts, a sandbox the daemon works in, the installer."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from digit_inbox.daemon import config
from digit_inbox.daemon.errors import ExitCode
from tests.helpers import Folders, daemon_env, digit_png, drop, wait_until, write_config

REPO = Path(__file__).resolve().parents[1]
SYSTEMD = REPO / "systemd"
UNITS = ["digit-inbox.service", "digit-inbox@.service", "digit-inbox-review.service"]
# systemd's own units (sysinit.target and friends), which `verify --root` needs beside ours.
SYSTEM_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)
MAX_EXPOSURE = 2.0


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


def fake_root(tmp_path: Path, units: dict[str, str]) -> Path:
    """A file system root with systemd's units, ours, and an executable /opt/.../digit-inbox."""
    assert SYSTEM_UNITS is not None, "systemd-analyze is installed but its units are not"
    root = tmp_path / "root"
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for name, text in units.items():
        (root / "etc/systemd/system" / name).write_text(text)
    for name in ("opt/digit-inbox/bin/digit-inbox", "bin/kill"):  # kill: ExecReload=
        program = root / name
        program.parent.mkdir(parents=True)
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    return root


def verify(systemd_analyze: str, root: Path, *units: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [systemd_analyze, "verify", f"--root={root}", *units],
        capture_output=True,
        text=True,
        timeout=60,
    )


def shipped_units() -> dict[str, str]:
    return {name: (SYSTEMD / name).read_text() for name in UNITS}


# --- The units ------------------------------------------------------------------------------


def test_the_units_verify_without_a_single_warning(systemd_analyze, tmp_path):
    root = fake_root(tmp_path, shipped_units())
    result = verify(systemd_analyze, root, *(u.replace("@", "@lab") for u in UNITS))
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_would_catch_a_typo_and_a_missing_program(systemd_analyze, tmp_path):
    """The check above is only worth something if verify complains under the same root."""
    unit = shipped_units()["digit-inbox.service"].replace("NoNewPrivileges=", "NoNewPrivilege=")
    root = fake_root(tmp_path, {"digit-inbox.service": unit})
    assert (
        "Unknown key 'NoNewPrivilege'"
        in verify(systemd_analyze, root, "digit-inbox.service").stderr
    )
    (root / "opt/digit-inbox/bin/digit-inbox").unlink()
    result = verify(systemd_analyze, root, "digit-inbox.service")
    assert result.returncode != 0
    assert "/opt/digit-inbox/bin/digit-inbox is not executable" in result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_the_sandbox_exposure_is_at_most_2(systemd_analyze, unit):
    result = subprocess.run(
        [systemd_analyze, "security", "--offline=yes", str(SYSTEMD / unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= MAX_EXPOSURE, result.stdout


def settings(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_template_is_the_main_unit_with_per_instance_paths():
    """One hardening change must reach both units; only names and paths may differ."""
    template = (SYSTEMD / "digit-inbox@.service").read_text()
    as_main = (
        template.replace("/etc/digit-inbox/%i.yaml", "/etc/digit-inbox/config.yaml")
        .replace("/%i", "")
        .replace("@%i", "")
        .replace("digit-inbox %i:", "digit-inbox:")
    )
    assert "%i" in template
    assert settings(as_main) == settings((SYSTEMD / "digit-inbox.service").read_text())


def test_a_bad_config_exits_the_main_process_with_a_status_that_stops_the_restarts(tmp_path):
    """RestartPreventExitStatus= applies to the main process only, not to ExecStartPre= (whose
    failure is retried until the start limit): the daemon itself checks the config on start."""
    for name, text in shipped_units().items():
        lines = settings(text)
        assert not [line for line in lines if line.startswith("ExecStartPre=")], name
        [command] = [line.split("=", 1)[1] for line in lines if line.startswith("ExecStart=")]
        [prevent] = [line.split("=", 1)[1] for line in lines if line.startswith("RestartPrevent")]
        bad = tmp_path / "bad.yaml"
        bad.write_text("recognition:\n  min_confidence: 7\n")
        program, *args = command.split()
        assert program == "/opt/digit-inbox/bin/digit-inbox", name
        args = [str(bad) if arg.startswith("/etc/digit-inbox/") else arg for arg in args]
        result = subprocess.run(
            [sys.executable, "-m", "digit_inbox.daemon", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=daemon_env(),
        )
        assert result.returncode == 3, result.stderr
        assert "recognition.min_confidence" in result.stderr
        assert "3" in prevent.split(), name
        # Nor is any other error a restart cannot fix (the daemon's: a model, a second daemon).
        unfixable = [ExitCode.USAGE, ExitCode.CONFIG]
        if "review" not in name:
            unfixable += [ExitCode.MODEL, ExitCode.ALREADY_RUNNING]
        assert {str(int(code)) for code in unfixable} <= set(prevent.split()), name


# --- What the sandbox forbids, tried on the daemon's own work ---------------------------------

# What the service does: its imports, a folder watch, a WAL journal, hard links and renames, a
# decode (PNG, and the PDF and HEIC in $SAMPLES, see `samples`) and an inference.
WORKLOAD = """
import os, sqlite3, tempfile, numpy as np
from pathlib import Path
from PIL import Image
from digit_inbox.daemon import decode
from watchdog.observers import Observer
from watchdog.events import FileSystemEventHandler
from digit_inbox.daemon.classifier import Classifier
folder = tempfile.mkdtemp()
Image.new("L", (64, 64), 255).save(folder + "/scan.png")
Image.open(folder + "/scan.png").convert("L").resize((28, 28)).load()
for name, fmt in (("scan.pdf", "PDF"), ("scan.heic", "HEIF")):
    assert decode.decode(Path(os.environ["SAMPLES"], name)).format == fmt, name
observer = Observer()
observer.schedule(FileSystemEventHandler(), folder)
observer.start(); observer.stop(); observer.join()
assert " / " in open("/proc/self/mountinfo").read()  # how the watcher tells NFS from local disks
journal = sqlite3.connect(folder + "/journal.sqlite3")
journal.execute("pragma journal_mode=wal"); journal.execute("pragma synchronous=full")
with journal:
    journal.execute("create table files (name text)")
os.link(folder + "/scan.png", folder + "/filed.png")
os.rename(folder + "/filed.png", folder + "/7.png")
probs = Classifier().session.run(None, {"image": np.zeros((4, 1, 28, 28), np.float32)})[0]
assert probs.shape == (4, 11), probs.shape  # ten digits, "not one digit"
print("workload ok")
"""

# A user, mount and pid namespace of our own, where we may mount a /proc like systemd's.
UNSHARE = ["unshare", "--user", "--map-root-user", "--mount", "--pid", "--fork"]

MDWE = """
import ctypes, mmap
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
    raise SystemExit(77)
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    pass
else:
    raise SystemExit("PR_SET_MDWE did not refuse a writable and executable mapping")
"""


@pytest.fixture
def samples(tmp_path: Path) -> dict[str, str]:
    """The environment for WORKLOAD: a PDF and a HEIC made outside the sandbox (the encoders are
    no part of the daemon), for the decoding workers to read inside it."""
    pillow_heif = pytest.importorskip("pillow_heif", reason="the [heif] extra is not installed")
    pytest.importorskip("pypdfium2", reason="the [pdf] extra is not installed")
    folder = tmp_path / "samples"
    folder.mkdir()
    page = Image.new("RGB", (64, 64), "white")
    page.save(folder / "scan.pdf")
    pillow_heif.from_pillow(page).save(folder / "scan.heic")
    return {**os.environ, "SAMPLES": str(folder)}


@pytest.mark.skipif(sys.platform != "linux", reason="MemoryDenyWriteExecute is Linux only")
def test_the_daemon_works_when_writable_memory_can_never_become_executable(samples):
    """MemoryDenyWriteExecute=yes: onnxruntime must not JIT, Python must not need W+X pages."""
    result = subprocess.run(
        [sys.executable, "-c", MDWE + WORKLOAD],
        capture_output=True,
        text=True,
        timeout=120,
        env=samples,
    )
    if result.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    assert result.returncode == 0, result.stderr
    assert "workload ok" in result.stdout


def test_the_daemon_works_with_a_proc_that_shows_processes_only(tmp_path, samples):
    """ProtectProc=invisible + ProcSubset=pid: no /proc/cpuinfo, and inference still runs."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    command = (
        "mount -t proc -o subset=pid,hidepid=invisible proc /proc || exit 77; "
        'test ! -e /proc/cpuinfo || exit 78; exec "$0" "$1"'
    )
    result = subprocess.run(
        [*UNSHARE, "sh", "-c", command, sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=samples,
    )
    if result.returncode == 77 or "unshare failed" in result.stderr:
        pytest.skip(f"cannot mount a restricted /proc here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert "workload ok" in result.stdout


# systemd's SystemCallFilter= and (on systemd < 254) MemoryDenyWriteExecute= are seccomp filters;
# this one is built the same way from the unit's own lines: allowed calls pass, any other call,
# any mprotect() adding PROT_EXEC and any mmap() both writable and executable fail with EPERM.
SECCOMP = """
import ctypes, os, struct, sys
ALLOW, EPERM = 0x7FFF0000, 0x00050001
LD, JEQ, JGE, JSET, AND, RET = 0x20, 0x15, 0x35, 0x45, 0x54, 0x06
W, X = 2, 4
prog = [(LD, 0, 0, 4), (JEQ, 1, 0, 0xC000003E), (RET, 0, 0, EPERM),  # x86-64 only
        (LD, 0, 0, 0), (JGE, 0, 1, 0x40000000), (RET, 0, 0, EPERM)]  # no x32 calls
for nr in (10, 329):  # mprotect, pkey_mprotect: never PROT_EXEC (arg 2 at offset 32)
    prog += [(JEQ, 0, 4, nr), (LD, 0, 0, 32), (JSET, 0, 1, X), (RET, 0, 0, EPERM),
             (RET, 0, 0, ALLOW)]
prog += [(JEQ, 0, 5, 9), (LD, 0, 0, 32), (AND, 0, 0, W | X), (JEQ, 0, 1, W | X),  # mmap
         (RET, 0, 0, EPERM), (RET, 0, 0, ALLOW)]
for nr in map(int, sys.argv[1].split(",")):
    prog += [(JEQ, 0, 1, nr), (RET, 0, 0, ALLOW)]
prog.append((RET, 0, 0, EPERM))
code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
program = Program(len(prog), ctypes.addressof(code))
assert libc.prctl(22, 2, ctypes.byref(program), 0, 0) == 0, os.strerror(ctypes.get_errno())
os.execv(sys.argv[2], sys.argv[2:])
"""

# What the filter must refuse, so a passing workload means something.
REFUSED = """
import mmap, os
for name, call in [("sched_setaffinity", lambda: os.sched_setaffinity(0, {0})),
                   ("W+X mmap", lambda: mmap.mmap(-1, 4096, prot=7))]:
    try:
        call()
    except PermissionError:
        continue
    raise SystemExit(f"the filter let {name} through")
print("refused ok")
"""


def syscall_groups(systemd_analyze: str, group: str) -> set[str]:
    """The system call names in `group` (e.g. @system-service), nested groups expanded."""
    out = subprocess.run(
        [systemd_analyze, "syscall-filter", group], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            names |= syscall_groups(systemd_analyze, item) if item.startswith("@") else {item}
    return names


def allowed_syscalls(systemd_analyze: str, unit: str) -> set[str]:
    """SystemCallFilter= lines in order: an allow list, then `~` lines taking calls away."""
    allowed: set[str] = set()
    for line in unit.splitlines():
        if line.startswith("SystemCallFilter="):
            value = line.split("=", 1)[1]
            deny = value.startswith("~")
            names: set[str] = set()
            for item in value.lstrip("~").split():
                names |= syscall_groups(systemd_analyze, item) if item[0] == "@" else {item}
            allowed = allowed - names if deny else allowed | names
    return allowed


@pytest.fixture(scope="module")
def allowed_numbers(systemd_analyze: str) -> str:
    """The x86-64 numbers of the system calls the unit allows, as SECCOMP's argument."""
    header = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    if platform.machine() != "x86_64" or not header.is_file():
        pytest.skip("needs x86-64 and its system call numbers (apt-get install linux-libc-dev)")
    numbers = dict(re.findall(r"#define __NR_(\w+) (\d+)", header.read_text()))
    allowed = allowed_syscalls(systemd_analyze, (SYSTEMD / "digit-inbox.service").read_text())
    assert "read" in allowed and "mbind" not in allowed  # @system-service minus @resources
    return ",".join(sorted(numbers[name] for name in allowed if name in numbers))


def test_the_daemon_works_under_the_units_system_call_filter(allowed_numbers, tmp_path, samples):
    for code in (REFUSED, WORKLOAD):
        script = tmp_path / "script.py"
        script.write_text(code)
        result = subprocess.run(
            [sys.executable, "-c", SECCOMP, allowed_numbers, sys.executable, str(script)],
            capture_output=True,
            text=True,
            timeout=120,
            env=samples,
        )
        assert result.returncode == 0, result.stderr
        assert " ok" in result.stdout


# --- The installer ----------------------------------------------------------------------------

TEST_ENV = {"DIGIT_INBOX_SKIP_USER": "1", "DIGIT_INBOX_SKIP_VENV": "1", "PYTHON": sys.executable}


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """install.sh under POSIX sh into the throwaway `root`, without user or virtualenv."""
    return subprocess.run(
        ["sh", str(SYSTEMD / "install.sh"), *args],
        env={**os.environ, **TEST_ENV, "DESTDIR": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(root: Path) -> dict[Path, tuple[int, bytes | None]]:
    """Every path under `root` with its mode and, for files, content."""
    return {
        p: (p.lstat().st_mode, p.read_bytes() if p.is_file() else None) for p in root.rglob("*")
    }


def test_install_creates_folders_config_and_units_and_a_second_run_changes_nothing(tmp_path):
    root = tmp_path / "root"
    first = install(root)
    assert first.returncode == 0, first.stderr
    data = root / "srv/digit-inbox"
    for folder in ("inbox", "outbox", "failed", "review", "reports"):
        assert mode(data / folder) == 0o2770, folder  # setgid, group-writable, private
    for unit in UNITS:
        assert (root / "etc/systemd/system" / unit).read_text() == (SYSTEMD / unit).read_text()
    config = root / "etc/digit-inbox/config.yaml"
    assert mode(config) == 0o640
    settings = yaml.safe_load(config.read_text())
    assert settings["paths"]["inbox"] == "/srv/digit-inbox/inbox"
    assert settings["paths"]["state"] == "/var/lib/digit-inbox"
    assert settings["metrics"]["textfile"] == "/var/lib/digit-inbox/digit-inbox.prom"

    config.write_text(config.read_text() + "# my own setting\n")
    (data / "inbox/scan.png").write_bytes(b"not yet read")
    before = snapshot(root)
    second = install(root)
    assert second.returncode == 0, second.stderr
    assert "kept /etc/digit-inbox/config.yaml" in second.stdout
    assert snapshot(root) == before


def test_the_production_config_keeps_every_comment_and_loads(tmp_path):
    root = tmp_path / "root"
    assert install(root).returncode == 0
    installed = (root / "etc/digit-inbox/config.yaml").read_text()
    original = (REPO / "config.yaml").read_text()

    def comments(text: str) -> list[str]:
        return [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]

    assert comments(installed) == comments(original)
    # The daemon's own loader accepts it once the paths exist (here: under a throwaway root).
    relocated = installed.replace("/srv/", f"{root}/srv/").replace("/var/", f"{root}/var/")
    (tmp_path / "config.yaml").write_text(relocated)
    cfg = config.load(tmp_path / "config.yaml")
    assert cfg.paths.inbox == root / "srv/digit-inbox/inbox"


def test_an_instance_gets_its_own_folders_config_and_state(tmp_path):
    root = tmp_path / "root"
    result = install(root, "--instance", "lab")
    assert result.returncode == 0, result.stderr
    assert "systemctl enable --now digit-inbox@lab" in result.stdout
    assert mode(root / "srv/digit-inbox/lab/inbox") == 0o2770
    settings = yaml.safe_load((root / "etc/digit-inbox/lab.yaml").read_text())
    assert settings["paths"]["inbox"] == "/srv/digit-inbox/lab/inbox"
    assert settings["paths"]["state"] == "/var/lib/digit-inbox/lab"
    assert not (root / "srv/digit-inbox/inbox").exists()


@pytest.mark.parametrize("name", ["a b", "../etc", "x-y", ""])
def test_instance_names_that_could_escape_their_folders_are_refused(tmp_path, name):
    result = install(tmp_path / "root", "--instance", name)
    assert result.returncode != 0
    assert not (tmp_path / "root").exists()


def test_uninstall_removes_program_and_units_but_never_data_or_config(tmp_path):
    root = tmp_path / "root"
    assert install(root).returncode == 0
    (root / "opt/digit-inbox/bin").mkdir(parents=True)  # as if the virtualenv were there
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "digit-inbox.service").symlink_to("/etc/systemd/system/digit-inbox.service")
    (root / "srv/digit-inbox/outbox/7").mkdir()
    (root / "srv/digit-inbox/outbox/7/scan.png").write_bytes(b"filed")

    result = install(root, "--uninstall")
    assert result.returncode == 0, result.stderr
    assert not (root / "opt/digit-inbox").exists()
    assert not any((root / "etc/systemd/system").rglob("digit-inbox*"))
    assert (root / "srv/digit-inbox/outbox/7/scan.png").read_bytes() == b"filed"
    assert (root / "etc/digit-inbox/config.yaml").is_file()
    assert "kept your data" in result.stdout


def test_install_without_destdir_or_root_refuses_with_a_hint():
    if os.geteuid() == 0:
        pytest.skip("runs as root here")
    result = subprocess.run(["sh", str(SYSTEMD / "install.sh")], capture_output=True, text=True)
    assert result.returncode != 0 and "root" in result.stderr


# --- set_config.py, the config rewriter -------------------------------------------------------


def set_config(text: str, *assignments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SYSTEMD / "set_config.py"), "/dev/stdin", *assignments],
        input=text,
        capture_output=True,
        text=True,
    )


def test_set_config_replaces_values_and_keeps_comments_and_other_keys():
    text = (
        "# top\n"
        "paths:\n"
        "  # where scans arrive\n"
        "  inbox: ./var/inbox   # relative\n"
        "  outbox: './var/#out'\n"
        "watch:\n"
        "  inbox: not-this-one\n"
    )
    result = set_config(text, "paths.inbox=/srv/in", "paths.outbox=/srv/with space")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        "# top\n"
        "paths:\n"
        "  # where scans arrive\n"
        "  inbox: /srv/in  # relative\n"
        '  outbox: "/srv/with space"\n'
        "watch:\n"
        "  inbox: not-this-one\n"
    )
    assert yaml.safe_load(result.stdout)["paths"]["outbox"] == "/srv/with space"


def test_set_config_fails_on_a_key_the_config_does_not_have():
    result = set_config("paths:\n  inbox: x\n", "paths.inbox=/a", "paths.nope=/b")
    assert result.returncode != 0
    assert "paths.nope" in result.stderr


# --- The real daemon in an emulation of the unit's whole sandbox ---------------------------------

# ProtectSystem=strict + ReadWritePaths= (every mount read-only but the data), PrivateTmp= (an
# empty writable /var/tmp as TMPDIR: /tmp holds the test's own folders), ProcSubset=pid +
# ProtectProc=invisible, PrivateNetwork= (a new network namespace, from unshare --net) and
# CapabilityBoundingSet= (empty); the seccomp filter above comes on top.
SANDBOX = """set -eu
data=$1; shift
mount -t proc -o subset=pid,hidepid=invisible proc /proc || exit 77
for point in $(awk '{ print $5 }' /proc/self/mountinfo | sort -u); do
    case $point in /proc*|/dev*|/sys*) continue ;; esac
    mount -o remount,bind,ro "$point" || exit 77
done
mount --bind "$data" "$data" && mount -o remount,bind,rw "$data" || exit 77
mount -t tmpfs tmpfs /var/tmp || exit 77
exec setpriv --bounding-set=-all --inh-caps=-all "$@"
"""


@pytest.mark.slow
def test_the_daemon_files_a_scan_inside_the_units_sandbox(allowed_numbers, tmp_path, stand_in):
    if not shutil.which("setpriv") or not shutil.which("unshare"):
        pytest.skip("needs util-linux's setpriv and unshare")
    # Two decoding processes and a backlog bigger than one pool task: the pool path runs too.
    config = write_config(tmp_path, recognition={"workers": 2})
    folders = Folders.under(tmp_path)
    folders.inbox.mkdir(parents=True)
    scans = 10
    for index in range(scans):
        drop(folders.inbox, f"scan-{index}.png", digit_png(index)[0])
    daemon = [sys.executable, "-m", "digit_inbox.daemon", "run", "--config", str(config)]
    command = [*UNSHARE, "--net", "sh", "-c", SANDBOX, "sh", str(tmp_path / "var"),
               sys.executable, "-c", SECCOMP, allowed_numbers, *daemon]  # fmt: skip
    env = daemon_env(NOTIFY_SOCKET=str(stand_in.path), TMPDIR="/var/tmp", ORT_DISABLE_TELEMETRY="1")
    log = tmp_path / "daemon.log"
    with open(log, "wb") as out:
        sandbox = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            stand_in.wait_for("READY=1", timeout=60, sender=sandbox)
        except AssertionError:
            if sandbox.poll() == 77:
                pytest.skip(f"cannot build the sandbox here: {log.read_text()}")
            raise
        rows = wait_until(lambda: len(folders.report_rows()) == scans and folders.report_rows())
        assert [row for row in rows if row["status"] == "error"] == []
        assert len(folders.filed()) == scans and not list(folders.inbox.glob("*.png"))
        # The daemon is the first process of its pid namespace, the only child of unshare.
        daemon_pid = int(Path(f"/proc/{sandbox.pid}/task/{sandbox.pid}/children").read_text())
        os.kill(daemon_pid, signal.SIGTERM)
        assert sandbox.wait(timeout=30) == 0
    except BaseException:
        print(log.read_text(errors="replace"))
        raise
    finally:
        if sandbox.poll() is None:
            sandbox.kill()
            sandbox.wait()
