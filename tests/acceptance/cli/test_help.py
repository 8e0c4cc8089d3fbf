"""`--help` of the app and of every command renders, with defaults shown (issue: `--help`
crashed with rich's MarkupError on `s3://bucket[/prefix]`, and escaping it hid the
hand-written `[default: …]` of the global options)."""

from __future__ import annotations

import os
import re

import pytest
import typer.main

from portfolio_sync import __version__
from portfolio_sync.cli.main import app
from tests.acceptance.command import run

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _env() -> dict[str, str]:
    # A wide terminal so rich does not wrap the option table mid-default.
    return {**os.environ, "COLUMNS": "200", "TERM": "dumb"}


def test_app_help_renders_with_defaults() -> None:
    proc = run("--help", env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    out = proc.stdout
    assert "s3://bucket[/prefix]" in out
    for default in ("portfolios", "id", "images", "{key}/"):
        assert re.search(rf"\[default: \(?{re.escape(default)}\)?\]", out), default
    assert "PORTFOLIO_SYNC_DATABASE_URL" in out
    for name in COMMANDS:
        assert name in out


def test_bare_command_shows_help_and_exits_2() -> None:
    proc = run(env=_env())
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "Usage" in proc.stdout + proc.stderr
    assert proc.returncode in (0, 2)


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_renders(command: str) -> None:
    proc = run(command, "--help", env=_env())
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert f"portfolio-sync {command}" in proc.stdout


def test_version_alone() -> None:
    proc = run("--version", env=_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == __version__


def test_shell_completion_is_offered() -> None:
    proc = run("--help", env=_env())
    assert "--install-completion" in proc.stdout
