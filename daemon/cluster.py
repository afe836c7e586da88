"""Read scans on a Dask cluster, when one machine is not enough (the `[dask]` extra).

The file list is cut into chunks; each chunk is one Dask task that runs the same `Reader` as
`classify` (in the worker's process, `workers=0`), and the rows come back to the client, which
writes the one CSV. Each worker process loads the model once, on its first task, and keeps it.
Dask does the scheduling: a task whose worker dies is run again elsewhere, and its rows only
count once it finished, so every file gets exactly one row. Rows arrive in the order chunks
finish, not in the order of the files.

The workers open the files themselves, by the client's absolute path: every worker must see
the scans (and `--model`, `--debug-dir`) at the same path, on shared storage mounted at the same
place. A worker that cannot see a file's folder stops the run with a UsageError naming it.

    dask scheduler                                   # on one machine: tcp://HOST:8786
    dask worker tcp://HOST:8786 --nworkers auto --nthreads 1   # on every machine
    digit-inbox classify --scheduler tcp://HOST:8786 --output rows.csv --resume /archive

From Python, with any `distributed.Client` (a LocalCluster's too):

    from digit_inbox.daemon import cluster
    for row in cluster.read(client, [(Path("/archive/a.png"), "a.png"), ...]):
        ...
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from digit_inbox.daemon.contract import DEFAULT_MIN_CONFIDENCE
from digit_inbox.daemon.decode import DEFAULT_MAX_PIXELS
from digit_inbox.daemon.errors import UsageError
from digit_inbox.daemon.recognize import Reader
from digit_inbox.daemon.rows import Row, Status

if TYPE_CHECKING:
    from distributed import Client, Future

log = logging.getLogger(__name__)

CHUNK_FILES = 32  # ~0.2 s of work per task: small against Dask's ~1 ms per task, still balanced
TASKS_PER_THREAD = 3  # in flight per worker thread: no thread waits for the client
CRASHED = "the decoder crashed on this file (it took a Dask worker down with it)"


@dataclass(frozen=True)
class Options:
    """What every worker needs to read like `classify` does; paths as the workers see them."""

    model: str | None = None
    min_confidence: float = DEFAULT_MIN_CONFIDENCE
    max_pixels: int = DEFAULT_MAX_PIXELS
    debug_dir: str | None = None
    digits: tuple[int, int] | None = None  # how many digits a reading must have; None: any


class FolderNotShared(UsageError):
    """A worker cannot see a folder the client sees: the scans are not on shared storage."""


_readers: dict[Options, Reader] = {}
_readers_lock = threading.Lock()


def reader_for(options: Options) -> Reader:
    """This worker process's Reader for `options`: the model is loaded once, not per task."""
    with _readers_lock:
        if options not in _readers:
            _readers[options] = Reader(
                Path(options.model) if options.model else None,
                min_confidence=options.min_confidence,
                max_pixels=options.max_pixels,
                workers=0,
                debug_dir=Path(options.debug_dir) if options.debug_dir else None,
                digits=options.digits,
            )
        return _readers[options]


def read_chunk(chunk: Sequence[tuple[str, str]], options: Options) -> list[Row]:
    """One task, run on a worker: check it sees the files' folders, then read them."""
    for folder in sorted({os.path.dirname(path) for path, _ in chunk}):
        if not os.path.isdir(folder):
            raise FolderNotShared(
                f"the Dask worker on {socket.gethostname()} cannot see the folder {folder}: "
                "every worker must see the scans at the same path as this machine (shared "
                "storage mounted at the same place)"
            )
    return reader_for(options).read([(Path(path), name) for path, name in chunk])


@contextmanager
def connect(scheduler: str) -> Iterator[Client]:
    """A client of the scheduler at `scheduler` (tcp://HOST:8786), closed at the end."""
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--scheduler needs Dask: pip install 'digit-inbox[dask]'") from None
    try:
        client = Client(scheduler)  # waits distributed.comm.timeouts.connect (30 s)
    except OSError as exc:
        raise UsageError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    try:
        yield client
    finally:
        client.close()


def read(
    client: Client,
    items: Sequence[tuple[Path, str]],
    options: Options | None = None,
    chunk_files: int = CHUNK_FILES,
) -> Iterator[Row]:
    """One Row per (path, name for the `file` column), as chunks finish on the cluster.

    A few tasks per worker thread are in flight at a time, so a million files never sit in
    the scheduler at once. A chunk that keeps killing its workers (Dask gives up after
    `distributed.scheduler.allowed-failures`) is tried file by file, and only a file that
    still kills them gets an error row, like a crashing decoder in `classify`.
    """
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    options = options or Options()
    jobs = [(str(path.absolute()), name) for path, name in items]
    chunks = deque(jobs[i : i + chunk_files] for i in range(0, len(jobs), chunk_files))
    threads = max(1, sum(client.nthreads().values()))
    running = as_completed()
    chunk_of: dict[Future, list[tuple[str, str]]] = {}

    def submit(chunk: list[tuple[str, str]]) -> None:
        future = client.submit(read_chunk, chunk, options, pure=False)
        chunk_of[future] = chunk
        running.add(future)

    def keep_busy() -> None:
        """A few tasks per worker thread in flight: no idle worker, no huge queue."""
        while chunks and len(chunk_of) < TASKS_PER_THREAD * threads:
            submit(chunks.popleft())

    keep_busy()
    for future in running:
        chunk = chunk_of.pop(future)
        try:
            rows = future.result()
        except KilledWorker:
            if len(chunk) > 1:
                log.warning("a chunk of %d files kept killing workers: one by one", len(chunk))
                chunks.extendleft([job] for job in reversed(chunk))
                rows = []
            else:
                rows = [Row(file=chunk[0][1], status=Status.ERROR, error=CRASHED)]
        finally:
            future.release()
        yield from rows
        keep_busy()
