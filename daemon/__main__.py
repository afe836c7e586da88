import sys

from digit_inbox.daemon.cli import main

sys.exit(main())
