"""`portfolio-sync check`: effective settings with their origin (secrets hidden) and one
line per check with the fix; exit 0 ok, 1 a backend unusable, 2 configuration wrong."""

from __future__ import annotations

import os
import socket
import sqlite3
from pathlib import Path

from tests.acceptance.command import run


def _site(tmp_path: Path) -> dict[str, str]:
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE portfolios (id INTEGER PRIMARY KEY, images TEXT)")
    (tmp_path / "storage").mkdir()
    (tmp_path / "portfolio-sync.toml").write_text(
        'database_url = "sqlite:///app.db"\nstorage_url = "storage"\n', encoding="utf-8"
    )
    return {"PATH": os.environ["PATH"]}


def test_check_shows_origins_hides_secrets_and_passes(tmp_path: Path) -> None:
    env = _site(tmp_path)
    env.update(PORTFOLIO_SYNC_WEBHOOK_SECRET="hunter2", PORTFOLIO_SYNC_KEY_COLUMN="id")
    proc = run("--table", "portfolios", "check", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "hunter2" not in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["database_url"].endswith(f"sqlite:///{tmp_path / 'app.db'}  [file]")
    assert lines["table"].endswith("portfolios  [flag]")
    assert lines["key_column"].endswith("id  [env]")
    assert lines["webhook_secret"].endswith("(set, hidden)  [env]")
    assert lines["order"].endswith("name  [default]")
    assert f"  ✓ database: connected to sqlite:///{tmp_path / 'app.db'}" in out
    assert "  ✓ table: portfolios: 0 rows" in out
    assert "  ✓ columns: key id (int); images images (TEXT)" in out
    assert "  ✓ storage: folder " in out
    assert "  ! triggers: no row triggers" in out and "fix: run `portfolio-sync setup`" in out


def test_check_lists_every_problem_with_its_fix(tmp_path: Path) -> None:
    env = _site(tmp_path)
    (tmp_path / "storage").rmdir()
    proc = run("--images-column", "photos", "check", env=env, cwd=tmp_path)
    assert proc.returncode == 2  # a missing column is the configuration's
    assert "  ✗ columns: table 'portfolios' has no images column(s) photos — fix: " in proc.stdout
    assert "  ✗ storage: storage folder " in proc.stdout


def test_check_with_database_down_exits_1(tmp_path: Path) -> None:
    env = _site(tmp_path)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        env["PORTFOLIO_SYNC_DATABASE_URL"] = f"postgresql://app:pw@127.0.0.1:{port}/db"
        proc = run("check", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert (
        f"  ✗ database: cannot connect to the database at 127.0.0.1:{port} "
        f"(postgresql+psycopg://app:***@127.0.0.1:{port}/db) — fix: start the database server"
    ) in proc.stdout
    assert ":pw@" not in proc.stdout


def test_check_with_invalid_settings_exits_2(tmp_path: Path) -> None:
    env = _site(tmp_path)
    proc = run("--order", "random", "check", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout.startswith("✗ configuration: invalid configuration:")
    assert "PORTFOLIO_SYNC_ORDER" in proc.stdout
