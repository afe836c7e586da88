"""`python -m tests.as_host HOST ARGS...`: `digit-inbox ARGS...` as if run on the machine HOST.

Claim names embed the host name, so tests of several hosts sharing one inbox start each daemon
through this, with `socket.gethostname` answering HOST."""

from __future__ import annotations

import socket
import sys

from digit_inbox.daemon import cli


def main() -> int:
    host = sys.argv[1]
    socket.gethostname = lambda: host
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
