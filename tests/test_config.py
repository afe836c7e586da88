"""The config is validated once, completely: every problem with its key path, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digit_inbox.daemon import config
from digit_inbox.daemon.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return config.load(path)


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return caught.value.problems


def test_an_empty_file_is_the_documented_defaults_under_var(tmp_path):
    cfg = load_text(tmp_path, "")
    assert cfg.paths.inbox == tmp_path / "var" / "inbox"
    assert cfg.paths.state == tmp_path / "var" / "state"
    assert cfg.watch.rescan_seconds == 300
    assert cfg.watch.observer == "auto"
    assert cfg.filing.layout == "{digits}"
    assert cfg.log_level == "INFO"


def test_the_repository_config_yaml_is_valid_and_matches_the_built_in_defaults(tmp_path):
    shipped = (REPO / "config.yaml").read_text()
    copy = tmp_path / "shipped"
    copy.mkdir()
    from_file = load_text(copy, shipped)
    empty = tmp_path / "empty"
    empty.mkdir()
    defaults = load_text(empty, "")
    for section in ("paths", "watch", "recognition", "filing", "metrics"):
        ours, theirs = vars(getattr(from_file, section)), vars(getattr(defaults, section))
        for key, value in ours.items():
            if isinstance(value, Path):
                value, theirs[key] = value.relative_to(copy), theirs[key].relative_to(empty)
            assert value == theirs[key], f"{section}.{key}"


def test_every_key_in_the_shipped_config_is_documented_by_a_comment():
    lines = (REPO / "config.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and ":" in stripped:
            assert lines[i - 1].strip().startswith("#"), f"undocumented key: {stripped}"


def test_relative_paths_resolve_against_the_config_folder_not_the_working_directory(
    tmp_path, monkeypatch
):
    monkeypatch.chdir("/")
    cfg = load_text(tmp_path, "paths:\n  inbox: scans/in\n")
    assert cfg.paths.inbox == tmp_path / "scans" / "in"


def test_every_problem_is_listed_with_its_key_path(tmp_path):
    problems = problems_of(
        tmp_path,
        "paths:\n  outbox: 3\n  bogus: x\n"
        "watch:\n  settle_seconds: -1\n  recursive: 'yes'\n  observer: kqueue\n"
        "recognition:\n  batch_size: 0\n  model_sha256: abc\n"
        "filing:\n  layout: '{colour}'\n  duplicates: delete\n"
        "log_level: loud\nextra: 1\n",
    )
    text = "\n".join(problems)
    assert "paths.outbox: must be a string path, got int 3" in problems
    for key in (
        "paths.bogus",
        "watch.settle_seconds",
        "watch.recursive",
        "watch.observer",
        "recognition.batch_size",
        "recognition.model_sha256",
        "filing.layout",
        "filing.duplicates",
        "log_level",
        "extra",
    ):
        assert f"{key}:" in text, key
    assert len(problems) == 11


def test_a_yaml_syntax_error_gives_line_and_column(tmp_path):
    problems = problems_of(tmp_path, "paths:\n  inbox: [unclosed\nwatch: {}\n")
    assert len(problems) == 1
    assert "line 3, column" in problems[0]


def test_a_repeated_key_is_a_problem_instead_of_silently_keeping_the_last(tmp_path):
    problems = problems_of(tmp_path, "watch:\n  recursive: true\n  recursive: false\n")
    assert problems == ["line 3: key 'recursive' appears twice; keep one"]


def test_a_missing_file_says_how_to_get_one(tmp_path):
    with pytest.raises(ConfigError) as caught:
        config.load(tmp_path / "nope.yaml")
    assert "copy config.yaml" in caught.value.problems[0]


def test_two_roles_cannot_share_a_folder(tmp_path):
    problems = problems_of(tmp_path, "paths:\n  review: ./var/failed\n")
    assert any(p.startswith("paths.failed: same folder as paths.review") for p in problems)


def test_folders_inside_a_recursively_watched_inbox_are_refused(tmp_path):
    text = "paths:\n  inbox: ./in\n  outbox: ./in/out\nwatch:\n  recursive: true\n"
    problems = problems_of(tmp_path, text)
    assert any(p.startswith("paths.outbox:") and "inside the inbox" in p for p in problems)
    # ...but allowed when not recursive: the daemon then leaves that sub-folder alone.
    load_text(tmp_path, text.replace("true", "false"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_an_existing_folder_without_write_permission_is_a_problem(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    problems = problems_of(tmp_path, f"paths:\n  outbox: {locked}\n")
    assert any(p.startswith("paths.outbox:") and "not writable" in p for p in problems)


def test_a_file_where_a_folder_should_be_is_a_problem(tmp_path):
    (tmp_path / "afile").write_text("")
    problems = problems_of(tmp_path, "paths:\n  reports: ./afile\n")
    assert problems == [f"paths.reports: {tmp_path / 'afile'} exists but is not a folder"]


def test_filing_folders_on_another_filesystem_than_the_inbox_are_refused(tmp_path):
    other = Path("/dev/shm")
    if not other.is_dir() or os.stat(other).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem to test with")
    problems = problems_of(tmp_path, f"paths:\n  failed: {other / 'digit-inbox-test'}\n")
    assert any(p.startswith("paths.failed:") and "another filesystem" in p for p in problems)


def test_the_layout_must_keep_digits_apart_and_stay_inside_the_outbox(tmp_path):
    assert "must contain {digits}" in problems_of(tmp_path, "filing: {layout: '{date}'}")[0]
    assert "without '..'" in problems_of(tmp_path, "filing: {layout: '../{digit}'}")[0]
    cfg = load_text(tmp_path, "filing: {layout: '{date}/{digit}'}")
    assert cfg.filing.layout == "{date}/{digit}"  # the older name keeps working
    assert load_text(tmp_path, "filing: {layout: '{digits}'}").filing.layout == "{digits}"


@pytest.mark.parametrize(
    ("value", "expected"), [("auto", None), (4, (4, 4)), ("'4'", (4, 4)), ("4-6", (4, 6))]
)
def test_the_expected_number_of_digits_is_auto_a_number_or_a_range(tmp_path, value, expected):
    assert load_text(tmp_path, f"recognition: {{digits: {value}}}").recognition.digits == expected


@pytest.mark.parametrize("value", ["six", 0, "6-4", "true", "[4]"])
def test_a_bad_expected_number_of_digits_is_reported_by_its_key_path(tmp_path, value):
    (problem,) = problems_of(tmp_path, f"recognition: {{digits: {value}}}")
    assert problem.startswith("recognition.digits: must be")


def test_a_model_path_must_name_an_existing_file(tmp_path):
    problems = problems_of(tmp_path, "recognition: {model: ./missing.onnx}")
    assert problems[0].startswith("recognition.model:")


def test_booleans_are_not_numbers(tmp_path):
    problems = problems_of(tmp_path, "watch: {settle_seconds: true}")
    assert problems == ["watch.settle_seconds: must be a number, got bool True"]


def test_ignored_names_match_case_insensitively_and_dotfiles_always(tmp_path):
    watch = load_text(tmp_path, "").watch
    assert config.is_ignored("THUMBS.DB", watch)
    assert config.is_ignored("scan.png.part", watch)
    assert config.is_ignored(".hidden.png", watch)
    assert not config.is_ignored("scan.png", watch)
    assert config.has_image_extension("SCAN.PNG", watch)
    assert not config.has_image_extension("notes.txt", watch)


def test_the_default_extensions_are_exactly_what_the_decoder_reads(tmp_path):
    from digit_inbox.daemon.decode import EXTENSIONS

    assert set(load_text(tmp_path, "").watch.extensions) == set(EXTENSIONS)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
known_keys = st.sampled_from(["paths", "watch", "recognition", "filing", "metrics", "log_level"])


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=st.dictionaries(known_keys | st.text(max_size=8), yaml_values, max_size=6))
def test_random_yaml_documents_never_raise_anything_but_config_error(tmp_path, document):
    try:
        load_text(tmp_path, yaml.safe_dump(document))
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p for p in exc.problems)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=200))
def test_random_text_never_raises_anything_but_config_error(tmp_path, text):
    try:
        load_text(tmp_path, text)
    except ConfigError as exc:
        assert exc.problems


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "digit_inbox.daemon", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_check_config_exits_0_with_a_one_line_summary_and_creates_nothing(tmp_path):
    (tmp_path / "config.yaml").write_text("")
    result = run_cli("run", "--check-config", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("config OK:") and result.stdout.count("\n") == 1
    assert not (tmp_path / "var").exists()


def test_check_config_exits_3_listing_every_problem(tmp_path):
    (tmp_path / "config.yaml").write_text("paths: {outbox: 3}\nwatch: {settle_seconds: x}\n")
    result = run_cli("run", "--check-config", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 3
    assert "paths.outbox: must be a string path, got int 3" in result.stderr
    assert "watch.settle_seconds: must be a number" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_model_that_does_not_match_its_pinned_sha256_is_refused_with_exit_5(tmp_path):
    (tmp_path / "config.yaml").write_text("recognition: {model_sha256: '" + "0" * 64 + "'}\n")
    result = run_cli("run", "--check-config", "--config", "config.yaml", cwd=tmp_path)
    assert result.returncode == 5
    assert "model_sha256 pins" in result.stderr


def test_every_key_other_modules_name_in_messages_is_a_key_of_the_config():
    from digit_inbox.daemon import keys

    named = {v for k, v in vars(keys).items() if k.isupper()}
    known = {f"{section}.{key}" for section, ks in config.schema(Path(".")).items() for key in ks}
    assert named and named <= known
