"""`supabase-db://` storage: Supabase's `storage.objects` read with SQL.

On the table the suite recreates with Supabase's real name indexes (see
`tests/integration/supabase.py`). The sync contract (filters, odd keys, guard, per-key
and full passes) runs on this backend in `tests/integration/test_sync.py`; here are what
only this backend has: its queries' plans and ranges, buckets and prefixes, metadata,
privileges, the one-snapshot per-key read and events that need no lag re-check.
"""

from __future__ import annotations

import asyncio
import functools
import json
import unicodedata
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from portfolio_sync.backends import pg_setup, supabase_db
from portfolio_sync.backends.supabase_db import SupabaseDbStorage, name_range
from portfolio_sync.errors import ConfigError, StorageError
from portfolio_sync.queue.jobs import SYNC_TASK
from portfolio_sync.queue.procrastinate import ProcrastinateQueue, QueueOptions
from portfolio_sync.runtime import Runtime
from portfolio_sync.testing import MemoryStorage
from tests.conftest import make_world
from tests.integration import polling
from tests.integration.supabase import OBJECTS_DDL, VERSIONED_DDL, object_metadata
from tests.integration.world import World

eventually = functools.partial(polling.eventually, timeout=20.0, interval=0.05)


@pytest.fixture
def sw(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """PostgreSQL + a bucket of its own in `storage.objects`; table `portfolios` (int key)."""
    w = make_world(request, tmp_path, "postgres-supabase-db")
    w.create_table()
    yield w
    w.close()


def put(
    world: World, name: str, *, bucket: str | None = None, metadata: Any = ..., **cols: Any
) -> None:
    """One `storage.objects` row; `metadata` defaults to an uploaded 10-byte object."""
    meta = object_metadata(10) if metadata is ... else metadata
    columns = {"bucket_id": bucket or world.bucket, "name": name, "metadata": meta, **cols}
    names = ", ".join(columns)
    values = ", ".join("CAST(:metadata AS jsonb)" if c == "metadata" else f":{c}" for c in columns)
    world.execute(f"INSERT INTO storage.objects ({names}) VALUES ({values})", columns)


def paths(objects: Any) -> list[str]:
    return [o.path for o in objects]


# ---- queries ---------------------------------------------------------------------------------


def test_name_range_is_the_folder_in_byte_order() -> None:
    assert name_range("1/") == ("1/", "10")
    assert name_range("a b/c/") == ("a b/c/", "a b/c0")
    assert name_range("") == ("", None)
    with pytest.raises(ValueError):
        name_range("1")


def test_folder_query_is_a_range_scan_of_the_c_collation_name_index(sw: World) -> None:
    """The per-folder query must be answered by a range on (bucket_id, name COLLATE "C"),
    the order of Supabase's idx_objects_bucket_id_name, not by a scan or a LIKE filter."""
    other = f"{sw.bucket}-other"
    for bucket in (sw.bucket, other):
        sw.execute_many(
            "INSERT INTO storage.objects (bucket_id, name, metadata) "
            "VALUES (:b, :n, '{\"size\": 5}')",
            [{"b": bucket, "n": f"{k}/img{i}.jpg"} for k in range(400) for i in range(5)],
        )
    sw.execute("ANALYZE storage.objects")
    with sw.service() as svc:
        storage = svc.storage
        assert isinstance(storage, SupabaseDbStorage)
        sql, params = storage._query("17/")
        assert " LIKE " not in sql.upper()
        with psycopg.connect(sw.database_url) as conn:
            (plan,) = conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()  # type: ignore[misc]
        assert len(storage.list_prefix("17/")) == 5
    nodes = list(_nodes(plan[0]["Plan"]))
    scans = [n for n in nodes if n.get("Index Name") == "idx_objects_bucket_id_name"]
    assert scans, json.dumps(plan, indent=1)
    cond = scans[0]["Index Cond"]
    assert ">= '17/'" in cond and "< '170'" in cond and "bucket_id =" in cond, cond
    assert not any(n["Node Type"] == "Seq Scan" for n in nodes)
    assert not any(n["Node Type"] == "Sort" for n in nodes)  # the index gives the order


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


def test_lookalike_names_other_buckets_and_a_root_prefix(sw: World) -> None:
    """Only `root/key/…` of this bucket: `1/` is not `10/`, `1_/` or `1 /`, and characters
    special to LIKE or to SQL quoting are plain characters of a name."""
    inside = [
        "photos/1/a.jpg",
        'photos/1/it\'s "quoted".jpg',
        "photos/1/a+b c.jpg",
        "photos/1/100%_done.jpg",
        "photos/1/sub/deep.jpg",
    ]
    outside = [
        "photos/10/x.jpg",
        "photos/1_/x.jpg",
        "photos/1 /x.jpg",
        "photos/1.jpg",
        "photos0/1/x.jpg",
        "photosx/1/x.jpg",
        "1/x.jpg",
    ]
    for name in inside + outside:
        put(sw, name)
    put(sw, "photos/1/other-bucket.jpg", bucket=f"{sw.bucket}-other")
    with sw.service(storage_url=f"supabase-db://{sw.bucket}/photos") as svc:
        assert paths(svc.storage.list_prefix("1/")) == sorted(
            (n.removeprefix("photos/") for n in inside), key=lambda p: p.encode()
        )
        assert paths(svc.storage.list_prefix("1%/")) == []
        sw.insert(1, None)
        sw.insert(10, None)
        report = svc.reconciler.sync_all("test")
    assert report.ok and sorted(report.orphans) == ["1 ", "1_"]
    assert sw.images(1) == [
        "1/100%_done.jpg",
        "1/a+b c.jpg",
        "1/a.jpg",
        '1/it\'s "quoted".jpg',
    ]
    assert sw.images(10) == ["10/x.jpg"]


TRICKY = [
    "a",
    "a b",
    "a+b",
    "a#1",
    "a-b",
    "a.b",
    "a0",
    "ab",
    "A",
    "Z",
    "\u00e9",
    "e\u0301",
    "e",
    "z",
]


def test_full_scan_groups_like_the_twin_across_fetch_batches(
    sw: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders in `folder_order`, each with all its objects, files directly in the prefix
    in none, whatever the batch boundaries of the cursor (3 rows per fetch here)."""
    monkeypatch.setattr(supabase_db, "_FETCH", 3)
    assert unicodedata.normalize("NFC", TRICKY[11]) == TRICKY[10] != TRICKY[11]
    names = [f"{k}/{i}.jpg" for k in TRICKY for i in range(1 + len(k) % 3)]
    names += ["loose.jpg", "a/sub/x.jpg", ".hidden/x.jpg"]
    twin = MemoryStorage()
    for name in names:
        put(sw, name)
        twin.put(name, size=10, mtime=0.0)
    with sw.service() as svc:
        got = [(f, paths(objs)) for f, objs in svc.storage.iter_folders("")]
        sub = [(f, paths(objs)) for f, objs in svc.storage.iter_folders("a/")]
    assert got == [(f, paths(objs)) for f, objs in twin.iter_folders("")]
    assert sub == [("sub", ["a/sub/x.jpg"])]


def test_size_and_upload_time_come_from_the_row(sw: World) -> None:
    """`metadata->'size'` (none yet: zero bytes, not an image), `created_at` for the
    `uploaded` order; not the name order, not `updated_at`."""
    put(sw, "5/b.jpg", created_at="2024-01-01T00:00:01Z", updated_at="2024-06-01T00:00:00Z")
    put(sw, "5/a.jpg", created_at="2024-01-01T00:00:02Z")
    put(sw, "5/pending.jpg", metadata=None)
    put(sw, "5/odd.jpg", metadata='{"size": "12"}')
    sw.insert(5, None)
    with sw.service(order="uploaded") as svc:
        listed = {o.path: o for o in svc.storage.list_prefix("5/")}
        assert svc.reconciler.sync_one("5", "test").status == "changed"
    assert listed["5/b.jpg"].size == 10 and listed["5/b.jpg"].mtime == 1704067201.0
    assert listed["5/pending.jpg"].size == 0 and listed["5/odd.jpg"].size == 0
    assert sw.images(5) == ["5/b.jpg", "5/a.jpg"]


def test_read_is_refused_not_guessed(sw: World) -> None:
    put(sw, "1/a.jpg")
    with sw.service() as svc, pytest.raises(StorageError, match=r"cannot read 1/a\.jpg"):
        svc.storage.read("1/a.jpg")


# ---- one snapshot per key --------------------------------------------------------------------


def test_per_key_sync_reads_row_and_folder_in_one_snapshot(
    sw: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An upload committed between the row read and the listing is not in that listing:
    both come from the instant of the row read (REPEATABLE READ), and the upload's own
    event syncs it next."""
    sw.insert(3, None)
    put(sw, "3/a.jpg")
    with sw.service() as svc:
        real_read = svc.catalog.read_row

        def read_then_upload(key: str, **kwargs: Any) -> Any:
            row = real_read(key, **kwargs)
            put(sw, "3/meanwhile.jpg")  # another connection, committed
            return row

        monkeypatch.setattr(svc.catalog, "read_row", read_then_upload)
        first = svc.reconciler.sync_one("3", "test")
        monkeypatch.setattr(svc.catalog, "read_row", real_read)
        second = svc.reconciler.sync_one("3", "test")
    assert first.listed == {"3/a.jpg"} and first.added == ("3/a.jpg",)
    assert second.added == ("3/meanwhile.jpg",)
    assert sw.images(3) == ["3/a.jpg", "3/meanwhile.jpg"]


@pytest.fixture
def versioned_database(postgres_server_url: str) -> Iterator[str]:
    """A database of this test's own holding a versioned `storage.objects` (Supabase
    Storage with object versioning), dropped afterwards."""
    name = f"ps_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    parts = urlsplit(postgres_server_url)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(OBJECTS_DDL)
            conn.execute(VERSIONED_DDL)
        yield url
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_a_versioned_bucket_in_another_database(tmp_path: Path, versioned_database: str) -> None:
    """`storage_database_url`: the bucket's database is not the table's (here a SQLite
    table), so the storage has an engine of its own. Only current versions are objects:
    archived versions and delete markers are not."""
    rows = [
        ("1/a.jpg", "v2", None, False),
        ("1/a.jpg", "v1", "2024-01-01T00:00:00Z", False),
        ("1/gone.jpg", "v2", None, True),
        ("1/gone.jpg", "v1", "2024-01-01T00:00:00Z", False),
        ("1/b.jpg", None, None, False),
    ]
    with psycopg.connect(versioned_database, autocommit=True) as conn:
        for name, version, archived, marker in rows:
            conn.execute(
                "INSERT INTO storage.objects (bucket_id, name, version, archived_at, "
                "is_delete_marker, is_versioned, metadata) VALUES ('photos', %s, %s, %s, %s, "
                "%s, %s)",
                (name, version, archived, marker, version is not None, object_metadata(10)),
            )
    table = World(
        kind="sqlite-folder", database_url=f"sqlite:///{tmp_path / 'a.db'}", root=tmp_path
    )
    table.create_table()
    table.insert(1, ["1/gone.jpg"])
    elsewhere = {"storage_url": "supabase-db://photos", "storage_database_url": versioned_database}
    try:
        with table.service(**elsewhere) as svc:
            assert isinstance(svc.storage, SupabaseDbStorage)
            assert not svc.storage.shares(svc.catalog.engine)
            assert paths(svc.storage.list_prefix("1/")) == ["1/a.jpg", "1/b.jpg"]
            result = svc.reconciler.sync_one("1", "test")
            assert svc.reconciler.sync_all("test").unchanged == 1
        assert (result.added, result.removed) == (("1/a.jpg", "1/b.jpg"), ("1/gone.jpg",))
        assert table.images(1) == ["1/a.jpg", "1/b.jpg"]
        with pytest.raises(ConfigError, match="needs a PostgreSQL"):
            table.settings(storage_url="supabase-db://photos")
    finally:
        table.close()


# ---- privileges ----------------------------------------------------------------------------


@pytest.fixture
def role(sw: World) -> Iterator[tuple[str, str]]:
    """A login role of this test's own that may read and write `portfolios` only; its
    name and a database URL connecting as it. Dropped afterwards."""
    name = f"ps_{uuid.uuid4().hex[:10]}"
    schema = _scalar(sw, "SELECT current_schema()")
    sw.execute(f"CREATE ROLE {name} LOGIN")
    try:
        sw.execute(f"GRANT USAGE, CREATE ON SCHEMA {schema} TO {name}")
        sw.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {name}")
        _, _, rest = sw.database_url.partition("://")[2].partition("@")
        yield name, f"postgresql://{name}@{rest}"
    finally:
        sw.execute(f"DROP OWNED BY {name}")
        sw.execute(f"DROP ROLE {name}")


def _scalar(world: World, sql: str) -> Any:
    with world.engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar_one()


def test_a_role_without_select_gets_an_error_naming_it(sw: World, role: tuple[str, str]) -> None:
    name, url = role
    with pytest.raises(
        StorageError, match=r"lacks USAGE on schema storage and SELECT on storage\.objects"
    ):
        _open(sw, url)
    sw.execute(f"GRANT USAGE ON SCHEMA storage TO {name}")
    with pytest.raises(
        StorageError, match=rf"role '{name}' lacks SELECT on storage\.objects \(GRANT SELECT"
    ):
        _open(sw, url)


def test_row_level_security_that_filters_the_role_is_refused(
    sw: World, role: tuple[str, str]
) -> None:
    """storage.objects has RLS enabled on Supabase: a role it applies to would see only
    what policies allow, which looks like deleted images. Refused, saying why."""
    name, url = role
    sw.execute(f"GRANT USAGE ON SCHEMA storage TO {name}")
    sw.execute(f"GRANT SELECT ON storage.objects TO {name}")
    with pytest.raises(StorageError, match=r"row-level security on storage\.objects"):
        _open(sw, url)


def test_select_and_bypassrls_are_enough(sw: World, role: tuple[str, str]) -> None:
    """Supabase's postgres role: SELECT on storage.objects and BYPASSRLS, nothing more."""
    name, url = role
    sw.execute(f"GRANT USAGE ON SCHEMA storage TO {name}")
    sw.execute(f"GRANT SELECT ON storage.objects TO {name}")
    sw.execute(f"ALTER ROLE {name} BYPASSRLS")
    sw.insert(1, None)
    sw.insert(2, ["2/gone.jpg"])
    put(sw, "1/a.jpg")
    with sw.service(database_url=url) as svc:
        assert svc.reconciler.sync_all("test").ok
        put(sw, "2/b.jpg")
        assert svc.reconciler.sync_one("2", "test").added == ("2/b.jpg",)
    assert (sw.images(1), sw.images(2)) == (["1/a.jpg"], ["2/b.jpg"])


def _open(world: World, url: str) -> None:
    """Start the service as `url`'s role (as every command does)."""
    with world.service(database_url=url):
        pass


def test_setup_installs_the_trigger_of_the_urls_bucket_under_its_prefix(sw: World) -> None:
    """`setup` with `supabase-db://bucket/photos`: the bucket's storage.objects trigger is
    installed without --storage-objects, keys are taken after the URL's prefix, and the
    paths a job expects are relative to it, as the listing's are."""
    with sw.service(storage_url=f"supabase-db://{sw.bucket}/photos") as svc:
        messages = pg_setup.install(
            svc.catalog, svc.settings, bucket=pg_setup.storage_bucket(svc.settings)
        )
    assert any(
        f"storage.objects for bucket {sw.bucket!r} (names under 'photos/')" in m for m in messages
    )
    put(sw, "photos/7/a.jpg")
    put(sw, "7/not-under-the-prefix.jpg")
    with psycopg.connect(sw.database_url) as conn:
        jobs = conn.execute(
            "SELECT args FROM procrastinate_jobs WHERE task_name = %s", (SYNC_TASK,)
        ).fetchall()
    assert [(a["key"], a["expect"]) for (a,) in jobs] == [("7", {"7/a.jpg": True})]


# ---- events ----------------------------------------------------------------------------------


async def test_events_ahead_of_the_listing_are_not_rechecked(sw: World) -> None:
    """A storage event for an object that is gone again by the time its sync runs: the
    listing is the table, so that is the truth, not lag: one sync, no retry."""
    sw.insert(8, None)
    put(sw, "8/a.jpg")
    with sw.service(debounce=0.05, schedule="0 0 1 1 *") as svc:
        options = QueueOptions(poll_interval=0.2, stall_timeout=2.0, backoff=1)
        runtime = Runtime(svc, watch=False, catch_up=False, queue_options=options)
        assert isinstance(runtime.queue, ProcrastinateQueue)
        async with runtime:
            await runtime.request(
                "8", "storage:webhook", expect={"8/uploaded-then-deleted.jpg": True}
            )
            await eventually(lambda: sw.images(8) == ["8/a.jpg"])
            await asyncio.wait_for(runtime.queue.join(), 15)
            assert runtime.metrics.retries.labels("lagging")._value.get() == 0
    with psycopg.connect(sw.database_url) as conn:
        statuses = conn.execute(
            "SELECT status::text FROM procrastinate_jobs WHERE task_name = %s", (SYNC_TASK,)
        ).fetchall()
    assert statuses == [("succeeded",)]
