"""A stand-in for `recognize.prepare_files` that kills its worker process on a file named
`crash*`, as a decoder crash or the OOM killer would. Importable by the pool's workers."""

from __future__ import annotations

import os
from collections.abc import Sequence

from digit_inbox.daemon import recognize


def prepare_files(jobs: Sequence[recognize.Job]) -> list[recognize.Prepared]:
    if any(job[0].name.startswith("crash") for job in jobs):
        os._exit(1)
    return recognize.prepare_files(jobs)
