"""Print a YAML config with some values replaced, keeping every comment and the layout.

    python3 set_config.py config.yaml paths.inbox=/srv/digit-inbox/inbox ... > production.yaml

install.sh makes the production config from the repository's documented one this way, so the
administrator gets the same explanations next to each setting. Standard library only (it runs
before the virtual environment exists); it fails if a key is missing, so a renamed setting can't
slip through silently.
"""

from __future__ import annotations

import json
import re
import sys

PLAIN = re.compile(r"/[\w/.-]*")
KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")


def split_comment(rest: str) -> tuple[str, str]:
    """(value, comment) of what follows `key:`; a ` #` outside quotes starts the comment."""
    quote = None
    for i, char in enumerate(rest):
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i].strip(), rest[i:]
    return rest.strip(), ""


def scalar(value: str) -> str:
    """A plain YAML scalar for a simple path, else a JSON string (JSON strings are YAML too)."""
    return value if PLAIN.fullmatch(value) else json.dumps(value)


def set_values(text: str, values: dict[str, str]) -> str:
    """Replace the scalar at each dotted key path; block mappings only, as config.yaml is."""
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    todo = dict(values)
    lines = text.splitlines(keepends=True)
    for n, line in enumerate(lines):
        match = KEY.match(line)
        if not match:
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        path = ".".join(key for _, key in stack)
        if path in todo:
            _, comment = split_comment(match["rest"])
            value = scalar(todo.pop(path))
            gap = "  " if comment else ""
            end = "\n" if line.endswith("\n") else ""
            lines[n] = f"{match['indent']}{match['key']}: {value}{gap}{comment}{end}"
    if todo:
        raise SystemExit(f"set_config.py: no such key(s) in the config: {', '.join(todo)}")
    return "".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) < 2 or any("=" not in arg for arg in argv[1:]):
        raise SystemExit(__doc__)
    with open(argv[0], encoding="utf-8") as f:
        text = f.read()
    sys.stdout.write(set_values(text, dict(arg.split("=", 1) for arg in argv[1:])))


if __name__ == "__main__":
    main(sys.argv[1:])
