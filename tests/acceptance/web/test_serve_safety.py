"""Safety under `serve`: removal events past the guard are held (shown by /readyz,
/metrics, GET /portfolios/{key}, released by the command), an emptied storage root empties
no more than the guard allows, and a dead watcher is reported and restarted."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.command import run_json
from tests.acceptance.serve_process import ServeProcess, serve_process, wait_for
from tests.acceptance.web.test_serve import s3_event
from tests.integration.world import World


def _fill(world: World, count: int) -> None:
    world.create_table()
    for key in range(1, count + 1):
        world.insert(key, [f"{key}/a.jpg"])
        world.put(f"{key}/a.jpg")


@pytest.fixture
def local(tmp_path: Path) -> Iterator[World]:
    root = tmp_path / "storage"
    root.mkdir()
    w = World(kind="sqlite-folder", database_url=f"sqlite:///{tmp_path / 'app.db'}", root=root)
    yield w
    w.close()


def _settled(world: World, server: ServeProcess, keys: range) -> dict[str, list[str]]:
    """Per outcome, the keys whose sync has ended: emptied, held, or failed (an error)."""
    outcome: dict[str, list[str]] = {"emptied": [], "held": [], "error": []}
    for key in keys:
        state = server.portfolio(str(key))
        assert state is not None
        if world.images(key) == []:
            outcome["emptied"].append(str(key))
        elif state["held"] is not None:
            outcome["held"].append(str(key))
        elif state["last_error"]:
            outcome["error"].append(str(key))
    return outcome


def test_a_burst_of_removal_events_is_held_past_the_guard(world: World, tmp_path: Path) -> None:
    """30 non-empty rows, 12 folders emptied, one removal event each: 4 rows may be
    emptied at once (5 would be >= 5 rows and > 10%), the other 8 are held."""
    _fill(world, 30)
    with serve_process(world.env(), tmp_path, "--no-watch") as server:
        wait_for(lambda: server.metric("portfolio_sync_full_passes_total") >= 1, what="catch-up")
        for key in range(1, 13):
            world.delete(f"{key}/a.jpg")
            answer = server.client.post(
                "/hooks/storage", content=s3_event(world, f"{key}/a.jpg", removed=True)
            )
            assert answer.status_code == 202, answer.text
        outcome: dict[str, list[str]] = wait_for(
            lambda: (
                (o := _settled(world, server, range(1, 13)))
                and len(o["emptied"]) + len(o["held"]) == 12
                and o
            ),
            timeout=30,
            what="every removal synced",
        )
        assert len(outcome["emptied"]) == 4 and len(outcome["held"]) == 8
        assert world.writes() == 4
        ready = server.client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "degraded"
        assert "8 emptying write(s) held" in ready.json()["checks"]["held_writes"]
        assert server.metric("portfolio_sync_held_writes") == 8
        held = server.portfolio(outcome["held"][0])
        assert held is not None and held["held"]["removed"] == [f"{outcome['held'][0]}/a.jpg"]
        released = run_json("release", env=world.env())
        assert sorted(r["key"] for r in released) == sorted(outcome["held"])
        assert {r["status"] for r in released} == {"changed"}
        assert server.client.get("/readyz").status_code == 200
    assert world.writes() == 12
    assert all(world.images(key) == [] for key in range(1, 13))
    assert all(world.images(key) == [f"{key}/a.jpg"] for key in range(13, 31))


def test_removing_everything_under_storage_empties_no_more_than_the_guard(
    local: World, tmp_path: Path
) -> None:
    """`rm -rf storage/*` under serve: the watcher reports 20 deleted folders. Four rows may
    go while other folders remain; once the root is empty every further emptying write
    is a storage error, and the rest are held: at most 4 of 20 rows are emptied."""
    _fill(local, 20)
    assert local.root is not None
    with serve_process(local.env(), tmp_path) as server:
        wait_for(lambda: server.metric("portfolio_sync_full_passes_total") >= 1, what="catch-up")
        for child in sorted(local.root.iterdir()):
            shutil.rmtree(child)
        outcome = wait_for(
            lambda: (
                (o := _settled(local, server, range(1, 21)))
                and sum(map(len, o.values())) == 20
                and o
            ),
            timeout=30,
            what="every deleted folder synced",
        )
        assert len(outcome["emptied"]) <= 4, outcome
        assert server.client.get("/readyz").status_code == 503
    assert local.writes() == len(outcome["emptied"]) <= 4


def test_a_name_that_is_not_utf8_neither_stops_the_watcher_nor_fails_a_page(
    local: World, tmp_path: Path
) -> None:
    _fill(local, 3)
    assert local.root is not None
    with serve_process(local.env(), tmp_path) as server:
        wait_for(lambda: server.metric("portfolio_sync_full_passes_total") >= 1, what="catch-up")
        with open(os.path.join(os.fsencode(local.root / "2"), b"bad\xff.jpg"), "wb") as handle:
            handle.write(b"x" * 10)
        local.put("2/b.jpg")
        wait_for(lambda: local.images(2) == ["2/a.jpg", "2/b.jpg"], timeout=20, what="row 2")
        page = server.portfolio("2")
        assert page is not None and page["listing"]["images"] == ["2/a.jpg", "2/b.jpg"]
        assert server.client.get("/").status_code == 200
        assert server.metric("portfolio_sync_skipped_names_total") >= 1
        # the watcher keeps (or comes back to) working: a later upload is seen
        local.put("3/c.jpg")
        wait_for(lambda: local.images(3) == ["3/a.jpg", "3/c.jpg"], timeout=20, what="row 3")
        wait_for(lambda: server.client.get("/readyz").status_code == 200, what="ready again")
    log = server.log()
    assert "Traceback" not in log or log.count("background source failed, restarting") <= 1


def test_readyz_reports_a_watcher_that_is_down(local: World, tmp_path: Path) -> None:
    _fill(local, 2)
    assert local.root is not None
    with serve_process(local.env(), tmp_path) as server:
        wait_for(lambda: server.metric("portfolio_sync_full_passes_total") >= 1, what="catch-up")
        shutil.rmtree(local.root)  # the watched folder is gone: the watcher cannot run

        def watcher_down() -> Any:
            checks = server.client.get("/readyz").json()["checks"]
            return checks.get("watcher", "ok").startswith("down") and checks

        checks = wait_for(watcher_down, timeout=20, what="the watcher reported down")
        local.root.mkdir()
        local.put("1/a.jpg")
        local.put("2/a.jpg")
        wait_for(
            lambda: server.client.get("/readyz").json()["checks"]["watcher"] == "ok",
            timeout=40,
            what="the watcher restarted",
        )
        local.put("1/new.jpg")
        wait_for(lambda: local.images(1) == ["1/a.jpg", "1/new.jpg"], timeout=20, what="event")
    assert checks["watcher"].startswith("down")
    assert local.images(2) == ["2/a.jpg"]
