"""Safety on every path: storage-root health before emptying writes, the streaming guard
with held writes, and the full pass's guard counted against the right denominator.

Every test runs on both matrices (SQLite + folder, PostgreSQL + moto S3); rows written are
counted by the world's database trigger, never by the product's own report.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from portfolio_sync.backends import schema
from tests.integration.world import World


def _fill(world: World, keys: range, *, folders: bool = True) -> None:
    world.create_table()
    for key in keys:
        world.insert(key, [f"{key}/a.jpg"])
        if folders:
            world.put(f"{key}/a.jpg")


def _break_root(world: World) -> dict[str, str]:
    """What an unmounted volume or a wrong setting looks like: an empty storage root.

    Local: the root is replaced by an empty folder. S3: the settings point at a prefix
    that holds nothing (the bucket answers). Returns the settings overrides to use.
    """
    if world.root is not None:
        shutil.rmtree(world.root)
        world.root.mkdir()
        return {}
    assert world.s3 is not None
    return {"storage_url": f"s3://{world.s3.bucket}/wrong-prefix"}


def test_an_empty_root_is_an_error_for_single_syncs_not_an_emptying_write(world: World) -> None:
    _fill(world, range(1, 4))
    with world.service() as svc:
        assert svc.reconciler.sync_all("test").ok
    overrides = _break_root(world)
    with world.service(**overrides) as svc:
        results = [svc.reconciler.sync_one(str(key), "test") for key in (1, 2, 3)]
        state = schema.read_state(svc.catalog.engine, "2")
    assert [r.status for r in results] == ["error"] * 3
    assert "holds nothing" in (results[0].error or "")
    assert world.writes() == 0
    assert [world.images(key) for key in (1, 2, 3)] == [["1/a.jpg"], ["2/a.jpg"], ["3/a.jpg"]]
    assert state is not None and "holds nothing" in state["last_error"]


def test_an_empty_root_stops_the_full_pass_below_the_guard(world: World) -> None:
    """Three non-empty rows are below the guard's five; root health still refuses."""
    _fill(world, range(1, 4))
    overrides = _break_root(world)
    with world.service(**overrides) as svc:
        report = svc.reconciler.sync_all("test")
        dry = svc.reconciler.sync_all("test", dry_run=True)
    assert report.aborted is not None and "holds nothing" in report.aborted
    assert dry.aborted == report.aborted
    assert world.writes() == 0


def test_a_single_real_deletion_still_empties_its_row_at_once(world: World) -> None:
    _fill(world, range(1, 4))
    world.delete("2/a.jpg")
    with world.service() as svc:
        result = svc.reconciler.sync_one("2", "test")
    assert result.status == "changed" and world.images(2) == []
    assert world.written_keys() == ["2"]


def test_emptying_writes_past_the_guard_are_held_until_released(world: World) -> None:
    """20 non-empty rows, 10 folders deleted, synced one by one (as events would): the
    guard allows 4 (5 would be >= 5 rows and > 10% of 20), the other 6 are held."""
    _fill(world, range(1, 21))
    for key in range(1, 11):
        world.delete(f"{key}/a.jpg")
    with world.service() as svc:
        results = [svc.reconciler.sync_one(str(key), "storage") for key in range(1, 11)]
        held = schema.read_held(svc.catalog.engine)
    assert [r.status for r in results] == ["changed"] * 4 + ["held"] * 6
    assert world.writes() == 4
    assert [h["key"] for h in held] == [str(k) for k in range(5, 11)]
    assert held[0]["held_write"]["removed"] == ["5/a.jpg"]
    assert held[0]["held_write"]["new"] == [[]] and "release" in held[0]["held_reason"]
    assert world.images(5) == ["5/a.jpg"]
    with world.service() as svc:  # the window is shared: a new process holds them too
        assert svc.reconciler.sync_one("7", "storage").status == "held"
        released = svc.reconciler.sync_one("7", "release", release=True)
        assert released.status == "changed" and world.images(7) == []
        still = [h["key"] for h in schema.read_held(svc.catalog.engine)]
        assert still == ["5", "6", "8", "9", "10"]
        unforced = svc.reconciler.sync_all("test")  # e.g. the scheduled pass
        assert unforced.ok and sorted(unforced.held, key=int) == still and not unforced.changed
        assert world.writes() == 5
        assert svc.reconciler.sync_all("test", force=True).ok
        assert schema.read_held(svc.catalog.engine) == []
    assert world.writes() == 10


def test_a_held_write_is_dropped_when_its_folder_comes_back(world: World) -> None:
    _fill(world, range(1, 8))
    for key in range(1, 7):
        world.delete(f"{key}/a.jpg")
    with world.service() as svc:
        statuses = [svc.reconciler.sync_one(str(key), "storage").status for key in range(1, 7)]
        assert statuses == ["changed"] * 4 + ["held"] * 2
        world.put("6/a.jpg")  # it was an outage of that folder, not a deletion
        assert svc.reconciler.sync_one("6", "storage").status == "unchanged"
        assert [h["key"] for h in schema.read_held(svc.catalog.engine)] == ["5"]
    assert world.images(6) == ["6/a.jpg"]


def test_guard_counts_only_rows_that_were_non_empty(world: World) -> None:
    """100 rows, 10 non-empty, 6 of those folders gone: 6 >= 5 and 6 > 10% of 10, so the
    pass is refused. Counting NULL and [] rows as non-empty (6 < 10% of 100) would let the
    six writes through; the write-counting trigger must see none."""
    world.create_table()
    for key in range(1, 101):
        if key <= 10:
            world.insert(key, [f"{key}/a.jpg"])
            if key > 6:
                world.put(f"{key}/a.jpg")
        else:
            world.insert(key, None if key % 2 else [])
            if key % 2:  # NULL rows need a write (to []) in any case: keep them in sync
                world.set_images(key, [])
    world.execute("DELETE FROM write_log")
    with world.service() as svc:
        report = svc.reconciler.sync_all("test")
    assert report.aborted is not None and "refusing to empty 6 of 10" in report.aborted
    assert world.writes() == 0


# ---- local folders only: devices, faults of one folder -------------------------------------


def test_root_on_another_device_is_an_error(tmp_path: Path, local: World) -> None:
    """An unmounted volume leaves a folder on the parent's device: refused even when it is
    not empty (a stale copy, or folders created under the mount point)."""
    assert local.root is not None
    _fill(local, range(1, 4))
    with local.service() as svc:
        assert svc.reconciler.sync_all("test").ok  # records the root's device
    elsewhere = Path("/dev/shm") / f"portfolio-sync-test-{os.getpid()}-{tmp_path.name}"
    assert os.stat("/dev/shm").st_dev != os.stat(local.root).st_dev
    try:
        shutil.copytree(local.root, elsewhere)
        (elsewhere / "2" / "a.jpg").unlink()
        shutil.rmtree(local.root)
        local.root.symlink_to(elsewhere)
        with local.service() as svc:
            result = svc.reconciler.sync_one("2", "test")
            assert result.status == "error" and "another device" in (result.error or "")
            assert local.writes() == 0
            assert svc.reconciler.sync_all("test", force=True).ok  # the operator accepts it
            assert svc.reconciler.sync_one("3", "test").status == "unchanged"
        assert local.images(2) == []
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)
