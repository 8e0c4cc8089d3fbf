# ruff: noqa: RUF001
"""`supabase-db://` storage: the full pass and per-key syncs reading `storage.objects`.

The bucket is a set of `storage.objects` rows on the bench server (the table as the tests
recreate it, with Supabase's name indexes; shared, so each run uses a bucket named after
its own schema and deletes its rows at the end), one row per object with `metadata` as
Supabase Storage writes it, loaded with COPY and ANALYZEd. The portfolio table is in the
same database, every row in sync (a no-op pass).

- no-op full pass, ours vs floor: the floor is one ordered `SELECT name` of the bucket
  (psycopg `fetchall`) plus `SELECT id, images`, what any pass has to read; target ≤ 1.3 times.
- the same pass vs the S3 backend: the same objects in moto (in this process, filled
  through its backend), the same table; at the S3 scenario's size, moto being slow.
- per-key sync latency: `sync_one` of sampled keys, a no-op, after an upload (a new
  `storage.objects` row) and after its deletion; the clock covers `sync_one` only.
"""

from __future__ import annotations

import json
import random
from typing import Any

import fullpass
import psycopg
import s3bench
from context import Context, Row, size_label
from data import JPEG, PostgresPlace, Spec, Table, Tree, objects, plan_tree
from measure import ratio, rounds, run_child
from tests.integration.supabase import ensure_storage_objects

METADATA = json.dumps({"eTag": '"0"', "size": len(JPEG), "mimetype": "image/jpeg"})
PER_KEY_SAMPLE = 200  # keys timed per run of the per-key figure


def supabase_db(ctx: Context) -> None:
    if not ctx.pg_server:
        print("  no PostgreSQL: supabase-db scenario skipped", flush=True)
        return
    ensure_storage_objects(ctx.pg_server)
    main = ctx.sizes.supabase
    with _Bucket(ctx, main) as bucket:
        _full_pass(ctx, bucket)
        _per_key(ctx, bucket)
    with _Bucket(ctx, ctx.sizes.s3) as bucket:
        _versus_s3(ctx, bucket)


class _Bucket:
    """A schema with `portfolios` (in sync) and the bucket of the same name."""

    def __init__(self, ctx: Context, portfolios: int) -> None:
        self.ctx = ctx
        self.tree: Tree = plan_tree(Spec(portfolios=portfolios, images=ctx.sizes.images))
        self.size = size_label(portfolios, ctx.sizes.images)
        self.place = PostgresPlace(server_url=str(ctx.pg_server))
        self.table: Table | None = None
        self.count = 0

    @property
    def name(self) -> str:
        return self.place.schema

    def __enter__(self) -> _Bucket:
        print(f"  building supabase-db {self.size}", flush=True)
        self.place.create()
        self.ctx.places.append(self.place)
        self.table = Table(url=self.place.url, tree=self.tree)
        self.table.create("synced")
        with psycopg.connect(str(self.ctx.pg_server), autocommit=True) as conn:
            with conn.cursor().copy(
                "COPY storage.objects (bucket_id, name, metadata) FROM STDIN"
            ) as copy:
                for path in objects(self.tree):
                    copy.write_row((self.name, path, METADATA))
                    self.count += 1
            conn.execute("ANALYZE storage.objects")
        return self

    def __exit__(self, *exc: object) -> None:
        with psycopg.connect(str(self.ctx.pg_server), autocommit=True) as conn:
            conn.execute("DELETE FROM storage.objects WHERE bucket_id = %s", (self.name,))
        if self.table is not None:
            self.table.close()

    def task(self, kind: str, **more: Any) -> dict[str, Any]:
        assert self.table is not None
        return {
            "kind": kind,
            "database_url": self.table.url,
            "storage_url": f"supabase-db://{self.name}",
            "pythonpath": self.ctx.pythonpath,
            **more,
        }

    def job(self, kind: str, **more: Any) -> Any:
        task = self.task(kind, **more)
        return lambda: run_child(task, cwd=self.ctx.work)


def _full_pass(ctx: Context, bucket: _Bucket) -> None:
    assert bucket.table is not None
    table = bucket.table
    writes: list[int] = []
    series = rounds(
        {"ours": bucket.job("ours"), "floor": bucket.job("floor")},
        runs=ctx.fast_runs,
        warmup=ctx.warmup,
        before={"ours": table.clear_log},
        after={"ours": lambda _r: writes.append(table.writes())},
        label=f"supabase-db {bucket.size}",
    )
    scenario = f"no-op full pass on storage.objects, {bucket.size}"
    setup = "Postgres + supabase-db"
    wrong = sum(1 for r in series["ours"].results if r["changed"] or r["errors"] or r["aborted"])
    r = ratio(series["ours"], series["floor"])
    ctx.add(Row(scenario, setup, "time ÷ floor", r, "×", "≤ 1.3", r.median <= 1.3))
    ctx.add(Row(scenario, setup, "rows written", max(writes), "", "0", max(writes) == 0 == wrong))
    for name, s in series.items():
        ctx.add(Row(scenario, setup, f"time: {name}", s.stat(), "s"))
    ctx.add(Row(scenario, setup, "peak RSS: ours", fullpass.peak_mb(series["ours"]), "MB"))
    ctx.raw[f"supabase-db/{bucket.size}"] = {n: s.results for n, s in series.items()}


def _per_key(ctx: Context, bucket: _Bucket) -> None:
    keys = random.Random(7).sample(
        list(bucket.tree.keys), min(PER_KEY_SAMPLE, len(bucket.tree.keys))
    )
    series = rounds(
        {"per_key": bucket.job("per_key", keys=keys)},
        runs=ctx.runs,
        warmup=ctx.warmup,
        label=f"supabase-db per key {bucket.size}",
    )
    scenario = f"per-key sync on storage.objects, {bucket.size}"
    setup = "Postgres + supabase-db"
    note = f"{len(keys)} keys per run; p50 and p99 over all runs' syncs"
    for kind in ("noop", "upload", "delete"):
        values = sorted(v for r in series["per_key"].results for v in r["ms"][kind])
        p50, p99 = values[len(values) // 2], values[min(len(values) - 1, int(len(values) * 0.99))]
        ctx.add(Row(scenario, setup, f"sync_one ({kind}) p50", round(p50, 2), "ms", "", None, note))
        ctx.add(Row(scenario, setup, f"sync_one ({kind}) p99", round(p99, 2), "ms"))
    ctx.raw[f"supabase-db-per-key/{bucket.size}"] = series["per_key"].results


def _versus_s3(ctx: Context, bucket: _Bucket) -> None:
    with s3bench.moto_bucket(bucket.tree) as (endpoint, count):
        assert count == bucket.count
        s3_task = bucket.task(
            "ours",
            storage_url=f"s3://{s3bench.BUCKET}",
            s3_endpoint=endpoint,
            **s3bench.CREDENTIALS,
        )
        series = rounds(
            {
                "supabase-db": bucket.job("ours"),
                "s3": lambda: run_child(s3_task, cwd=ctx.work),
            },
            runs=ctx.runs,
            warmup=0,
            label=f"supabase-db vs s3 {bucket.size}",
        )
    scenario = f"no-op full pass, storage.objects vs S3 (moto), {bucket.size}"
    setup = "Postgres + supabase-db / s3"
    r = ratio(series["supabase-db"], series["s3"])
    ctx.add(Row(scenario, setup, "time ÷ S3 backend", r, "×", "", None, "moto answers ~0.4 s/page"))
    for name, s in series.items():
        ctx.add(Row(scenario, setup, f"time: {name}", s.stat(), "s"))
    ctx.raw[f"supabase-db-vs-s3/{bucket.size}"] = {n: s.results for n, s in series.items()}
