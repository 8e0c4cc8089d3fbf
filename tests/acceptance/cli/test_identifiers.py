"""Table and column names with quotes, spaces and non-ASCII letters, through the real CLI.

Every statement the product builds from a configured name must quote it: `setup` (row
triggers on both databases), the sync's reads and compare-and-set writes, and the trigger
bodies that fire later on the application's own INSERT, UPDATE and DELETE.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from tests.acceptance.command import run, run_json
from tests.integration.world import World

TABLE = 'it\'s a "odd" tablé ☃'
KEY = 'k\'ey "id"'
IMAGES = 'pic\'s "list" ✓ 50%:x'
OTHER = "ti:tle 100%"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _env(world: World) -> dict[str, str]:
    return world.env(
        PORTFOLIO_SYNC_TABLE=TABLE,
        PORTFOLIO_SYNC_KEY_COLUMN=KEY,
        PORTFOLIO_SYNC_IMAGES_COLUMN=IMAGES,
    )


def _sql(world: World, statement: str) -> list[Any]:
    """Run a statement on the driver, without parameters (nothing parses `:x` or `%`)."""
    raw = world.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(statement)
        rows = list(cursor.fetchall()) if cursor.description else []
        raw.commit()
        return rows
    finally:
        raw.close()


def _images(world: World, key: int) -> list[str] | None:
    (value,) = _sql(world, f"SELECT {_q(IMAGES)} FROM {_q(TABLE)} WHERE {_q(KEY)} = {key}")[0]
    return json.loads(value) if isinstance(value, str) else value  # type: ignore[no-any-return]


def _changes_seen(world: World) -> list[tuple[str, str, list[str]]]:
    """(key, operation, old images) the row triggers recorded: the outbox on SQLite, the
    deferred jobs on PostgreSQL."""
    with world.engine.connect() as conn:
        if world.postgres:
            rows = conn.execute(
                sa.text("SELECT args FROM procrastinate_jobs ORDER BY id")
            ).scalars()
            return [(a["key"], a["trigger"].split(":")[1], a.get("old_images") or []) for a in rows]
        found = []
        for key, op, old in conn.execute(
            sa.text("SELECT key, op, old_images FROM portfolio_sync_outbox ORDER BY id")
        ):
            images = [i for text in json.loads(old or "{}").values() for i in json.loads(text)]
            found.append((key, op, images))
        return found


def test_quoted_unicode_names_setup_sync_and_triggers(world: World) -> None:
    images_type = "TEXT[]" if world.postgres else "TEXT"
    _sql(
        world,
        f"CREATE TABLE {_q(TABLE)} ({_q(KEY)} INTEGER PRIMARY KEY, {_q(OTHER)} TEXT, "
        f"{_q(IMAGES)} {images_type})",
    )
    _sql(world, f"INSERT INTO {_q(TABLE)} ({_q(KEY)}, {_q(OTHER)}) VALUES (1, 'one')")
    world.put("1/b.jpg")
    world.put("1/a.jpg")
    env = _env(world)

    proc = run("setup", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "installed" in proc.stdout

    report = run_json("sync", "--all", env=env)
    assert report["ok"] and [c["key"] for c in report["changed"]] == ["1"]
    assert _images(world, 1) == ["1/a.jpg", "1/b.jpg"]
    assert run("sync", "1", env=env).returncode == 0  # the per-key path, now unchanged
    if world.postgres:  # the sync's own write must not have come back as work
        _sql(world, "DELETE FROM procrastinate_jobs")
    assert _changes_seen(world) == []

    # The application's own changes fire the installed triggers.
    _sql(world, f"INSERT INTO {_q(TABLE)} ({_q(KEY)}, {_q(OTHER)}) VALUES (2, 'two')")
    _sql(world, f"UPDATE {_q(TABLE)} SET {_q(OTHER)} = 'uno' WHERE {_q(KEY)} = 1")
    _sql(world, f"DELETE FROM {_q(TABLE)} WHERE {_q(KEY)} = 1")
    seen = _changes_seen(world)
    assert ("2", "INSERT", []) in seen
    assert ("1", "DELETE", ["1/a.jpg", "1/b.jpg"]) in seen
    if not world.postgres:  # PostgreSQL folds the UPDATE into the job still waiting
        assert ("1", "UPDATE", []) in seen
    # ... and a row write by the service still does not.
    count = len(seen)
    world.put("2/c.jpg")
    assert run("sync", "2", env=env).returncode == 0
    assert _images(world, 2) == ["2/c.jpg"]
    assert len(_changes_seen(world)) == count

    proc = run("setup", "--uninstall", env=env)
    assert proc.returncode == 0, proc.stderr
    _sql(world, f"INSERT INTO {_q(TABLE)} ({_q(KEY)}) VALUES (3)")
    assert len(_changes_seen(world)) == count
