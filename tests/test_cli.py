"""Every command answers --help and documents exit codes."""
import pytest

COMMANDS = [[], ["run"], ["train"], ["predict"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "facesort")
def test_help(cli, command):
    result = cli(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "facesort")
def test_exit_codes_are_documented(cli, command):
    lines = [" ".join(line.split()) for line in cli(*command, "--help").output.splitlines()]
    assert "3 finished but some files failed (see the CSV report)" in lines
    assert "4 another run holds the output folder" in lines


def test_usage_error_exits_2(cli):
    assert cli("run").exit_code == 2
