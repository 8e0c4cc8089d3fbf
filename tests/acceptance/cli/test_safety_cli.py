"""The safety rules as the command shows them: exit codes, held writes, `release`."""

from __future__ import annotations

import shutil

from tests.acceptance.command import run, run_json
from tests.integration.world import World


def _fill(world: World, count: int) -> None:
    world.create_table()
    for key in range(1, count + 1):
        world.insert(key, [f"{key}/a.jpg"])
        world.put(f"{key}/a.jpg")


def _empty_root_env(world: World) -> dict[str, str]:
    """The environment of a command whose storage root holds nothing (an unmounted volume,
    or a wrong S3 prefix)."""
    if world.root is not None:
        shutil.rmtree(world.root)
        world.root.mkdir()
        return world.env()
    assert world.s3 is not None
    return world.env(PORTFOLIO_SYNC_STORAGE_URL=f"s3://{world.s3.bucket}/wrong-prefix")


def test_sync_keys_against_an_empty_root_exits_1_and_writes_nothing(world: World) -> None:
    _fill(world, 3)
    env = _empty_root_env(world)
    results = run_json("sync", "1", "2", "3", env=env, expect=1)
    assert [r["status"] for r in results] == ["error"] * 3
    assert all("holds nothing" in r["error"] for r in results)
    assert world.writes() == 0 and world.images(2) == ["2/a.jpg"]
    errors = run_json("status", env=env)["errors"]
    assert sorted(e["key"] for e in errors) == ["1", "2", "3"]


def test_diff_exit_code_reports_a_pass_the_guard_would_refuse(world: World) -> None:
    _fill(world, 8)
    for key in range(1, 7):
        world.delete(f"{key}/a.jpg")
    proc = run("diff", "--exit-code", env=world.env())
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "refusing to empty 6 of 8" in proc.stderr
    assert world.writes() == 0


def test_held_writes_are_shown_and_released_by_the_operator(world: World) -> None:
    _fill(world, 8)
    for key in range(1, 7):
        world.delete(f"{key}/a.jpg")
    results = run_json("sync", *[str(k) for k in range(1, 7)], env=world.env(), expect=1)
    assert [r["status"] for r in results] == ["changed"] * 4 + ["held"] * 2
    status = run_json("status", env=world.env())
    assert [h["key"] for h in status["held"]] == ["5", "6"]
    text = " ".join(run("status", env=world.env()).stdout.split())  # rich wraps lines
    assert "held writes 2" in text and "portfolio-sync release" in text
    released = run_json("release", "6", env=world.env())
    assert [(r["key"], r["status"]) for r in released] == [("6", "changed")]
    assert world.images(6) == [] and world.images(5) == ["5/a.jpg"]
    proc = run("release", env=world.env())
    assert proc.returncode == 0 and "5: updated" in proc.stdout
    assert run_json("status", env=world.env())["held"] == []
    assert run("release", env=world.env()).stdout.strip() == "no held writes"
    assert world.writes() == 6
