"""The daemon's configuration: one YAML file, validated once into a frozen dataclass.

Every problem is collected before anything is reported, so a user fixes a config in one round
instead of one error per restart: unknown keys, wrong types, out-of-range values and impossible
folder combinations all come back together in one `ConfigError`, each with its key path.
Relative paths resolve against the config file's folder, so a config and its `./var/` tree can
be moved together. The documented defaults live in `config.yaml` at the repository root; the
same defaults are here so an empty file is a valid config.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import reprlib
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from digit_inbox.daemon import reading
from digit_inbox.daemon.contract import DEFAULT_MIN_CONFIDENCE
from digit_inbox.daemon.decode import DEFAULT_MAX_PAGES, EXTENSIONS
from digit_inbox.daemon.errors import ConfigError
from digit_inbox.daemon.filing import NAME_MAX

log = logging.getLogger(__name__)

T = TypeVar("T")

OBSERVERS = ("auto", "inotify", "polling")
DUPLICATE_POLICIES = ("flag", "review")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_LISTEN = "127.0.0.1:8765"  # the review page: loopback only, no token needed
LAYOUT_FIELDS = ("digits", "digit", "date", "year", "month", "day")  # digit: older name
# What decode.py reads (a test keeps the two in step); other files are failed unopened.
DEFAULT_EXTENSIONS = list(EXTENSIONS)  # every format the decoder reads
# Names that writers use while a file is incomplete, and files operating systems leave behind.
DEFAULT_IGNORE = [
    "*.tmp",
    "*.temp",
    "*.part",
    "*.partial",
    "*.crdownload",
    "*.download",
    "~*",
    "*~",
    "*.swp",
    "*.swx",
]
DEFAULT_IGNORE += ["Thumbs.db", "desktop.ini"]
# The notes the daemon writes beside failed and review files, if dropped back with their file.
DEFAULT_IGNORE += ["*.error.txt", "*.review.txt"]
# The daemon's own folder inside the inbox: hidden, so it is never mistaken for a scan, and on
# the inbox's filesystem, so claiming a file is one atomic rename.
WORK_DIR = ".digit-inbox"


@dataclass(frozen=True)
class Paths:
    inbox: Path
    outbox: Path
    review: Path
    failed: Path
    reports: Path
    state: Path

    @property
    def processing(self) -> Path:
        """Where files wait, claimed, while they are read and filed."""
        return self.inbox / WORK_DIR / "processing"

    @property
    def data_root(self) -> Path:
        """The folder `moved_to` in the reports is relative to: the filing folders' parent."""
        return Path(os.path.commonpath([self.outbox, self.review, self.failed]))


# The folder roles, in the order config.yaml lists them.
ROLES = tuple(f.name for f in fields(Paths))


@dataclass(frozen=True)
class Watch:
    observer: str
    polling_interval_seconds: float
    recursive: bool
    settle_seconds: float
    empty_timeout_seconds: float
    rescan_seconds: float
    extensions: tuple[str, ...]
    ignore: tuple[str, ...]


@dataclass(frozen=True)
class Recognition:
    model: Path | None
    model_sha256: str | None
    min_confidence: float
    max_pixels: int
    max_pages: int
    batch_size: int
    workers: int | None
    digits: tuple[int, int] | None  # how many digits a reading has (min, max); None: auto


@dataclass(frozen=True)
class Filing:
    layout: str
    duplicates: str
    report_bom: bool


@dataclass(frozen=True)
class Metrics:
    textfile: Path | None
    interval_seconds: float


@dataclass(frozen=True)
class Review:
    """`digit-inbox review`: where the page listens, and the token other addresses need."""

    listen: str = DEFAULT_LISTEN
    token: str | None = None


@dataclass(frozen=True)
class Config:
    source: Path
    paths: Paths
    watch: Watch
    recognition: Recognition
    filing: Filing
    metrics: Metrics
    log_level: str
    review: Review = Review()

    @property
    def journal_file(self) -> Path:
        return self.paths.state / "journal.sqlite3"

    @property
    def status_file(self) -> Path:
        """The JSON state `digit-inbox status` reads."""
        return self.paths.state / "status.json"

    def summary(self) -> str:
        model = self.recognition.model or "embedded model"
        return (
            f"config OK: {self.source} (inbox {self.paths.inbox}, outbox {self.paths.outbox}, "
            f"reports {self.paths.reports}, state {self.paths.state}, {model})"
        )


class Invalid(ValueError):
    """One value's problem, without its key path (the caller adds it)."""


# --- Value parsers: each takes the raw YAML value and returns the typed one or raises Invalid.


# Bounded: a YAML alias bomb (lists of lists of the same list) would expand to gigabytes in repr.
SHORT = reprlib.Repr()
SHORT.maxlevel, SHORT.maxlist, SHORT.maxdict, SHORT.maxstring, SHORT.maxother = 3, 6, 6, 80, 80


def describe(value: Any) -> str:
    text = SHORT.repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def real(low: float, high: float, *, low_open: bool = False) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(f"must be a number, got {type_name(value)} {describe(value)}")
        out_of_range = value <= low if low_open else value < low
        if out_of_range or value > high or value != value:
            bound = f"above {low}" if low_open else f"at least {low}"
            raise Invalid(f"must be {bound} and at most {high}, got {value}")
        return float(value)

    return parse


def integer(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be a whole number, got {type_name(value)} {describe(value)}")
        if not low <= value <= high:
            raise Invalid(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {type_name(value)} {describe(value)}")
    return value


def choice(*options: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in options:
            raise Invalid(f"must be one of {', '.join(options)}, got {describe(value)}")
        return value.lower()

    return parse


def optional(parse: Callable[[Any], T]) -> Callable[[Any], T | None]:
    def parse_optional(value: Any) -> T | None:
        return None if value is None else parse(value)

    return parse_optional


def path_in(base: Path) -> Callable[[Any], Path]:
    def parse(value: Any) -> Path:
        if not isinstance(value, str) or not value.strip():
            raise Invalid(f"must be a string path, got {type_name(value)} {describe(value)}")
        if "\0" in value:
            raise Invalid("must not contain a NUL character")
        return Path(os.path.normpath(base / Path(value).expanduser()))

    return parse


def string_list(item: Callable[[str], str]) -> Callable[[Any], tuple[str, ...]]:
    def parse(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise Invalid(f"must be a list of non-empty strings, got {describe(value)}")
        return tuple(item(v) for v in value)

    return parse


def extension(value: str) -> str:
    return "." + value.lower().lstrip(".")


def nonempty_extensions(value: Any) -> tuple[str, ...]:
    parsed = string_list(extension)(value)
    if not parsed:
        raise Invalid("must list at least one extension, e.g. [.png, .jpg]")
    return parsed


def sha256_hex(value: Any) -> str:
    if (
        not isinstance(value, str)
        or len(value) != 64
        or not all(c in string.hexdigits for c in value)
    ):
        raise Invalid(
            f"must be 64 hexadecimal digits (sha256sum of the model), got {describe(value)}"
        )
    return value.lower()


def split_listen(text: str) -> tuple[str, int] | None:
    """HOST:PORT as (host, port), an IPv6 host's brackets dropped; None when it is not that."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


def listen_address(value: Any) -> str:
    parsed = split_listen(value) if isinstance(value, str) else None
    if parsed is None or not parsed[0]:
        raise Invalid(f"must be HOST:PORT such as {DEFAULT_LISTEN}, got {describe(value)}")
    return str(value)


def token(value: Any) -> str:
    if not isinstance(value, str) or len(value) < 16 or not value.isprintable() or " " in value:
        raise Invalid("must be at least 16 printable characters without spaces (a secret)")
    return value


def layout(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"must be a string such as '{{digits}}', got {describe(value)}")
    try:
        parsed = string.Formatter().parse(value)
        fields = [(n, spec, conv) for _, n, spec, conv in parsed if n is not None]
    except ValueError as exc:
        raise Invalid(f"is not a valid template ({exc})") from None
    names = [name for name, _, _ in fields]
    unknown = [n for n in names if n not in LAYOUT_FIELDS]
    if unknown:
        raise Invalid(f"unknown placeholder {{{unknown[0]}}}; use {', '.join(LAYOUT_FIELDS)}")
    if "digits" not in names and "digit" not in names:
        raise Invalid("must contain {digits}, or every reading would land in one folder")
    # A format spec or conversion could fail or grow a name when the daemon files a scan.
    if any(spec or conv for _, spec, conv in fields):
        raise Invalid("placeholders take no format: write {digits}, not {digits:>3} or {digits!r}")
    parts = Path(value).parts
    if Path(value).is_absolute() or ".." in parts or any(p.startswith(".") for p in parts):
        raise Invalid("must be a relative folder inside the outbox, without '..' or hidden parts")
    sample = value.format(
        digits="0", digit="0", date="2000-01-01", year="2000", month="01", day="01"
    )
    if "\0" in value or any(len(os.fsencode(p)) > NAME_MAX for p in Path(sample).parts):
        raise Invalid(f"each folder name must fit {NAME_MAX} bytes, without NUL characters")
    return value


def expected_digits(value: Any) -> tuple[int, int] | None:
    """`auto`, N or "min-max" -> None or (min, max)."""
    try:
        return reading.parse_expected(value)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


# --- The schema: section -> key -> (parser, default). Defaults match config.yaml.


def schema(base: Path) -> dict[str, dict[str, tuple[Callable[[Any], Any], Any]]]:
    path = path_in(base)
    return {
        "paths": {role: (path, f"./var/{role}") for role in ROLES},
        "watch": {
            "observer": (choice(*OBSERVERS), "auto"),
            "polling_interval_seconds": (real(0.1, 3600), 2.0),
            "recursive": (boolean, False),
            "settle_seconds": (real(0, 3600), 1.0),
            "empty_timeout_seconds": (real(1, 86400), 60.0),
            "rescan_seconds": (real(1, 86400), 300.0),
            "extensions": (nonempty_extensions, DEFAULT_EXTENSIONS),
            "ignore": (string_list(str), DEFAULT_IGNORE),
        },
        "recognition": {
            "model": (optional(path), None),
            "model_sha256": (optional(sha256_hex), None),
            "min_confidence": (real(0, 1), DEFAULT_MIN_CONFIDENCE),
            "max_pixels": (integer(1, 2**40), 40_000_000),
            "max_pages": (integer(1, 100_000), DEFAULT_MAX_PAGES),
            "batch_size": (integer(1, 4096), 32),
            "workers": (optional(integer(1, 256)), None),
            "digits": (expected_digits, "auto"),
        },
        "filing": {
            "layout": (layout, "{digits}"),
            "duplicates": (choice(*DUPLICATE_POLICIES), "flag"),
            "report_bom": (boolean, False),
        },
        "metrics": {
            "textfile": (optional(path), None),
            "interval_seconds": (real(1, 86400), 15.0),
        },
        "review": {
            "listen": (listen_address, DEFAULT_LISTEN),
            "token": (optional(token), None),
        },
    }


def top_level_keys() -> dict[str, tuple[Callable[[Any], Any], Any]]:
    return {"log_level": (choice(*(level.lower() for level in LOG_LEVELS)), "info")}


# --- Reading the file.


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that records duplicate keys: YAML would silently keep only the last one."""

    duplicates: list[str]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    mark = key_node.start_mark
                    self.duplicates.append(
                        f"line {mark.line + 1}: key {describe(key)} appears twice; keep one"
                    )
                seen.add(key)
            except TypeError:
                pass  # unhashable keys are reported by the base class
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> tuple[Any, list[str]]:
    """The parsed document and any duplicate-key problems; ConfigError if it is not YAML."""
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        message = (
            f"{path} does not exist; copy config.yaml from the digit-inbox repository there, "
            "or pass --config PATH"
        )
        raise ConfigError([message], source=str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read {path}: {exc}"], source=str(path)) from None
    duplicates: list[str] = []
    try:
        loader = UniqueKeyLoader(text)
        loader.duplicates = duplicates
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "somewhere"
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError([f"YAML syntax error at {where}: {what}"], source=str(path)) from None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError) as exc:
        raise ConfigError([f"not valid YAML: {exc}"], source=str(path)) from None
    return document, duplicates


# --- Validation.


def parse_document(document: Any, base: Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Typed values per section (None where invalid) and every problem found, with key paths.

    Top-level scalars such as `log_level` come back in the section named "".
    """
    if document is None:
        document = {}
    if not isinstance(document, Mapping):
        return {}, [f"(top level): must be a mapping of sections, got {type_name(document)}"]
    problems: list[str] = []
    sections, scalars = schema(base), top_level_keys()
    for key in document:
        if key not in sections and key not in scalars:
            known = ", ".join([*sections, *scalars])
            problems.append(f"{key_name(key)}: unknown key; known keys are {known}")
    values: dict[str, dict[str, Any]] = {"": parse_keys(document, scalars, "", problems)}
    for section, spec in sections.items():
        raw = document.get(section)
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            problems.append(f"{section}: must be a mapping of keys, got {type_name(raw)}")
            raw = {}
        for key in raw:
            if key not in spec:
                known = ", ".join(spec)
                problems.append(f"{section}.{key_name(key)}: unknown key; known keys are {known}")
        values[section] = parse_keys(raw, spec, f"{section}.", problems)
    return values, problems


def key_name(key: Any) -> str:
    return key if isinstance(key, str) else describe(key)


def parse_keys(
    raw: Mapping[Any, Any],
    spec: Mapping[str, tuple[Callable[[Any], Any], Any]],
    prefix: str,
    problems: list[str],
) -> dict[str, Any]:
    return {
        key: run_parser(parse, raw.get(key, default), prefix + key, problems)
        for key, (parse, default) in spec.items()
    }


def run_parser(parse: Callable[[Any], Any], value: Any, key: str, problems: list[str]) -> Any:
    try:
        return parse(value)
    except Invalid as exc:
        problems.append(f"{key}: {exc}")
    except (TypeError, ValueError, OverflowError) as exc:  # never a traceback for odd YAML
        problems.append(f"{key}: invalid value {describe(value)} ({exc})")
    return None


def folder_problems(paths: Mapping[str, Path | None], recursive: bool | None) -> list[str]:
    """Folder combinations that cannot work, and folders the daemon cannot create or write."""
    problems: list[str] = []
    known = {role: p for role, p in paths.items() if p is not None}
    roles = list(known)
    for i, a in enumerate(roles):
        for b in roles[i + 1 :]:
            if known[a] == known[b]:
                problems.append(
                    f"paths.{b}: same folder as paths.{a} ({known[a]}); give each its own folder"
                )
    inbox = known.get("inbox")
    if inbox is not None:
        for role, folder in known.items():
            if role != "inbox" and inbox in folder.parents and recursive:
                problems.append(
                    f"paths.{role}: {folder} is inside the inbox, which is watched recursively; "
                    "move it out of the inbox or set watch.recursive: false"
                )
    for role, folder in known.items():
        problem = writable_problem(folder)
        if problem:
            problems.append(f"paths.{role}: {problem}")
    if inbox is not None:
        inbox_dev = device_of(inbox)
        processing = inbox / WORK_DIR / "processing"
        if inbox_dev is not None and device_of(processing) != inbox_dev:
            problems.append(
                f"paths.inbox: {processing} is on another filesystem than the inbox; claiming a "
                "file must be an atomic rename, so unmount whatever is mounted there"
            )
        for role in ("outbox", "review", "failed"):
            target = known.get(role)
            if target is not None and inbox_dev is not None and device_of(target) != inbox_dev:
                problems.append(
                    f"paths.{role}: {target} is on another filesystem than paths.inbox; files are "
                    "moved by atomic rename, so put both on the same filesystem"
                )
    return problems


def nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or "/")


def is_file(path: Path) -> bool:
    """Path.is_file, False instead of OSError for a name too long or a loop of links."""
    try:
        return path.is_file()
    except OSError:
        return False


def device_of(path: Path) -> int | None:
    try:
        return os.stat(nearest_existing(path)).st_dev
    except OSError:
        return None


def writable_problem(folder: Path) -> str | None:
    """Why the daemon could not use `folder` (create it, write and list it), or None."""
    existing = nearest_existing(folder)
    if existing == folder:
        if not folder.is_dir():
            return f"{folder} exists but is not a folder"
        if not os.access(folder, os.W_OK | os.X_OK | os.R_OK):
            return f"{folder} is not writable by this user; fix its owner or permissions"
        return None
    if not existing.is_dir():
        return f"cannot create {folder}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create {folder}: {existing} is not writable by this user"
    return None


def load(path: Path, *, check_folders: bool = True) -> Config:
    """Read and validate `path`; ConfigError lists every problem with its key path.

    `check_folders=False` skips the folder checks, for readers such as `digit-inbox status`
    that need not be able to write the daemon's folders.
    """
    path = Path(os.path.abspath(path))
    document, problems = read_yaml(path)
    values, more = parse_document(document, path.parent)
    problems += more
    if values and check_folders:
        problems += folder_problems(values["paths"], values["watch"].get("recursive"))
    if values:
        model = values["recognition"].get("model")
        if model is not None and not is_file(model):
            problems.append(
                f"recognition.model: {model} is not a file; give the path of an ONNX file made "
                "by `digit-inbox export`, or null for the embedded model"
            )
        textfile = values["metrics"].get("textfile")
        if textfile is not None and not textfile.name.endswith(".prom"):
            problems.append(
                f"metrics.textfile: {textfile.name} must end in .prom for node_exporter's "
                "textfile collector to read it"
            )
    if problems:
        raise ConfigError(problems, source=str(path))
    return Config(
        source=path,
        paths=Paths(**values["paths"]),
        watch=Watch(**values["watch"]),
        recognition=Recognition(**values["recognition"]),
        filing=Filing(**values["filing"]),
        metrics=Metrics(**values["metrics"]),
        log_level=values[""]["log_level"].upper(),
        review=Review(**values["review"]),
    )


def make_folders(cfg: Config) -> None:
    """Create the configured folders (and the processing folder) if they are missing."""
    for folder in (*(getattr(cfg.paths, role) for role in ROLES), cfg.paths.processing):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                [f"cannot create {folder}: {os.strerror(exc.errno or errno.EIO)}"],
                source=str(cfg.source),
            ) from exc


def is_ignored(name: str, watch: Watch) -> bool:
    """Hidden, temporary or partial names: their writer is not done, or they are not scans."""
    lowered = name.lower()
    if name.startswith("."):
        return True
    return any(fnmatch.fnmatchcase(lowered, pattern.lower()) for pattern in watch.ignore)


def has_image_extension(name: str, watch: Watch) -> bool:
    return os.path.splitext(name)[1].lower() in watch.extensions
