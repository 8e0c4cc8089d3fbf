"""Database trouble while the command starts (opening the table, upgrading our own tables)
ends in one line that names the database and says what to do: no traceback, exit 1."""

from __future__ import annotations

import secrets
import sqlite3
import subprocess
import time
from pathlib import Path

import psycopg

from tests.acceptance.command import SCRIPT, run
from tests.integration.world import World


def _assert_one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def _sync_while_locked(db: Path, env: dict[str, str]) -> str:
    """`sync --all` while another connection holds an exclusive lock; its one error line."""
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        proc = run("sync", "--all", env=env, timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 1
    line = _assert_one_line(proc.stderr)
    assert str(db) in line and "locked" in line
    return line


def test_locked_sqlite_database_is_one_clear_line(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    world = World(kind="sqlite-folder", database_url=f"sqlite:///{db}", root=tmp_path)
    try:
        world.create_table()
        world.insert(1, None)
        world.put("1/a.jpg")
        # `timeout` in the URL bounds the wait for the lock (default 30 s).
        env = world.env(PORTFOLIO_SYNC_DATABASE_URL=f"sqlite:///{db}?timeout=1")
        assert run("sync", "--all", env=env).returncode == 0  # WAL on, tables migrated
        line = _sync_while_locked(db, env)
        assert "retry" in line
        assert run("sync", "--all", env=env).returncode == 0  # and fine once it is free
    finally:
        world.close()


def test_locked_before_wal_is_one_clear_line(tmp_path: Path) -> None:
    """A database never opened by portfolio-sync is still in rollback-journal mode: an
    exclusive lock then blocks even reading the table (the first thing the command does)."""
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE portfolios (id INTEGER PRIMARY KEY, images TEXT)")
    env = World(kind="sqlite-folder", database_url="", root=tmp_path).env(
        PORTFOLIO_SYNC_DATABASE_URL=f"sqlite:///{db}?timeout=1"
    )
    assert "reading table" in _sync_while_locked(db, env)


def test_connection_killed_during_migrations_is_one_clear_line(tmp_path: Path, pg_url: str) -> None:
    """The command's backend is terminated while it waits for the migration lock."""
    world = World(kind="postgres-folder", database_url=pg_url, root=tmp_path)
    try:
        _kill_during_migrations(world)
    finally:
        world.close()


def _kill_during_migrations(world: World) -> None:
    world.create_table()
    name = f"ps-{secrets.token_hex(4)}"
    env = world.env(PORTFOLIO_SYNC_DATABASE_URL=f"{world.database_url}&application_name={name}")
    with (
        psycopg.connect(world.database_url, autocommit=True) as holder,
        psycopg.connect(world.database_url, autocommit=True) as killer,
    ):
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(hashtext('portfolio_sync_schema'))")
        proc = subprocess.Popen(
            [str(SCRIPT), "sync", "--all"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            killed = False
            # From another connection: a transaction sees pg_stat_activity as of its start.
            while not killed and time.monotonic() < deadline and proc.poll() is None:
                killed = bool(
                    killer.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = %s AND wait_event_type = 'Lock'",
                        (name,),
                    ).fetchall()
                )
                time.sleep(0.05)
            holder.execute("COMMIT")
            _, stderr = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert killed, "the command never waited for the migration lock"
    assert proc.returncode == 1
    line = _assert_one_line(stderr)
    assert "127.0.0.1" in line and "retry" in line
