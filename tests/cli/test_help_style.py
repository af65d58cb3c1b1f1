"""Usage lines and help tables use conventional placeholders (DATA..., PATH, TEXT), not typer's."""

import re

import pytest
from typer.testing import CliRunner

from wav2genre_cache.cli.app import app
from wav2genre_cache.cli.help_style import conventional_type

COMMANDS = [
    "embed",
    "info",
    "train-heads",
    "cross-validate",
    "compare",
    "run",
    "finetune",
    "predict",
    "serve",
    "export",
    "demo-data",
]
runner = CliRunner()


def _help(*args: str) -> str:
    result = runner.invoke(app, [*args, "--help"], prog_name="wav2genre", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_usage_line_is_conventional(command):
    usage = next(line for line in _help(command).splitlines() if "Usage:" in line).strip()
    assert re.fullmatch(
        rf"Usage: wav2genre {command} \[OPTIONS\]( \[?[A-Z_]+(\.\.\.)?\]?)*", usage
    ), usage


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_no_typer_type_labels(command):
    text = _help(command) if command else _help()
    for typer_label in ("<str>", "<int>", "<float>", "<bool>", "<path>", "<list[", "{"):
        assert typer_label not in text, (command, typer_label)


def test_option_types_read_as_click_does():
    text = _help("embed")
    assert re.search(r"--out\s+PATH", text)
    assert re.search(r"--segment-seconds\s+FLOAT", text)
    assert re.search(r"--workers\s+INTEGER", text)
    assert re.search(r"DATA\.\.\.\s+PATH\.\.\.", text)


def test_missing_argument_is_named_as_in_usage():
    result = runner.invoke(app, ["predict", "--bundle", "x"], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "Missing argument 'INPUTS...'" in result.output


@pytest.mark.parametrize(
    ("typer_label", "conventional"),
    [("<str>", "TEXT"), ("<list[Path]>", "PATH..."), ("<bool>", None), ("<int>", "INTEGER")],
)
def test_conventional_type(typer_label, conventional):
    assert conventional_type(typer_label) == conventional
