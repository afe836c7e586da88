"""The config keys that messages outside config.py name, by their full key path.

Defined once here (config.py imports the decoder, so the decoder cannot import config.py);
tests/test_config.py checks that each is a key of config.schema, so renaming a key cannot leave
a message pointing at the old name.
"""

from __future__ import annotations

MAX_PIXELS = "recognition.max_pixels"
MAX_PAGES = "recognition.max_pages"
STATE = "paths.state"
EXTENSIONS = "watch.extensions"
