"""End to end: real database, real storage, the product's own reconciler.

Every storage backend passes the same tests: a local folder (with SQLite), S3 on moto and
Supabase's `storage.objects` table (with PostgreSQL).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import make_world
from tests.integration.world import World


@pytest.fixture(params=["sqlite-folder", "postgres-s3", "postgres-supabase-db"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    w = make_world(request, tmp_path, request.param)
    yield w
    w.close()


def test_new_rows_added_and_deleted_images_and_null(world: World) -> None:
    world.create_table()
    world.insert(1, None)
    world.insert(2, ["2/gone.jpg", "2/keep.jpg"])
    world.insert(3, ["3/x.jpg"])
    world.put("1/b.jpg")
    world.put("1/a.jpg")
    world.put("2/keep.jpg")
    world.put("2/new.png")
    with world.service() as svc:
        report = svc.reconciler.sync_all("test")
    assert report.ok
    assert world.images(1) == ["1/a.jpg", "1/b.jpg"]
    assert world.images(2) == ["2/keep.jpg", "2/new.png"]
    assert world.images(3) == []  # a row without a folder gets []
    assert sorted(r.key for r in report.changed) == ["1", "2", "3"]
    assert world.written_keys() == ["1", "2", "3"]
    changed = {r.key: r for r in report.changed}
    assert changed["2"].added == ("2/new.png",) and changed["2"].removed == ("2/gone.jpg",)


def test_second_full_pass_writes_zero_rows(world: World) -> None:
    world.create_table()
    for key in range(1, 30):
        world.insert(key, None if key % 3 else ["stale.jpg"])
        for i in range(key % 4):
            world.put(f"{key}/img{i}.jpg")
    with world.service() as svc:
        first = svc.reconciler.sync_all("test")
        writes_after_first = world.writes()
        second = svc.reconciler.sync_all("test")
    assert first.ok and second.ok
    assert writes_after_first == len(first.changed) == 29
    assert world.writes() == writes_after_first  # counted by a trigger, not by the report
    assert second.changed == [] and second.unchanged == 29


def test_orphan_folders_reported_never_created(world: World) -> None:
    world.create_table()
    world.insert(1, None)
    world.put("1/a.jpg")
    world.put("99/a.jpg")
    world.put("not-a-number/a.jpg")
    with world.service() as svc:
        report = svc.reconciler.sync_all("test")
        one = svc.reconciler.sync_one("99", "test")
    assert sorted(report.orphans) == ["99", "not-a-number"]
    assert one.status == "orphan"
    assert world.writes() == 1


@pytest.mark.parametrize("key", ["a b", "a+b", "a#1", "café", "naïve ☃"])
def test_odd_text_keys_round_trip(world: World, key: str) -> None:
    world.create_table(key="text")
    world.insert(key, None)
    world.put(f"{key}/photo 1.jpg")
    world.put(f"{key}/photo+2.jpg")
    with world.service() as svc:
        assert svc.reconciler.sync_all("test").ok
        assert svc.reconciler.sync_one(key, "test").status == "unchanged"
    assert world.images(key) == [f"{key}/photo 1.jpg", f"{key}/photo+2.jpg"]


def test_nfc_and_nfd_keys_stay_distinct_and_byte_exact(world: World) -> None:
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    world.create_table(key="text")
    world.insert(nfc, None)
    world.insert(nfd, None)
    world.put(f"{nfc}/one.jpg")
    world.put(f"{nfd}/two.jpg")
    with world.service() as svc:
        report = svc.reconciler.sync_all("test")
    assert report.ok and report.orphans == []
    assert world.images(nfc) == [f"{nfc}/one.jpg"]
    assert world.images(nfd) == [f"{nfd}/two.jpg"]


def test_merge_order_with_prefix_keys(world: World) -> None:
    """`a b/` sorts before `a/` in storage; the merge must still pair rows and folders."""
    world.create_table(key="text")
    keys = ["a", "a b", "a-b", "a.b", "a/b".replace("/", "_"), "ab", "B", "b", "10", "9"]
    for key in keys:
        world.insert(key, None)
        world.put(f"{key}/x.jpg")
    with world.service() as svc:
        report = svc.reconciler.sync_all("test")
    assert report.ok and report.orphans == []
    for key in keys:
        assert world.images(key) == [f"{key}/x.jpg"]


def test_filter_and_natural_order(world: World) -> None:
    world.create_table()
    world.insert(7, None)
    for name in [
        "img10.jpg",
        "img2.JPG",
        "img1.webp",
        ".hidden.jpg",
        "._img1.jpg",
        ".DS_Store",
        "Thumbs.db",
        "notes.txt",
        "sub/deep.jpg",
        ".emptyFolderPlaceholder",
    ]:
        world.put(f"7/{name}")
    world.put("7/empty.jpg", b"")
    with world.service() as svc:
        assert svc.reconciler.sync_all("test").ok
    assert world.images(7) == ["7/img1.webp", "7/img2.JPG", "7/img10.jpg"]
    with world.service(recursive=True) as svc:
        assert svc.reconciler.sync_one("7", "test").status == "changed"
    assert world.images(7) == ["7/img1.webp", "7/img2.JPG", "7/img10.jpg", "7/sub/deep.jpg"]


def test_public_url_rendering(world: World) -> None:
    world.create_table(key="text")
    world.insert("a b", None)
    world.put("a b/pic #1+2.jpg")
    with world.service(public_url="https://cdn.example.com/p/{path}") as svc:
        assert svc.reconciler.sync_all("test").ok
    assert world.images("a b") == ["https://cdn.example.com/p/a%20b/pic%20%231%2B2.jpg"]


def test_preserve_order_policy(world: World) -> None:
    world.create_table()
    world.insert(1, ["1/c.jpg", "1/gone.jpg", "1/a.jpg"])
    for name in ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]:
        world.put(f"1/{name}")
    with world.service(order="preserve") as svc:
        assert svc.reconciler.sync_all("test").ok
    assert world.images(1) == ["1/c.jpg", "1/a.jpg", "1/b.jpg", "1/d.jpg"]


def test_two_collections_per_row(world: World) -> None:
    kind = "array" if world.postgres else "text"
    world.create_table(columns={"before_images": kind, "after_images": kind})
    world.insert(5, None, after_images=["5/after_images/old.jpg"])
    world.put("5/before_images/b1.jpg")
    world.put("5/before_images/b2.jpg")
    world.put("5/after_images/a1.jpg")
    world.put("5/cover.jpg")  # in neither collection
    collections = "before_images={key}/before_images/,after_images={key}/after_images/"
    with world.service(collections=collections) as svc:
        report = svc.reconciler.sync_all("test")
        assert svc.reconciler.sync_all("test").changed == []
    assert report.ok and [r.key for r in report.changed] == ["5"]
    assert world.images(5, "before_images") == ["5/before_images/b1.jpg", "5/before_images/b2.jpg"]
    assert world.images(5, "after_images") == ["5/after_images/a1.jpg"]
    assert world.writes() == 1


def test_folder_of_2500_images(world: World) -> None:
    world.create_table()
    world.insert(1, None)
    world.put_many([f"1/img{i}.jpg" for i in range(2500)], b"x")
    with world.service() as svc:
        assert svc.reconciler.sync_all("test").ok
        assert len(world.images(1) or []) == 2500
        world.delete("1/img1234.jpg")
        assert svc.reconciler.sync_one("1", "test").removed == ("1/img1234.jpg",)
    images = world.images(1) or []
    assert len(images) == 2499 and images[:3] == ["1/img0.jpg", "1/img1.jpg", "1/img2.jpg"]


def test_dry_run_writes_nothing(world: World) -> None:
    world.create_table()
    world.insert(1, ["1/old.jpg"])
    world.put("1/new.jpg")
    with world.service() as svc:
        report = svc.reconciler.sync_all("test", dry_run=True)
        one = svc.reconciler.sync_one("1", "test", dry_run=True)
    assert [r.key for r in report.changed] == ["1"] and report.dry_run
    assert one.status == "changed" and one.added == ("1/new.jpg",)
    assert world.writes() == 0
    assert world.images(1) == ["1/old.jpg"]


def test_mass_deletion_guard(world: World) -> None:
    world.create_table()
    for key in range(1, 21):
        world.insert(key, [f"{key}/a.jpg"])
        if key > 6:
            world.put(f"{key}/a.jpg")
    with world.service() as svc:  # 6 of 20 non-empty rows would be emptied: > 10% and >= 5
        report = svc.reconciler.sync_all("test")
        assert report.aborted is not None and "refusing to empty 6" in report.aborted
        assert world.writes() == 0
        forced = svc.reconciler.sync_all("test", force=True)
    assert forced.ok and len(forced.changed) == 6
    assert world.images(1) == []


def test_guard_allows_small_deletions(world: World) -> None:
    world.create_table()
    for key in range(1, 61):
        world.insert(key, [f"{key}/a.jpg"])
        if key > 5:
            world.put(f"{key}/a.jpg")
    with world.service() as svc:  # 5 of 60 is under 10%
        report = svc.reconciler.sync_all("test")
    assert report.ok and len(report.changed) == 5


def test_out_of_range_integer_key_is_simply_not_a_row(world: World) -> None:
    world.create_table()
    world.put("9223372036854775808/a.jpg")
    with world.service() as svc:
        assert svc.reconciler.sync_one("9223372036854775807", "test").status == "missing"
        result = svc.reconciler.sync_one("9223372036854775808", "test")
    assert result.status == "orphan" and result.error is None
