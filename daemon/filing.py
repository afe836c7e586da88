"""Moving files without ever losing or overwriting one: claims, destinations, error notes.

Two primitives carry every move, and neither can replace an existing name:
- `claim`: rename from the inbox into `processing/` under a unique claim name. Of two daemons
  racing for one file exactly one rename succeeds; the other gets FileNotFoundError.
- `place`: hard-link the claim at its destination; the link fails with FileExistsError if the
  name is taken, so the caller picks the next free name (`scan_1.png`, `scan_2.png`, ...). Where
  hard links are refused (folders, filesystems without them, fs.protected_hardlinks on a file
  owned by someone else), a rename with RENAME_NOREPLACE does the same in one step. A hard link
  to a file the user also linked elsewhere is fine: only the inbox's name is moved.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import socket
import stat
import threading
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

AT_FDCWD = -100
RENAME_NOREPLACE = 1
# A file name is at most 255 bytes on the filesystems the daemon runs on.
NAME_MAX = 255
# A failed file gets a note `<name>.error.txt` beside it, a file in review `<name>.review.txt`;
# their names leave room for it.
NOTE_SUFFIX = ".error.txt"
REVIEW_SUFFIX = ".review.txt"
NOTE_SUFFIXES = (NOTE_SUFFIX, REVIEW_SUFFIX)
NOTED_NAME_MAX = NAME_MAX - max(len(suffix) for suffix in NOTE_SUFFIXES)
# Errors after which a hard link cannot work but a rename can.
LINK_REFUSED = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EISDIR}
# Errors an operator can fix while the daemon waits (disk full, permissions, read-only mount):
# the file stays claimed and the step is retried, never turned into a failed scan.
TRANSIENT = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EROFS,
    errno.EIO,
    errno.ENOENT,
    errno.EMFILE,
    errno.ENFILE,
    errno.ENOMEM,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ETIMEDOUT,
    errno.ESTALE,
    errno.EXDEV,
}


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in TRANSIENT


class ClaimNames:
    """Unique claim names: `<host>.<pid>.<tag>.<counter>_<original name>`.

    `tag` names the journal (state folder) that records the claim, so a daemon recognises its own
    claims after a crash and leaves those of another daemon sharing the inbox alone.
    """

    def __init__(self, tag: str) -> None:
        host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())
        self.prefix = f"{host[:40] or 'host'}.{os.getpid()}.{tag}."
        self.tag = tag
        self._counter = 0
        self._lock = threading.Lock()

    def next_id(self) -> str:
        with self._lock:
            self._counter += 1
            return f"{self.prefix}{self._counter:08d}"

    @staticmethod
    def file_name(claim_id: str, original_name: str) -> str:
        return fit(f"{claim_id}_{original_name}")

    @staticmethod
    def parse(file_name: str) -> tuple[str, str, str] | None:
        """(claim id, tag, original name) of a claim file name, or None if it is not one."""
        claim_id, sep, original = file_name.partition("_")
        parts = claim_id.split(".")
        if not sep or len(parts) != 4 or not parts[1].isdigit() or not parts[3].isdigit():
            return None
        return claim_id, parts[2], original


def fit(name: str, suffix: str = "", limit: int = NAME_MAX) -> str:
    """`name` + `suffix` shortened (keeping the extension) to fit `limit` bytes."""
    stem, ext = os.path.splitext(name)
    while len(os.fsencode(stem + suffix + ext)) > limit and stem:
        stem = stem[:-1]
    return stem + suffix + ext


def candidates(name: str, limit: int = NAME_MAX) -> Iterator[str]:
    """`name`, then `name_1`, `name_2`, ... with the number before the extension."""
    yield fit(name, limit=limit)
    n = 1
    while True:
        yield fit(name, f"_{n}", limit)
        n += 1


def free_name(folder: Path, name: str, limit: int = NAME_MAX, taken: Collection[Path] = ()) -> Path:
    """The first candidate name not taken in `folder` right now, nor in `taken` (names already
    given out in this batch); a hint: `place` decides."""
    for candidate in candidates(name, limit):
        path = folder / candidate
        if path in taken:
            continue
        if not any(os.path.lexists(f"{path}{end}") for end in ("", *NOTE_SUFFIXES)):
            return path
    raise AssertionError("unreachable")


def claim(source: Path, target: Path) -> None:
    """Move `source` to the claim name `target`; FileNotFoundError if another process won."""
    os.rename(source, target)


def place(claimed: Path, dest: Path) -> None:
    """Put the claimed file at `dest` without replacing anything; FileExistsError if taken."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(claimed, dest, follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno not in LINK_REFUSED:
            raise
        log.debug("hard link refused for %s (%s); renaming instead", dest, exc.strerror)
    rename_noreplace(claimed, dest)


def _load_renameat2() -> Any:
    """glibc's renameat2(2), or None where the C library lacks it."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        function = libc.renameat2
    except (AttributeError, OSError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def rename_noreplace(source: Path, dest: Path) -> None:
    """rename(2) that fails with FileExistsError instead of replacing `dest`."""
    if _renameat2 is not None:
        result = _renameat2(
            AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(dest), RENAME_NOREPLACE
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(source), None, str(dest))
    # No RENAME_NOREPLACE here (old kernel, NFS): check, then rename. A name appearing in the
    # microseconds between would be replaced; only this fallback has that window.
    if os.path.lexists(dest):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dest))
    os.rename(source, dest)


def inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def kind(mode: int) -> str:
    """What a non-regular file is, in words for the report's error column."""
    if stat.S_ISLNK(mode):
        return "a symbolic link (never followed)"
    if stat.S_ISDIR(mode):
        return "a folder (set watch.recursive: true to read the scans inside folders)"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a file"
    return "not a regular file"


def write_note(dest: Path, text: str, suffix: str = NOTE_SUFFIX) -> None:
    """Write `<dest>.error.txt` (or another suffix) beside a filed file, unless it is there."""
    note = Path(f"{dest}{suffix}")
    try:
        fd = os.open(note, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        return
    try:
        os.write(fd, text.encode("utf-8", "backslashreplace"))
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        note.unlink(missing_ok=True)
        raise
    os.close(fd)


def release(claimed: Path, dest: Path) -> bool:
    """Remove the claim's name once `dest` is the same file (nothing to do after a rename).

    False, and the claim is kept, if `dest` no longer holds the file: someone moved it away,
    and the claim is now its only copy.
    """
    try:
        st = os.lstat(claimed)
    except FileNotFoundError:
        return True
    if inode(dest) != (st.st_dev, st.st_ino):
        return False
    os.unlink(claimed)
    return True
