"""The service runtime without HTTP: outbox triggers, folder watcher, storage lag, queue.

Real SQLite files / PostgreSQL, real folders / moto S3, the real asyncio runtime.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from portfolio_sync.backends import outbox, schema
from portfolio_sync.runtime import Runtime
from tests.acceptance.command import run
from tests.integration.polling import eventually
from tests.integration.world import World


@asynccontextmanager
async def running(
    world: World, *, watch: bool = False, triggers: bool = False, **settings: Any
) -> AsyncIterator[Runtime]:
    settings.setdefault("debounce", 0.05)
    with world.service(**settings) as svc:
        if triggers:
            outbox.run(svc.catalog, outbox.install_sql(svc.catalog))
        runtime = Runtime(svc, watch=watch, outbox_interval=0.1)
        async with runtime:
            await asyncio.wait_for(runtime.queue.join(), 30)  # the catch-up pass
            yield runtime


def _sqlite(world: World) -> sqlite3.Connection:
    return sqlite3.connect(world.database_url.removeprefix("sqlite:///"), isolation_level=None)


async def test_catch_up_pass_on_start(world: World) -> None:
    world.create_table()
    world.insert(1, None)
    world.put("1/a.jpg")
    async with running(world):
        assert world.images(1) == ["1/a.jpg"]


SQLITE_ONLY = pytest.mark.parametrize("world", ["sqlite-folder"], indirect=True)


async def accepted_until_marker(runtime: Runtime, source: str, make: Any, synced: Any) -> float:
    """Events ``source`` accepted from now until a marker change (``make()``) was synced
    (``synced()`` holds) and the queue is idle; the marker itself counts one.

    A check that something did *not* become work uses this instead of a sleep: the drain
    and the watcher deliver changes in order, so once the marker's sync is visible,
    everything before it has been handled too.
    """
    accepted = runtime.metrics.events.labels(source, "accepted")
    before: float = accepted._value.get()
    make()
    await eventually(synced)
    await asyncio.wait_for(runtime.queue.join(), 10)
    return float(accepted._value.get() - before)


@SQLITE_ONLY
async def test_app_row_changes_reach_the_outbox_and_sync(tmp_path: Any, world: World) -> None:
    world.create_table()
    world.put("5/a.jpg")
    world.put("6/b.jpg")
    async with running(world, triggers=True) as runtime:
        db = _sqlite(world)
        try:
            db.execute("INSERT INTO portfolios (id, title) VALUES (5, 'new')")
            await eventually(lambda: world.images(5) == ["5/a.jpg"])
            # a rolled back insert queues nothing
            db.execute("BEGIN")
            db.execute("INSERT INTO portfolios (id, title) VALUES (6, 'rolled back')")
            db.execute("ROLLBACK")
            # of these changes, only the marker after them (row 6 inserted for real) is work
            marker = "INSERT INTO portfolios (id, title) VALUES (6, 'marker')"
            seen = await accepted_until_marker(
                runtime,
                "outbox",
                lambda: db.execute(marker),
                lambda: world.images(6) == ["6/b.jpg"],
            )
            assert seen == 1  # the marker only
            # our own writes queue nothing, even when they cascade into other columns
            db.execute(
                "CREATE TRIGGER stamp AFTER UPDATE OF images ON portfolios "
                "BEGIN UPDATE portfolios SET title = 'stamped' WHERE id = NEW.id; END"
            )
            world.put("5/c.jpg")
            world.put("7/d.jpg")
            await runtime.request("5", "manual")
            await eventually(lambda: world.images(5) == ["5/a.jpg", "5/c.jpg"])
            await asyncio.wait_for(runtime.queue.join(), 10)
            seen = await accepted_until_marker(
                runtime,
                "outbox",
                lambda: db.execute("INSERT INTO portfolios (id, title) VALUES (7, 'marker')"),
                lambda: world.images(7) == ["7/d.jpg"],
            )
            assert seen == 1  # the marker only: the cascade of our write queued nothing
            db.execute("DROP TRIGGER stamp")
            before = runtime.metrics.events.labels("outbox", "accepted")._value.get()
            # an application's edit of the images column is work, and reverted
            db.execute("UPDATE portfolios SET images = '[\"5/c.jpg\"]' WHERE id = 5")
            await eventually(lambda: world.images(5) == ["5/a.jpg", "5/c.jpg"])
            await eventually(
                lambda: (
                    runtime.metrics.events.labels("outbox", "accepted")._value.get() == before + 1
                )
            )
            await asyncio.wait_for(runtime.queue.join(), 10)
            before += 1
            # a title edit is work (a cheap no-op sync: nothing to write)
            writes = world.writes()
            db.execute("UPDATE portfolios SET title = 'renamed' WHERE id = 5")
            await eventually(
                lambda: (
                    runtime.metrics.events.labels("outbox", "accepted")._value.get() == before + 1
                )
            )
            await asyncio.wait_for(runtime.queue.join(), 10)
            assert world.writes() == writes + 1  # the app's own UPDATE; the sync wrote nothing
            # a delete is recorded in history, and the folder reported as orphan
            db.execute("DELETE FROM portfolios WHERE id = 5")
            await eventually(
                lambda: any(
                    h["trigger"] == "database:DELETE"
                    for h in schema.read_history(runtime.service.catalog.engine, "5")
                )
            )
            entry = schema.read_history(runtime.service.catalog.engine, "5")[0]
            assert entry["removed"] == ["5/a.jpg", "5/c.jpg"]
        finally:
            db.close()


async def test_postgres_has_no_outbox(pg_world: World) -> None:
    """On PostgreSQL the outbox triggers are not installed (jobs are deferred instead)."""
    pg_world.create_table()
    with pg_world.service() as svc:
        assert outbox.install_sql(svc.catalog) == []
        assert not outbox.installed(svc.catalog)
    proc = run("setup", env=pg_world.env())
    assert proc.returncode == 0, proc.stderr
    assert "installed row triggers" not in proc.stdout
    assert "installed job triggers on portfolios" in proc.stdout


@SQLITE_ONLY
async def test_setup_cli_installs_prints_and_uninstalls_triggers(world: World) -> None:
    world.create_table()
    proc = run("setup", env=world.env())
    assert proc.returncode == 0, proc.stderr
    assert (
        "installed row triggers on portfolios "
        "(INSERT, DELETE, and UPDATE by anyone but portfolio-sync)" in proc.stdout
    )
    printed = run("setup", "--print-sql", env=world.env()).stdout
    assert "CREATE TRIGGER" in printed and "AFTER UPDATE ON portfolios WHEN NOT EXISTS" in printed
    assert run("setup", env=world.env()).returncode == 0  # idempotent
    db = _sqlite(world)
    try:
        with world.service() as svc:
            assert not outbox.outdated(svc.catalog)
            # triggers of the previous version (UPDATE of the other columns only) are outdated
            db.execute("DROP TRIGGER portfolio_sync_portfolios_update")
            db.execute(
                "CREATE TRIGGER portfolio_sync_portfolios_update AFTER UPDATE OF id, title "
                "ON portfolios BEGIN SELECT 1; END"
            )
            assert outbox.outdated(svc.catalog)
            assert run("setup", env=world.env()).returncode == 0
            assert not outbox.outdated(svc.catalog)
        count = (
            "SELECT count(*) FROM sqlite_master "
            "WHERE type = 'trigger' AND name LIKE 'portfolio_sync_%'"
        )
        assert db.execute(count).fetchone()[0] == 3
        assert run("setup", "--uninstall", env=world.env()).returncode == 0
        assert db.execute(count).fetchone()[0] == 0
    finally:
        db.close()


async def test_events_ahead_of_storage_are_rechecked(world: World) -> None:
    """Supabase's storage.objects trigger fires before the object is readable."""
    world.create_table()
    world.insert(3, None)
    async with running(world) as runtime:
        lagging = runtime.metrics.retries.labels("lagging")
        await runtime.request("3", "storage:test", expect={"3/late.jpg": True})
        await eventually(lambda: lagging._value.get() >= 1)  # a sync ran, and will again
        assert world.images(3) == []
        world.put("3/late.jpg")  # appears after its event, without another event
        took = await eventually(lambda: world.images(3) == ["3/late.jpg"], timeout=15)
        assert took < 15
        assert runtime.metrics.retries.labels("lagging")._value.get() >= 1


@SQLITE_ONLY  # S3 has no watcher; storage events are covered in test_serve
async def test_folder_watcher_follows_files_and_folders(tmp_path: Any, world: World) -> None:
    world.create_table(key="text")
    for key in ("a", "b", "c"):
        world.insert(key, None)
    world.put("a/1.jpg")
    world.put("c/0.jpg")
    async with running(world, watch=True) as runtime:
        assert world.root is not None
        shutil.copy(world.root / "a" / "1.jpg", world.root / "a" / "2.jpg")
        took = await eventually(lambda: world.images("a") == ["a/1.jpg", "a/2.jpg"])
        assert took < 1.0  # a dropped file reaches its row within a second
        (world.root / "a" / "1.jpg").unlink()
        await eventually(lambda: world.images("a") == ["a/2.jpg"])
        # a whole folder moved to another portfolio
        (world.root / "a").rename(world.root / "b")
        await eventually(lambda: world.images("a") == [] and world.images("b") == ["b/2.jpg"])
        # editor temp files and non-images do not cost a sync
        await asyncio.wait_for(runtime.queue.join(), 10)
        root = world.root
        (root / "b" / ".2.jpg.swp").write_bytes(b"x")
        (root / "b" / "notes.txt").write_bytes(b"x")
        (root / "b" / "2.jpg~").write_bytes(b"x")
        seen = await accepted_until_marker(
            runtime,
            "watcher",
            lambda: shutil.copy(root / "b" / "2.jpg", root / "c" / "m.jpg"),
            lambda: world.images("c") == ["c/0.jpg", "c/m.jpg"],
        )
        assert seen == 1  # the marker only


async def test_scheduler_reports_next_run(world: World) -> None:
    world.create_table()
    async with running(world, schedule="*/5 * * * *") as runtime:
        await eventually(lambda: runtime.next_full_pass is not None)
        assert runtime.next_full_pass is not None
        assert runtime.next_full_pass.minute % 5 == 0
        remaining = runtime.next_full_pass.timestamp() - time.time()
        assert 0 < remaining <= 300


@pytest.mark.parametrize("burst", [1000])
async def test_burst_for_one_key_costs_a_handful_of_syncs(world: World, burst: int) -> None:
    world.create_table()
    world.insert(9, None)
    world.log_syncs()  # counted by the database, not by the product's metrics
    # Follow-ups wait the debounce (4 s) each: a burst shorter than 16 s costs at most
    # five syncs even when a loaded machine stretches the requests out.
    async with running(world, debounce=4.0, schedule="0 0 1 1 *") as runtime:
        base = world.syncs(9)
        for i in range(burst):
            world.put(f"9/img{i}.jpg") if i % 100 == 0 else None
            await runtime.request("9", "storage:burst")
        await asyncio.wait_for(runtime.queue.join(), 60)
        syncs = world.syncs(9) - base
        assert 1 <= syncs <= 5, syncs
        assert len(world.images(9) or []) == 10


async def test_a_watcher_that_raises_is_logged_once_restarted_and_catches_up(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """watchfiles raises on a name that is not UTF-8 (and the watcher task used to die
    silently). Supervised, it is reported down, restarted with backoff, its traceback
    logged once for repeated failures, and a full pass catches up what it missed."""
    root = tmp_path / "storage"
    root.mkdir()
    world = World(kind="sqlite-folder", database_url=f"sqlite:///{tmp_path / 'app.db'}", root=root)
    world.create_table()
    world.insert(1, None)
    world.put("1/a.jpg")
    caplog.set_level(logging.WARNING, logger="portfolio_sync.runtime")
    try:
        async with running(world, watch=True) as runtime:
            for attempt in range(2):
                await eventually(lambda: runtime.sources["watcher"] == "ok", 20)
                bad = os.path.join(os.fsencode(root / "1"), b"bad\xff%d.jpg" % attempt)
                with open(bad, "wb") as handle:
                    handle.write(b"x" * 10)
                await eventually(lambda: runtime.sources["watcher"].startswith("down"), 20)
            world.put("1/b.jpg")  # the watcher is down or restarting: the catch-up sees it
            await eventually(lambda: world.images(1) == ["1/a.jpg", "1/b.jpg"], 20)
            await eventually(lambda: runtime.sources["watcher"] == "ok", 20)
            assert runtime.check_ready()["watcher"] == "ok"
    finally:
        world.close()
    failures = [r for r in caplog.records if getattr(r, "action", "") == "source_failed"]
    assert len(failures) >= 2 and all(r.source == "watcher" for r in failures)  # type: ignore[attr-defined]
    assert [r.exc_info is not None for r in failures][:2] == [True, False]


async def test_a_folder_fault_in_the_full_pass_is_retried_for_that_key(tmp_path: Any) -> None:
    """A file where folder 2 should be: the catch-up pass writes the other rows, records
    the fault on key 2 and hands it to the queue, whose retries (with backoff) pick the
    folder up once it is one again; no full pass is needed for that."""
    root = tmp_path / "storage"
    root.mkdir()
    world = World(kind="sqlite-folder", database_url=f"sqlite:///{tmp_path / 'app.db'}", root=root)
    world.create_table()
    for key in (1, 2, 3):
        world.insert(key, [f"{key}/a.jpg"])
    world.put("1/a.jpg")
    world.put("1/b.jpg")
    world.put("3/a.jpg")
    (root / "2").write_bytes(b"not a folder")
    try:
        with world.service(debounce=0.05) as svc:
            runtime = Runtime(svc, watch=False)
            async with runtime:
                await eventually(lambda: world.images(1) == ["1/a.jpg", "1/b.jpg"], 20)
                sample = runtime.metrics.registry.get_sample_value
                await eventually(
                    lambda: (sample("portfolio_sync_retries_total", {"reason": "error"}) or 0) >= 1
                )
                state = schema.read_state(svc.catalog.engine, "2")
                assert state is not None and "is not a folder" in state["last_error"]
                assert world.images(2) == ["2/a.jpg"]
                (root / "2").unlink()
                world.put("2/a.jpg")
                world.put("2/c.jpg")
                await eventually(lambda: world.images(2) == ["2/a.jpg", "2/c.jpg"], 30)
                assert (
                    sample("portfolio_sync_full_passes_total", {"outcome": "ok"}) == 1
                )  # catch-up
    finally:
        world.close()
