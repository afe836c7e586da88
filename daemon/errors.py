"""One error boundary: every failure the user can fix is a DigitInboxError with an exit code.

`cli.main` maps exceptions to exit codes by type in one place; everything else is a bug
(ExitCode.SOFTWARE) and is logged with its traceback.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FILES_FAILED = 1  # `classify`: at least one file got status=error (rows are still written)
    USAGE = 2  # bad command line (argparse's own code)
    CONFIG = 3  # config.yaml invalid; every problem is listed with its key path
    DATA = 4  # MNIST files missing, corrupt or failing their checksum
    MODEL = 5  # model file missing, unreadable, or breaking the contract
    RUNTIME = 6  # the daemon lost its inbox or its observer; the supervisor should restart it
    ALREADY_RUNNING = 7  # another daemon holds the same state folder (paths.state)
    INTERRUPTED = 130  # Ctrl-C outside the daemon's graceful shutdown
    SOFTWARE = 70  # a bug: please report it with the traceback


# The end of every command's --help: what each exit status means, for every command.
EXIT_CODES_HELP = """exit status:
  0    done (for `status`: the daemon is running)
  1    `classify`: some file could not be read (its row says why)
  2    bad command line
  3    invalid config (every problem is listed with its key)
  4    MNIST files missing or corrupt
  5    model missing, unreadable or not a digit-inbox model
  6    `run`: the daemon lost its inbox or watcher (restart it); `status`: not running
  7    `run`: another daemon already uses this config's state folder (paths.state)
  70   a bug: please report it with the traceback
  130  interrupted (Ctrl-C)"""


class DigitInboxError(Exception):
    """Base of all errors a user can act on; the message says how."""

    exit_code = ExitCode.SOFTWARE


class UsageError(DigitInboxError):
    exit_code = ExitCode.USAGE


class ConfigError(DigitInboxError):
    exit_code = ExitCode.CONFIG

    def __init__(self, problems: list[str], source: str = "config") -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        count = "1 problem" if len(problems) == 1 else f"{len(problems)} problems"
        super().__init__(f"{source}: {count}:\n{lines}")


class DataError(DigitInboxError):
    exit_code = ExitCode.DATA


class ModelError(DigitInboxError):
    exit_code = ExitCode.MODEL


class RuntimeFault(DigitInboxError):
    exit_code = ExitCode.RUNTIME


class AlreadyRunning(DigitInboxError):
    exit_code = ExitCode.ALREADY_RUNNING
