"""The command line: options where users type them, help for every option, and every
command's --help ending with an example and the exit statuses."""

from __future__ import annotations

import argparse

import pytest

from digit_inbox.daemon import cli, errors


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize(
    "argv",
    [
        ["--log-level", "DEBUG", "run"],
        ["run", "--log-level", "DEBUG"],
        ["run", "--log-level", "debug"],
        ["--log-level", "ERROR", "run", "--log-level", "DEBUG"],
    ],
)
def test_log_level_is_accepted_before_and_after_the_subcommand(argv):
    assert cli.build_parser().parse_args(argv).log_level == "DEBUG"


def test_without_log_level_the_config_decides():
    assert cli.build_parser().parse_args(["run"]).log_level is None


def test_an_unknown_log_level_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["status", "--log-level", "LOUD"])
    assert exited.value.code == errors.ExitCode.USAGE
    assert "invalid choice: 'LOUD'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_has_help(name):
    for action in subcommands()[name]._actions:
        assert action.help, f"{name} {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("name", [None, *sorted(subcommands())])
def test_every_help_ends_with_an_example_and_the_exit_statuses(name, capsys):
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"] if name is None else [name, "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert text.rstrip().endswith(errors.EXIT_CODES_HELP)
    example = text.split("example:\n", 1)[1].splitlines()[0].strip()
    assert example.startswith(f"digit-inbox {name or ''}".rstrip())


def test_the_exit_status_help_lists_every_exit_code():
    listed = {int(line.split()[0]) for line in errors.EXIT_CODES_HELP.splitlines()[1:]}
    assert listed == {int(code) for code in errors.ExitCode}
