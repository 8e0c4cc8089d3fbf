"""The PostgreSQL job queue: setup's triggers, procrastinate's locks, retries and stalls.

Real PostgreSQL (each test in its own schema, procrastinate's tables included), a local
folder for storage (the storage side is not what is tested here). Workers run in-process
on a runner built from the real reconciler; `tests/acceptance/test_workers.py` runs them
as `portfolio-sync worker` processes.

``storage.objects`` isolation: see ``tests/integration/supabase.py`` (shared table, a
bucket id per test, trigger functions in the test's schema).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest

from portfolio_sync.backends import pg_setup, schema
from portfolio_sync.queue import ALL
from portfolio_sync.queue.jobs import (
    LOCK_INDEX,
    PASS_TASK,
    SYNC_TASK,
    apply_schema_if_missing,
    croniter_expression,
    lock_index_exists,
)
from portfolio_sync.queue.procrastinate import ProcrastinateQueue, QueueOptions
from portfolio_sync.runtime import Runtime
from portfolio_sync.wiring import Service
from tests.integration import polling
from tests.integration.supabase import ensure_storage_objects, forget_bucket
from tests.integration.world import World


@pytest.fixture
def sql(pg_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection, standing for the application."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
def bucket(sql: psycopg.Connection[Any], postgres_server_url: str) -> Iterator[str]:
    """A bucket id of this test's own (its schema name) in the shared storage.objects."""
    ensure_storage_objects(postgres_server_url)
    name = str(sql.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
    yield name
    forget_bucket(postgres_server_url, name)


def install(world: World, bucket: str | None = None, **settings: Any) -> list[str]:
    with world.service(**settings) as svc:
        return pg_setup.install(svc.catalog, svc.settings, bucket=bucket)


def jobs(conn: psycopg.Connection[Any], status: str = "todo") -> list[tuple[str, dict[str, Any]]]:
    rows = conn.execute(
        "SELECT task_name, args FROM procrastinate_jobs WHERE status = %s ORDER BY id", (status,)
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def keys(conn: psycopg.Connection[Any], status: str = "todo") -> list[str]:
    return [args["key"] for task, args in jobs(conn, status) if task == SYNC_TASK]


eventually = functools.partial(polling.eventually, timeout=15.0, interval=0.05)


class Recorder:
    """The runner the queue calls: the real reconciler, plus a log of what ran."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc
        self.calls: list[tuple[str, str]] = []
        self.fail_once: set[str] = set()
        self.gate: asyncio.Event | None = None

    async def __call__(self, key: str, trigger: str) -> None:
        self.calls.append((key, trigger))
        if self.gate is not None and key in self.fail_once:
            await self.gate.wait()
        if key in self.fail_once:
            self.fail_once.discard(key)
            raise RuntimeError(f"planned failure of {key}")
        rec = self.svc.reconciler
        if key == ALL:
            await asyncio.to_thread(rec.sync_all, trigger)
            return
        result = await asyncio.to_thread(rec.sync_one, key, trigger)
        if result.status in ("error", "conflict"):
            raise RuntimeError(result.error or result.status)


@asynccontextmanager
async def draining(
    world: World, *, worker: bool = True, schedule: str = "0 0 1 1 *", **options: Any
) -> AsyncIterator[tuple[ProcrastinateQueue, Recorder]]:
    options.setdefault("poll_interval", 0.2)
    options.setdefault("stall_timeout", 2.0)
    with world.service(schedule=schedule) as svc:
        recorder = Recorder(svc)
        queue = ProcrastinateQueue(
            recorder, svc.settings, options=QueueOptions(run_worker=worker, **options)
        )
        await queue.start()
        try:
            yield queue, recorder
        finally:
            await queue.stop(timeout=5)


# ---- setup ---------------------------------------------------------------------------------


def test_setup_installs_in_the_test_schema_is_idempotent_and_uninstalls(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    first = install(pgw)
    assert "procrastinate schema created in" in "\n".join(first)
    again = install(pgw)
    assert "procrastinate schema present in" in "\n".join(again)
    here = sql.execute("SELECT current_schema()").fetchone()
    where = sql.execute(
        "SELECT relnamespace::regnamespace::text FROM pg_class "
        "WHERE oid = to_regclass('procrastinate_jobs')"
    ).fetchone()
    assert where == here
    ours = "SELECT count(*) FROM pg_proc WHERE proname LIKE 'portfolio_sync_%%' AND pronamespace = "
    ours += "current_schema()::regnamespace"
    triggers = "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'portfolio_sync_%%'"
    triggers += " AND tgrelid = 'portfolios'::regclass"
    assert sql.execute(ours).fetchone() == (1,)
    assert sql.execute(triggers).fetchone() == (2,)
    with pgw.service() as svc:
        assert not pg_setup.outdated(svc.catalog)
        # an install recorded by the previous version is reported until setup runs again
        sql.execute(
            "UPDATE portfolio_sync_meta SET value = jsonb_set(value::jsonb, '{version}', '1') "
            "WHERE name = 'postgres_triggers'"
        )
        assert pg_setup.outdated(svc.catalog)
        install(pgw)
        assert not pg_setup.outdated(svc.catalog)
        printed = pg_setup.print_sql(svc.catalog, svc.settings, bucket=None)
        assert (
            "CREATE OR REPLACE TRIGGER portfolio_sync_update AFTER UPDATE ON portfolios" in printed
        )
        assert "ON CONFLICT (queueing_lock) WHERE status = 'todo' DO NOTHING" in printed
        removing = pg_setup.print_sql(svc.catalog, svc.settings, bucket=None, remove=True)
        assert removing.count("DROP ") == 3
        assert pg_setup.uninstall(svc.catalog, svc.settings) == [
            "removed 2 trigger(s) and 1 function(s)"
        ]
    assert sql.execute(ours).fetchone() == (0,)
    assert sql.execute(triggers).fetchone() == (0,)
    for table in ("procrastinate_jobs", "portfolio_sync_history", "portfolios"):
        assert sql.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone() == (True,)


async def test_the_job_fetch_finds_other_jobs_of_a_lock_by_index(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    """procrastinate's fetch skips a job whose lock is taken with a lookup by lock; without
    an index on it every fetch reads the whole queue (n² to drain n jobs)."""
    async with draining(pgw, worker=False):
        pass
    sql.execute("SET enable_seqscan = off")  # an empty table: ask which index would serve
    plan = "\n".join(
        str(r[0])
        for r in sql.execute(
            "EXPLAIN SELECT 1 FROM procrastinate_jobs o WHERE o.lock = 'portfolio_sync:1' "
            "AND (o.status = 'doing' OR (o.status = 'todo' AND o.id < 5))"
        )
    )
    assert "portfolio_sync_jobs_lock_idx" in plan, plan


def test_a_worker_role_that_may_not_index_the_queue_still_starts(
    pgw: World, sql: psycopg.Connection[Any], pg_url: str
) -> None:
    """Workers create the lock index if it is missing; a role that may not (not the owner
    of procrastinate_jobs) gets a warning, not a failed start."""
    with psycopg.connect(pg_url) as conn:
        apply_schema_if_missing(conn)
    sql.execute(f"DROP INDEX {LOCK_INDEX}")
    role = f"ps_worker_{sql.execute('SELECT current_schema()').fetchone()[0]}"  # type: ignore[index]
    sql.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        sql.execute(f"GRANT USAGE ON SCHEMA {role.removeprefix('ps_worker_')} TO {role}")
        with psycopg.connect(pg_url) as conn:
            conn.execute(f"SET ROLE {role}")
            assert apply_schema_if_missing(conn) is False  # no error
            assert not lock_index_exists(conn)
            conn.rollback()
        with psycopg.connect(pg_url) as conn:  # the owner creates it
            apply_schema_if_missing(conn)
            assert lock_index_exists(conn)
    finally:
        sql.execute(f"DROP OWNED BY {role}")
        sql.execute(f"DROP ROLE {role}")


def test_croniter_expression_moves_the_seconds_field() -> None:
    assert croniter_expression("*/15 * * * *") == "*/15 * * * *"
    assert croniter_expression("*/5 * * * * *") == "* * * * * */5"


# ---- the row trigger ---------------------------------------------------------------------


def test_row_trigger_defers_in_the_same_transaction(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    install(pgw)
    sql.execute("INSERT INTO portfolios (id, title) VALUES (1, 'a')")
    assert jobs(sql) == [(SYNC_TASK, {"key": "1", "trigger": "database:INSERT"})]
    sql.execute("DELETE FROM procrastinate_jobs")

    sql.execute("UPDATE portfolios SET title = title WHERE id = 1")  # changes nothing
    assert jobs(sql) == []
    # an application's edit of the images column is work
    sql.execute("UPDATE portfolios SET images = '{1/a.jpg}' WHERE id = 1")
    assert jobs(sql) == [(SYNC_TASK, {"key": "1", "trigger": "database:UPDATE"})]
    sql.execute("DELETE FROM procrastinate_jobs")
    # our own compare-and-set write is not, even when it cascades into other columns
    sql.execute(
        "CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS $$ "
        "BEGIN NEW.title := 'stamped'; RETURN NEW; END $$"
    )
    sql.execute(
        "CREATE TRIGGER stamp BEFORE UPDATE OF images ON portfolios "
        "FOR EACH ROW EXECUTE FUNCTION stamp()"
    )
    pgw.put("1/b.jpg")
    with pgw.service() as svc:
        assert svc.reconciler.sync_one("1", "manual").status == "changed"
    assert pgw.images(1) == ["1/b.jpg"]
    assert jobs(sql) == []
    sql.execute("DROP TRIGGER stamp ON portfolios")
    # and the setting that marks it did not outlive its transaction
    sql.execute("UPDATE portfolios SET images = '{1/a.jpg}' WHERE id = 1")
    assert keys(sql) == ["1"]
    sql.execute("DELETE FROM procrastinate_jobs")

    with pytest.raises(psycopg.errors.DivisionByZero):
        with sql.transaction():
            sql.execute("UPDATE portfolios SET title = 'b' WHERE id = 1")
            sql.execute("SELECT 1 / 0")
    assert jobs(sql) == []

    with sql.transaction():
        for i in range(100):
            sql.execute("UPDATE portfolios SET title = %s WHERE id = 1", (f"t{i}",))
    assert keys(sql) == ["1"]
    for i in range(100):  # and in 100 transactions while the job waits
        sql.execute("UPDATE portfolios SET title = %s WHERE id = 1", (f"u{i}",))
    assert keys(sql) == ["1"]
    sql.execute("DELETE FROM procrastinate_jobs")

    sql.execute("UPDATE portfolios SET id = 2 WHERE id = 1")
    assert sorted(keys(sql)) == ["1", "2"]
    sql.execute("DELETE FROM procrastinate_jobs")
    sql.execute("DELETE FROM portfolios WHERE id = 2")
    assert jobs(sql) == [
        (
            SYNC_TASK,
            {"key": "2", "trigger": "database:DELETE", "old_images": ["1/a.jpg"]},
        )
    ]


async def test_trigger_path_syncs_rows_changed_by_plain_sql(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    install(pgw)
    for key in (1, 2, 3):
        pgw.put(f"{key}/a.jpg")
    # changes made while no worker runs wait in the queue
    sql.execute("INSERT INTO portfolios (id, title) VALUES (1, 'x'), (2, 'y')")
    sql.execute("UPDATE portfolios SET title = 'z' WHERE id = 2")
    assert sorted(keys(sql)) == ["1", "2"]
    async with draining(pgw) as (queue, recorder):
        await asyncio.wait_for(queue.join(), 15)
        assert pgw.images(1) == ["1/a.jpg"] and pgw.images(2) == ["2/a.jpg"]
        sql.execute("INSERT INTO portfolios (id, title) VALUES (3, 'w')")
        took = await eventually(lambda: pgw.images(3) == ["3/a.jpg"])
        assert took < 5
        await asyncio.wait_for(queue.join(), 15)
        writes = pgw.writes()
        sql.execute("UPDATE portfolios SET title = 'renamed' WHERE id = 3")
        await eventually(lambda: ("3", "database:UPDATE") in recorder.calls)
        await asyncio.wait_for(queue.join(), 15)
        assert pgw.writes() == writes + 1  # the app's UPDATE; the sync found nothing to do
        sql.execute("DELETE FROM portfolios WHERE id = 3")
        await eventually(lambda: ("3", "database:DELETE") in recorder.calls)
        assert all(status == "succeeded" for (status,) in _statuses(sql))


def _statuses(sql: psycopg.Connection[Any]) -> list[tuple[str]]:
    """Statuses of the sync jobs (periodic jobs due at start-up may run beside them)."""
    query = "SELECT status::text FROM procrastinate_jobs WHERE task_name = %s ORDER BY id"
    return [(str(r[0]),) for r in sql.execute(query, (SYNC_TASK,)).fetchall()]


# ---- storage.objects -----------------------------------------------------------------------


def test_storage_objects_trigger_defers_the_key_of_the_name(
    pgw: World, sql: psycopg.Connection[Any], bucket: str
) -> None:
    messages = install(pgw, bucket=bucket, folder="portfolios/{key}/")
    assert any(f"storage.objects for bucket {bucket!r}" in m for m in messages)

    def put(name: str, bucket_id: str = bucket) -> None:
        sql.execute(
            "INSERT INTO storage.objects (bucket_id, name, metadata) VALUES (%s, %s, %s)",
            (bucket_id, name, '{"size": 3}'),
        )

    put("portfolios/7/a.jpg")
    assert jobs(sql) == [
        (
            SYNC_TASK,
            {
                "key": "7",
                "trigger": "storage.objects:INSERT",
                "expect": {"portfolios/7/a.jpg": True},
            },
        )
    ]
    put("portfolios/7/c.jpg")  # while the job waits: merged into it
    assert jobs(sql)[0][1]["expect"] == {"portfolios/7/a.jpg": True, "portfolios/7/c.jpg": True}
    sql.execute("DELETE FROM procrastinate_jobs")
    for name in ("elsewhere/7/a.jpg", "portfolios/loose.jpg", "portfolios/.hidden/a.jpg"):
        put(name)
    put("portfolios/7/b.jpg", bucket_id=bucket + "-other")
    sql.execute(
        "UPDATE storage.objects SET last_accessed_at = now() WHERE bucket_id = %s", (bucket,)
    )
    assert jobs(sql) == []

    sql.execute(
        "UPDATE storage.objects SET name = 'portfolios/8/a.jpg' "
        "WHERE bucket_id = %s AND name = 'portfolios/7/a.jpg'",
        (bucket,),
    )
    assert {a["key"]: a["expect"] for _, a in jobs(sql)} == {
        "8": {"portfolios/8/a.jpg": True},
        "7": {"portfolios/7/a.jpg": False},
    }
    sql.execute("DELETE FROM procrastinate_jobs")
    sql.execute(
        "UPDATE storage.objects SET metadata = '{\"size\": 4}' WHERE bucket_id = %s "
        "AND name = 'portfolios/8/a.jpg'",
        (bucket,),
    )
    sql.execute("DELETE FROM storage.objects WHERE bucket_id = %s", (bucket,))
    assert sorted(keys(sql)) == ["7", "8"]  # 8: the overwrite's job absorbed the delete's
    assert {a["key"]: a["expect"] for _, a in jobs(sql)}["8"] == {"portfolios/8/a.jpg": False}

    with pgw.service(folder="portfolios/{key}/") as svc:
        assert pg_setup.uninstall(svc.catalog, svc.settings) == [
            "removed 4 trigger(s) and 2 function(s)"
        ]
    sql.execute("DELETE FROM procrastinate_jobs")
    put("portfolios/9/a.jpg")
    assert jobs(sql) == []


# ---- the queue -----------------------------------------------------------------------------


async def test_requests_coalesce_while_a_job_waits(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    async with draining(pgw, worker=False) as (queue, _):
        assert await queue.request("5", "manual") is True
        assert await queue.request("5", "manual") is False
        assert await queue.request_all("manual") is True
        assert await queue.request_all("schedule") is False
    rows = sql.execute("SELECT task_name, lock, queueing_lock FROM procrastinate_jobs").fetchall()
    assert sorted(rows) == [
        (PASS_TASK, "portfolio_sync:*", "portfolio_sync:*"),
        (SYNC_TASK, "portfolio_sync:5", "portfolio_sync:5"),
    ]


async def test_a_trickle_of_requests_for_one_key_costs_a_handful_of_runs(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    """A watcher delivers a bulk upload as a batch every 50 ms, each finding the key's
    previous job finished: they are follow-ups with a growing settle time (0.25, 0.5, 1 s),
    not one run each; the last run still starts about a settle time after the last file,
    woken by a notification rather than the next poll."""
    pgw.insert(30, None)
    async with draining(pgw, poll_interval=5.0) as (queue, recorder):
        # the worker listens once it is up: until then a new job waits for the 5 s poll
        await queue.request("31", "warm-up")
        await eventually(lambda: recorder.calls == [("31", "warm-up")], timeout=10)
        recorder.calls.clear()
        started = time.monotonic()
        for i in range(40):  # 2 s of uploads
            pgw.put(f"30/{i:02d}.jpg")
            await queue.request("30", "storage")
            await asyncio.sleep(0.05)
        last = time.monotonic()
        expected = [f"30/{i:02d}.jpg" for i in range(40)]
        took = await eventually(lambda: pgw.images(30) == expected, timeout=10)
        await asyncio.wait_for(queue.join(), 10)
    runs = len(recorder.calls)
    # runs start at 0, 0.25, 0.75, 1.75, 2.75 s: five for 2 s of uploads; one more on a
    # loaded machine that stretches the burst
    assert 2 <= runs <= 6, (runs, last - started)
    assert took < 2.0  # settle_max after the last request, not the 5 s poll interval
    assert _statuses(sql) == [("succeeded",)] * (runs + 1)


async def test_expectations_travel_in_the_job_and_merge_into_a_waiting_one(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    """A storage event's expectations reach whichever worker runs the job (another machine
    may), and a waiting job absorbs those of the requests coalesced into it."""
    async with draining(pgw, worker=False) as (queue, _):
        assert await queue.request("5", "storage", expect={"5/a.jpg": True}) is True
        assert await queue.request("5", "storage", expect={"5/b.jpg": False}) is False
        assert await queue.request("5", "storage") is False
        assert await queue.request("6", "manual") is True
    args = {a["key"]: a for _, a in jobs(sql)}
    assert args["5"]["expect"] == {"5/a.jpg": True, "5/b.jpg": False}
    assert "expect" not in args["6"]


async def test_concurrent_requests_share_statements_and_lose_nothing(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    """Issue 12: webhooks on PostgreSQL got 53-115 requests/s through with the database
    idle, because each request took its own pooled connection for two or three statements
    in turn. Requests arriving together now go out in shared statements (a handful for
    hundreds of requests), and each still returns only once its job is in the table."""
    async with draining(pgw, worker=False) as (queue, _):
        pool = queue.app.connector.pool  # type: ignore[attr-defined]
        before = pool.get_stats().get("requests_num", 0)
        requests = [(f"{i % 100}", {f"{i % 100}/{i}.jpg": i % 7 != 0}) for i in range(400)]
        created = await asyncio.gather(
            *(queue.request(key, "storage", expect=expect) for key, expect in requests)
        )
        statements = pool.get_stats().get("requests_num", 0) - before
    assert sum(created) == 100  # one new job per key; every other request merged into it
    assert statements <= 20, statements  # was two to three per request (800+)
    args = {a["key"]: a for _, a in jobs(sql)}
    assert sorted(args, key=int) == [str(k) for k in range(100)]
    for key, expect in requests:  # every request's expectations are in its key's job
        assert expect.items() <= args[key]["expect"].items()


async def test_a_failed_run_with_a_job_waiting_never_blocks_its_key(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    """procrastinate cannot move the failed job back to `todo` (the waiting job holds the
    queueing lock); it must not stay `doing`, which would hold the key's lock for ever."""
    pgw.insert(4, None)
    pgw.put("4/a.jpg")
    async with draining(pgw) as (queue, recorder):
        recorder.gate = asyncio.Event()
        recorder.fail_once.add("4")
        await queue.request("4", "first")
        await eventually(lambda: recorder.calls == [("4", "first")])
        assert await queue.request("4", "second") is True  # waits behind the running job
        recorder.gate.set()
        await asyncio.wait_for(queue.join(), 15)
        assert pgw.images(4) == ["4/a.jpg"]
        assert [c[1] for c in recorder.calls] == ["first", "second"]
    assert sorted(s for (s,) in _statuses(sql)) == ["failed", "succeeded"]


async def test_failed_runs_are_retried_with_backoff(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    pgw.insert(6, None)
    pgw.put("6/a.jpg")
    async with draining(pgw, backoff=1) as (queue, recorder):
        recorder.fail_once.add("6")
        await queue.request("6", "manual")
        await eventually(lambda: pgw.images(6) == ["6/a.jpg"])
        assert [c[0] for c in recorder.calls] == ["6", "6"]
    events = [str(r[0]) for r in sql.execute("SELECT type FROM procrastinate_events ORDER BY id")]
    assert "deferred_for_retry" in events and events[-1] == "succeeded"


async def test_jobs_of_a_dead_worker_are_retried(pgw: World, sql: psycopg.Connection[Any]) -> None:
    pgw.insert(11, None)
    pgw.put("11/a.jpg")
    async with draining(pgw, worker=False) as (queue, _):
        await queue.request("11", "manual")
    # a worker took the job, then died: its heartbeat stops
    worker = sql.execute(
        "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') "
        "RETURNING id"
    ).fetchone()
    sql.execute("UPDATE procrastinate_jobs SET status = 'doing', worker_id = %s", worker)
    async with draining(pgw, stall_timeout=1.0) as (queue, recorder):
        took = await eventually(lambda: pgw.images(11) == ["11/a.jpg"], timeout=10)
        assert took < 5
        assert recorder.calls == [("11", "manual")]
    assert _statuses(sql) == [("succeeded",)]


async def test_full_pass_runs_on_its_schedule_once_per_tick(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    pgw.insert(12, None)
    pgw.put("12/a.jpg")

    def ticks() -> list[tuple[str, int]]:
        return sql.execute(
            "SELECT args->>'timestamp', count(*) FROM procrastinate_jobs WHERE task_name = %s "
            "GROUP BY 1",
            (PASS_TASK,),
        ).fetchall()

    async with draining(pgw, schedule="*/2 * * * * *") as (_, recorder):
        await eventually(lambda: (ALL, "schedule") in recorder.calls, timeout=10)
        await eventually(lambda: pgw.images(12) == ["12/a.jpg"])
        await eventually(lambda: len(ticks()) >= 3, timeout=15)  # a later tick, not a sleep
    assert all(n == 1 for _, n in ticks())


async def test_finished_jobs_are_pruned(pgw: World, sql: psycopg.Connection[Any]) -> None:
    pgw.insert(13, None)
    async with draining(pgw) as (queue, _):
        await queue.request("13", "manual")
        await asyncio.wait_for(queue.join(), 15)
        assert _statuses(sql) == [("succeeded",)]
        await queue.prune(0)
        assert _statuses(sql) == []
    orphans = "SELECT count(*) FROM procrastinate_events e LEFT JOIN procrastinate_jobs j "
    assert sql.execute(orphans + "ON j.id = e.job_id WHERE j.id IS NULL").fetchone() == (0,)


# ---- through the runtime (what `serve` and `worker` run) -------------------------------------


@asynccontextmanager
async def runtime_on(world: World, **settings: Any) -> AsyncIterator[Runtime]:
    settings.setdefault("debounce", 0.05)
    with world.service(**settings) as svc:
        options = QueueOptions(poll_interval=0.2, stall_timeout=2.0, backoff=1)
        runtime = Runtime(svc, watch=False, catch_up=False, queue_options=options)
        assert isinstance(runtime.queue, ProcrastinateQueue)
        async with runtime:
            yield runtime


async def test_runtime_records_row_deletes_reported_by_the_trigger(
    pgw: World, sql: psycopg.Connection[Any]
) -> None:
    install(pgw)
    pgw.put("21/a.jpg")
    async with runtime_on(pgw) as runtime:
        engine = runtime.service.catalog.engine
        sql.execute("INSERT INTO portfolios (id, title, images) VALUES (21, 'x', '{21/old.jpg}')")
        await eventually(lambda: pgw.images(21) == ["21/a.jpg"])
        sql.execute("DELETE FROM portfolios WHERE id = 21")
        await eventually(lambda: len(schema.read_history(engine, "21")) == 2)
        deleted, written = schema.read_history(engine, "21")
        assert (deleted["trigger"], deleted["removed"]) == ("database:DELETE", ["21/a.jpg"])
        assert (written["added"], written["removed"]) == (["21/a.jpg"], ["21/old.jpg"])


async def test_storage_objects_event_ahead_of_storage_is_rechecked(
    pgw: World, sql: psycopg.Connection[Any], bucket: str
) -> None:
    """The job carries what the row said (`expect`): a sync that does not see the object
    yet fails and is retried with backoff until it does."""
    install(pgw, bucket=bucket)
    pgw.insert(23, None)
    async with runtime_on(pgw) as runtime:
        sql.execute(
            "INSERT INTO storage.objects (bucket_id, name) VALUES (%s, '23/late.jpg')", (bucket,)
        )
        retries = runtime.metrics.retries.labels("lagging")
        await eventually(lambda: retries._value.get() >= 1)
        assert pgw.images(23) == []
        pgw.put("23/late.jpg")
        await eventually(lambda: pgw.images(23) == ["23/late.jpg"])


async def test_a_webhook_received_by_one_process_is_rechecked_by_another_ones_worker(
    pgw: World,
) -> None:
    """`serve` without a worker takes a storage webhook ahead of storage; the worker of
    another process runs the job, sees the listing lag, and retries until it catches up."""
    pgw.insert(24, None)
    with pgw.service(debounce=0.05) as svc:
        receiver = Runtime(
            svc,
            watch=False,
            catch_up=False,
            queue_options=QueueOptions(run_worker=False, poll_interval=0.2),
        )
        async with receiver:
            await receiver.request("24", "storage:webhook", expect={"24/late.jpg": True})
    async with runtime_on(pgw) as worker:
        retries = worker.metrics.retries.labels("lagging")
        await eventually(lambda: retries._value.get() >= 1)
        assert pgw.images(24) == []
        pgw.put("24/late.jpg")
        await eventually(lambda: pgw.images(24) == ["24/late.jpg"])
