"""The `portfolio-sync` command as users run it, on both matrices."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.acceptance.command import run, run_json
from tests.integration.world import World
from tests.servers import MotoServer, S3Target


def test_sync_all_twice_second_writes_nothing(world: World) -> None:
    world.create_table()
    for key in range(1, 11):
        world.insert(key, ["stale.jpg"] if key % 2 else None)
        world.put(f"{key}/a.jpg")
    first = run_json("sync", "--all", env=world.env())
    assert first["ok"] and len(first["changed"]) == 10
    writes = world.writes()
    second = run_json("sync", "--all", env=world.env())
    assert second["ok"] and second["changed"] == [] and second["unchanged"] == 10
    assert world.writes() == writes == 10


def test_dry_run_and_diff_write_nothing(world: World) -> None:
    world.create_table()
    world.insert(1, ["1/old.jpg"])
    world.put("1/new.jpg")
    report = run_json("sync", "--all", "--dry-run", env=world.env())
    assert report["dry_run"] and report["changed"][0]["added"] == ["1/new.jpg"]
    proc = run("diff", "--exit-code", env=world.env())
    assert proc.returncode == 1 and "+ 1/new.jpg" in proc.stdout and "- 1/old.jpg" in proc.stdout
    assert run("diff", "1", env=world.env()).returncode == 0
    assert world.writes() == 0
    proc = run("sync", "1", env=world.env())
    assert proc.returncode == 0 and "updated" in proc.stdout
    assert run("diff", "--exit-code", env=world.env()).returncode == 0


def test_history_and_status(world: World) -> None:
    world.create_table()
    world.insert(1, None)
    world.put("1/a.jpg")
    assert run("sync", "--all", env=world.env()).returncode == 0
    history = run_json("history", "1", env=world.env())
    assert history["history"][0]["added"] == ["1/a.jpg"]
    assert history["history"][0]["trigger"] == "manual"
    status = run_json("status", env=world.env())
    assert status["rows"] == 1 and status["last_full_pass"]["changed"] == 1
    assert status["schema_version"] >= 1
    text = run("status", env=world.env())
    assert text.returncode == 0 and "last full pass" in text.stdout


def test_guard_trips_and_force_applies(world: World) -> None:
    world.create_table()
    for key in range(1, 9):
        world.insert(key, [f"{key}/a.jpg"])
    world.put("8/a.jpg")
    proc = run("sync", "--all", env=world.env())
    assert proc.returncode == 1 and "refusing to empty 7 of 8" in proc.stderr
    assert world.writes() == 0
    assert run("sync", "--all", "--force", env=world.env()).returncode == 0
    assert world.images(1) == [] and world.images(8) == ["8/a.jpg"]


def test_storage_failure_writes_nothing_and_exits_nonzero(
    tmp_path: Path, pg_url: str, moto_server_private: MotoServer
) -> None:
    s3 = S3Target(endpoint=moto_server_private.endpoint, bucket="failing-bucket")
    s3.create_bucket()
    world = World(kind="postgres-s3", database_url=pg_url, s3=s3)
    try:
        world.create_table()
        for key in range(1, 6):
            world.insert(key, None)
            world.put(f"{key}/a.jpg")
        assert run("sync", "--all", env=world.env()).returncode == 0
        assert world.writes() == 5
        world.put("1/b.jpg")
        moto_server_private.stop()  # storage goes away mid-test
        proc = run("sync", "--all", env=world.env())
        assert proc.returncode == 1 and "cannot reach" in proc.stderr
        proc = run("sync", "1", "2", env=world.env())
        assert proc.returncode == 1
        assert world.writes() == 5
        assert world.images(1) == ["1/a.jpg"]  # neither wiped nor half-updated
    finally:
        s3.close()
        world.close()


def test_missing_storage_folder_is_an_error_not_empty(tmp_path: Path) -> None:
    world = World(
        kind="sqlite-folder",
        database_url=f"sqlite:///{tmp_path / 'a.db'}",
        root=tmp_path / "does-not-exist",
    )
    try:
        world.create_table()
        world.insert(1, ["1/a.jpg"])
        proc = run("sync", "--all", env=world.env())
        assert proc.returncode == 1 and "does not exist" in proc.stderr
        assert run("sync", "1", env=world.env()).returncode == 1
        assert world.images(1) == ["1/a.jpg"] and world.writes() == 0
    finally:
        world.close()


def test_config_errors_exit_2_with_reason(tmp_path: Path, world: World) -> None:
    world.create_table()
    proc = run("sync", "--all", env=world.env(PORTFOLIO_SYNC_ORDER="random"))
    assert proc.returncode == 2 and "PORTFOLIO_SYNC_ORDER" in proc.stderr
    proc = run("--folder", "photos/", "sync", "--all", env=world.env())
    assert proc.returncode == 2 and "{key}" in proc.stderr
    proc = run("sync", "--all", env=world.env(PORTFOLIO_SYNC_TABLE="nope"))
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert run("sync", env=world.env()).returncode == 2  # neither keys nor --all


def test_init_writes_a_config_that_loads(tmp_path: Path, world: World) -> None:
    env = world.env()
    proc = run("init", env=env, cwd=tmp_path)
    assert proc.returncode == 0 and (tmp_path / "portfolio-sync.toml").is_file()
    assert run("init", env=env, cwd=tmp_path).returncode == 2  # refuses to overwrite
    world.create_table()
    world.insert(1, None)
    world.put("1/a.jpg")
    # The file's storage_url/database_url are overridden by env; the rest comes from it.
    assert run("sync", "--all", env=env, cwd=tmp_path).returncode == 0
    assert world.images(1) == ["1/a.jpg"]


def test_demo_creates_real_images_and_syncs(tmp_path: Path) -> None:
    proc = run("demo", "--dir", "demo", env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    demo = tmp_path / "demo"
    with sqlite3.connect(demo / "portfolio-sync.db") as db:
        rows = dict(db.execute("SELECT id, images FROM portfolios").fetchall())
    assert len(rows) == 20
    import json

    from PIL import Image

    for key, images in rows.items():
        listed = json.loads(images)
        on_disk = sorted(
            p.relative_to(demo / "storage").as_posix()
            for p in (demo / "storage" / str(key)).iterdir()
        )
        assert sorted(listed) == on_disk and listed
        with Image.open(demo / "storage" / listed[0]) as img:
            assert img.size == (320, 213)
    # running it again recreates it cleanly
    assert run("demo", "--dir", "demo", env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path).returncode == 0
