"""`image_fields`: images as objects with their real sizes, on both matrices.

Real image files of every listed format made by Pillow (HEIC by pillow-heif), in a real
folder or moto S3; the real SQLite JSON text or PostgreSQL jsonb column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from portfolio_sync.backends.image_cache import ImageCache
from portfolio_sync.errors import ConfigError
from portfolio_sync.wiring import Service
from tests.acceptance.command import run
from tests.conftest import make_world
from tests.images import FORMATS, encode, rotated_jpeg, svg
from tests.integration.world import World

FIELDS = "path,url,width,height,bytes,etag,uploaded,type,placeholder"


def objects_table(world: World) -> None:
    world.create_table(columns={"images": "jsonb" if world.postgres else "text"})


def elements(world: World, key: int = 1) -> dict[str, dict[str, Any]]:
    found = world.images(key) or []
    assert all(isinstance(e, dict) for e in found), found
    return {e["path"]: e for e in found}  # type: ignore[index]


def cache(svc: Service) -> ImageCache:
    assert svc.reconciler.images is not None
    return svc.reconciler.images


def test_every_format_gets_its_shown_size_type_and_placeholder(world: World) -> None:
    objects_table(world)
    world.insert(1, None)
    for fmt, (ext, _) in FORMATS.items():
        world.put(f"1/{fmt.lower()}.{ext}", encode(fmt, (120, 80)))
    world.put("1/turned.jpg", rotated_jpeg((120, 80)))
    world.put("1/box.svg", svg(None, None, "0 0 300 150"))
    world.put("1/sized.svg", svg("2in", "1in"))
    with world.service(image_fields=FIELDS, public_url="https://cdn.test/{path}") as svc:
        result = svc.reconciler.sync_one("1", "test")
        assert result.status == "changed", result.error
        found = elements(world)
        for fmt, (ext, mime) in FORMATS.items():
            item = found[f"1/{fmt.lower()}.{ext}"]
            assert (item["width"], item["height"], item["type"]) == (120, 80, mime), item
            assert (
                isinstance(item.get("placeholder"), str) and 6 <= len(item["placeholder"]) <= 40
            ), str(item)
            assert "error" not in item
        turned = found["1/turned.jpg"]
        assert (turned["width"], turned["height"]) == (80, 120)  # EXIF orientation 6
        assert (found["1/box.svg"]["width"], found["1/box.svg"]["height"]) == (300, 150)
        assert (found["1/sized.svg"]["width"], found["1/sized.svg"]["height"]) == (192, 96)
        assert "placeholder" not in found["1/box.svg"]
        png = found["1/png.png"]
        assert png["url"] == "https://cdn.test/1/png.png"
        assert png["bytes"] == len(encode("PNG", (120, 80)))
        assert png["uploaded"].endswith("Z") and png["etag"].startswith('W/"')
        if not world.postgres:  # jsonb keeps keys in its own order
            assert list(png) == FIELDS.split(",")  # configured order
        # a second pass reads nothing and writes nothing
        read = cache(svc).files_read
        writes = world.writes()
        report = svc.reconciler.sync_all("test")
        assert report.unchanged == 1 and not report.changed
        assert cache(svc).files_read == read and world.writes() == writes


def test_user_fields_are_kept_across_added_and_removed_images(world: World) -> None:
    objects_table(world)
    world.insert(1, None)
    for name in ("a", "b", "c"):
        world.put(f"1/{name}.png", encode("PNG", (40, 30)))
    with world.service(image_fields="path,width,height", order="preserve") as svc:
        assert svc.reconciler.sync_one("1", "test").status == "changed"
        current = world.images(1)
        assert [e["path"] for e in current] == ["1/a.png", "1/b.png", "1/c.png"]  # type: ignore
        # editors reorder and annotate, and write a stale width
        edited = [
            {"path": "1/c.png", "width": 1, "height": 30, "alt": "C", "featured": True},
            {"path": "1/a.png", "width": 40, "height": 30, "caption": {"en": "A"}},
            {"path": "1/b.png", "width": 40, "height": 30},
        ]
        world.set_images(1, edited)  # type: ignore[arg-type]
        world.delete("1/b.png")
        world.put("1/d.png", encode("PNG", (50, 20)))
        assert svc.reconciler.sync_one("1", "test").status == "changed"
        assert world.images(1) == [
            {"path": "1/c.png", "width": 40, "height": 30, "alt": "C", "featured": True},
            {"path": "1/a.png", "width": 40, "height": 30, "caption": {"en": "A"}},
            {"path": "1/d.png", "width": 50, "height": 20},
        ]
        history = svc.reconciler.catalog.engine
        from portfolio_sync.backends import schema

        entry = schema.read_history(history, "1")[0]
        assert entry["added"] == ["1/d.png"] and entry["removed"] == ["1/b.png"]
        assert entry["replaced"] == {"images": edited}
        # an editor's later edit of their own fields (and order) is not drift: no write
        kept = world.images(1)
        assert kept is not None
        kept[2]["alt"] = "D"  # type: ignore[index]
        kept.reverse()
        world.set_images(1, kept)
        writes = world.writes()
        assert svc.reconciler.sync_one("1", "test").status == "unchanged"
        assert world.writes() == writes and world.images(1) == kept


def test_corrupt_and_truncated_images_are_reported_per_file(world: World) -> None:
    objects_table(world)
    world.insert(1, None)
    good = encode("JPEG", (64, 48))
    world.put("1/good.jpg", good)
    world.put("1/corrupt.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    world.put("1/truncated.jpg", good[:200])
    world.put("1/body-cut.jpg", encode("JPEG", (64, 48), noise=True)[:1200])
    world.put("1/not-svg.svg", b"<html><body>no</body></html>")
    with world.service(image_fields="path,width,height,placeholder") as svc:
        result = svc.reconciler.sync_one("1", "test")
        assert result.status == "changed", result.error
        found = elements(world)
        assert set(found) == {
            "1/good.jpg",
            "1/corrupt.png",
            "1/truncated.jpg",
            "1/body-cut.jpg",
            "1/not-svg.svg",
        }
        assert found["1/good.jpg"]["width"] == 64 and "error" not in found["1/good.jpg"]
        for path in ("1/corrupt.png", "1/truncated.jpg", "1/not-svg.svg"):
            assert found[path]["error"] and "width" not in found[path], found[path]
        # the header is whole, the pixels are not: the size is known, the placeholder not
        cut = found["1/body-cut.jpg"]
        assert (cut["width"], cut["height"]) == (64, 48)
        assert "placeholder" in cut["error"] and "placeholder" not in cut
        # fixed files lose their error at the next sync (new size: read again)
        world.put("1/corrupt.png", encode("PNG", (10, 10)))
        assert svc.reconciler.sync_one("1", "test").status == "changed"
        fixed = elements(world)["1/corrupt.png"]
        assert fixed["width"] == 10 and "error" not in fixed


def test_the_cache_reads_a_changed_file_again_and_headers_only(world: World) -> None:
    objects_table(world)
    world.insert(1, None)
    big = encode("JPEG", (1600, 1200), noise=True, quality=95)
    assert len(big) > 1_000_000
    world.put("1/big.jpg", big)
    world.put("1/small.png", encode("PNG", (30, 20)))
    with world.service(image_fields="path,width,height") as svc:
        # a dry run reads what it must but keeps nothing
        assert svc.reconciler.sync_one("1", "test", dry_run=True).status == "changed"
        assert cache(svc).files_read == 2
        assert world.images(1) is None
        cache(svc).files_read = 0
        assert svc.reconciler.sync_one("1", "test").status == "changed"
        assert cache(svc).files_read == 2
        assert cache(svc).bytes_read <= 2 * 64 * 1024  # ranged reads, not the 1 MB body
        assert elements(world)["1/big.jpg"]["width"] == 1600
        assert svc.reconciler.sync_one("1", "test").status == "unchanged"
        assert cache(svc).files_read == 2
        world.put("1/small.png", encode("PNG", (31, 20)))  # changed: new size and mtime
        assert svc.reconciler.sync_one("1", "test").status == "changed"
        assert cache(svc).files_read == 3
        assert elements(world)["1/small.png"]["width"] == 31


def test_a_full_pass_fills_every_row_with_one_read_per_file(world: World) -> None:
    objects_table(world)
    for key in (1, 2, 3, 4):
        world.insert(key, None)
    for key in (1, 2, 3):
        world.put(f"{key}/a.png", encode("PNG", (10 * key, 20)))
        world.put(f"{key}/b.gif", encode("GIF", (5, 5 * key)))
    with world.service(image_fields="path,width,height") as svc:
        report = svc.reconciler.sync_all("test")
        assert report.ok and len(report.changed) == 4
        assert cache(svc).files_read == 6
        for key in (1, 2, 3):
            assert world.images(key) == [
                {"path": f"{key}/a.png", "width": 10 * key, "height": 20},
                {"path": f"{key}/b.gif", "width": 5, "height": 5 * key},
            ]
        assert world.images(4) == []


def test_diff_on_a_database_never_set_up_reads_without_keeping(world: World) -> None:
    objects_table(world)
    world.insert(1, None)
    world.put("1/a.png", encode("PNG", (30, 20)))
    env = world.env(PORTFOLIO_SYNC_IMAGE_FIELDS="path,width,height")
    proc = run("diff", "1", "--exit-code", "--json", env=env)
    assert proc.returncode == 1, proc.stderr  # differs
    [result] = json.loads(proc.stdout)
    assert result["status"] == "changed" and result["error"] is None, result
    assert world.images(1) is None


def test_text_array_columns_cannot_hold_objects(pg_world: World) -> None:
    pg_world.create_table(columns={"images": "array"})
    with pytest.raises(ConfigError, match="text\\[\\]: use jsonb"):
        with pg_world.service(image_fields="path,width"):
            pass


def test_sizes_need_bytes_that_supabase_db_storage_cannot_read(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    world = make_world(request, tmp_path, "postgres-supabase-db")
    try:
        world.create_table(columns={"images": "jsonb"})
        with pytest.raises(ConfigError, match="only lists objects"):
            with world.service(image_fields="path,width,height"):
                pass
        with world.service(image_fields="path,bytes,uploaded") as svc:  # the listing's own
            assert svc.reconciler.images is not None
    finally:
        world.close()
