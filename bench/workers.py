# ruff: noqa: RUF001
"""`portfolio-sync worker` processes on the PostgreSQL job queue, with 1, 2 and 4 workers.

Production mode as the README describes it: `portfolio-sync setup --storage-objects BUCKET`
installs the job triggers (on the portfolio table and on Supabase's `storage.objects`,
recreated on the bench server as the tests do), and N `portfolio-sync worker` processes
(product defaults, the cron moved away) drain the queue. Storage is a local folder: an
upload is the file written under a hidden name and renamed into place, then a row
inserted into `storage.objects` in its own transaction, as Supabase Storage does; that
row's trigger defers the sync job in the same transaction. Nothing calls HTTP.

- throughput: with the N workers idle and registered, one file is added to each of K
  portfolios, then K `storage.objects` rows are inserted in ONE transaction (K jobs); the
  clock runs from just before its COMMIT until a separate connection, polling every 10 ms,
  sees every one of the K new paths in its row. syncs/s = K / that time.
- events → row: uploads at a fixed rate into random portfolios while the N workers run;
  each upload's latency is the time from just before its file is written until a
  separate connection sees the path in the row (`live.events_run`).

After each run (outside the clock) the queue must drain (no job `todo` or `doing`) and
every row must equal its folder's listing in natural order (`data.expected_order`).
Worker counts run interleaved, round by round (fresh processes each time), so that load
from elsewhere hits them alike; each worker must register (`procrastinate_workers`)
before anything is measured and exit 0 on SIGTERM afterwards.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import live
import psycopg
from context import Context, Dataset, Row
from data import Table, expected_order
from measure import Series, ratio
from tests.integration.supabase import ensure_storage_objects
from tests.servers import normalize_postgres_url

COUNTS = (1, 2, 4)  # worker processes
RATE = 50.0  # uploads/s of the events runs: below what one worker drains on 2 cores
OBJECT_METADATA = '{"size": 64, "mimetype": "image/jpeg"}'  # as Supabase records an upload
POLL = 0.01  # seconds between the throughput poller's reads
REGISTER_TIMEOUT = 60.0
DRAIN_TIMEOUT = 30.0


class Workers:
    """N `portfolio-sync worker` processes on one table, started and stopped together."""

    def __init__(self, ctx: Context, table: Table, count: int, label: str) -> None:
        self.ctx = ctx
        self.table = table
        self.count = count
        self.logs = [ctx.work / f"worker-{label}-{i}.log" for i in range(count)]
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, conn: psycopg.Connection[Any]) -> float:
        """Start them; return once all N registered (seconds it took), bounded."""
        known = _worker_ids(conn)
        env = live.product_env(self.ctx, self.table)
        started = time.perf_counter()
        for path in self.logs:
            with path.open("wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        [live.portfolio_sync_script(), "worker"],
                        env=env,
                        cwd=self.ctx.work,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
        deadline = time.monotonic() + REGISTER_TIMEOUT
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a worker exited early:\n{self.output()}")
            if len(_worker_ids(conn) - known) >= self.count:
                return time.perf_counter() - started
            time.sleep(0.05)
        raise RuntimeError(f"{self.count} worker(s) not registered in time:\n{self.output()}")

    def stop(self) -> list[int | None]:
        """SIGTERM all, then wait for each (bounded): their exit codes (None: killed)."""
        return live.stop(*self.procs)

    def cpu_seconds(self) -> float:
        """User + system CPU time of the worker processes so far (their threads included)."""
        total = 0
        for proc in self.procs:
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        return total / os.sysconf("SC_CLK_TCK")

    def output(self) -> str:
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text(errors='replace')[-2000:]}"
            for path in self.logs
            if path.exists()
        )


def _worker_ids(conn: psycopg.Connection[Any]) -> set[int]:
    return {row[0] for row in conn.execute("SELECT id FROM procrastinate_workers")}


@dataclass(slots=True)
class Bench:
    """The table, its bucket, and the files added since the tree was built."""

    table: Table
    bucket: str
    url: str  # plain postgresql://… with the data set's search_path
    conn: psycopg.Connection[Any]  # autocommit, the bench's own reads
    added: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    retried: int = 0  # retries so far (procrastinate_events deferred_for_retry)

    @property
    def root(self) -> Path:
        return self.table.tree.root

    def expected(self, key: int) -> list[str]:
        names = expected_order([*self.table.tree.names(key), *self.added[key]])
        return [f"{key}/{name}" for name in names]

    def settle(self) -> dict[str, Any]:
        """Wait (bounded) until no job waits or runs; then check every row."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and self._jobs("todo", "doing"):
            time.sleep(0.05)
        wrong = [
            int(key)
            for key, images in self.conn.execute("SELECT id, images FROM portfolios")
            if images != self.expected(int(key))
        ]
        retried = self._count(
            "SELECT count(*) FROM procrastinate_events WHERE type = 'deferred_for_retry'"
        )
        retried, self.retried = retried - self.retried, retried
        return {
            "jobs_left": self._jobs("todo", "doing"),
            "jobs_failed": self._jobs("failed"),
            "jobs_retried": retried,
            "rows_wrong": len(wrong),
            "rows_wrong_sample": wrong[:5],
        }

    def _jobs(self, *status: str) -> int:
        return self._count(
            "SELECT count(*) FROM procrastinate_jobs WHERE status::text = ANY(%s)", list(status)
        )

    def writes(self) -> int:
        return self._count("SELECT count(*) FROM write_log")

    def _count(self, sql: str, *params: Any) -> int:
        row = self.conn.execute(sql, params or None).fetchone()
        return int(row[0]) if row else 0


def throughput_run(bench: Bench, group: Workers, keys: list[int], tag: str) -> dict[str, Any]:
    """K syncs queued in one transaction; time from its COMMIT until every row shows its file.

    `keys` must be consecutive (the poller reads them as a range)."""
    assert keys == list(range(keys[0], keys[0] + len(keys))), "keys must be consecutive"
    name = f"tp-{tag}.jpg"
    for key in keys:  # the uploads land in storage first, outside the clock
        live.upload(bench.root, key, name)
        bench.added[key].append(name)
    bench.conn.execute("DELETE FROM write_log")
    seen = 0
    with psycopg.connect(bench.url, connect_timeout=10) as app:
        app.execute(
            "INSERT INTO storage.objects (bucket_id, name, metadata) "
            "SELECT %s, k::text || '/' || %s, %s::jsonb FROM unnest(%s::int[]) AS k",
            (bench.bucket, name, OBJECT_METADATA, keys),
        )
        cpu = group.cpu_seconds()
        started = time.perf_counter()
        app.commit()
        committed = time.perf_counter()
    limit = committed + max(60.0, len(keys) / 5)
    while True:  # a range, not `id = ANY(keys)`: that costs the server ~2 ms a read at 1,000
        row = bench.conn.execute(
            "SELECT count(*) FROM portfolios "
            "WHERE id BETWEEN %s AND %s AND (id::text || '/' || %s) = ANY(images)",
            (keys[0], keys[-1], name),
        ).fetchone()
        now = time.perf_counter()
        seen = int(row[0]) if row else 0
        if seen >= len(keys) or now > limit:
            break
        time.sleep(POLL)
    seconds = now - started
    cpu = group.cpu_seconds() - cpu
    return {
        "syncs": len(keys),
        "seen": seen,
        "seconds": seconds,
        "syncs_per_s": seen / seconds,
        "commit_ms": 1000 * (committed - started),
        "worker_cpu_ms_per_sync": 1000 * cpu / max(seen, 1),
        "rows_written": bench.writes(),
    }


def latency_run(
    bench: Bench, keys: list[int], *, seconds: float, tag: str, seed: int
) -> dict[str, Any]:
    """`live.events_run` with Supabase-style uploads: file, then a storage.objects row."""
    with psycopg.connect(bench.url, autocommit=True, connect_timeout=10) as app:

        def put(key: int, name: str) -> None:
            live.upload(bench.root, key, name)
            bench.added[key].append(name)
            app.execute(
                "INSERT INTO storage.objects (bucket_id, name, metadata) VALUES (%s, %s, %s)",
                (bench.bucket, f"{key}/{name}", OBJECT_METADATA),
            )

        return live.events_run(
            bench.table, keys, rate=RATE, seconds=seconds, tag=tag, seed=seed, put=put
        )


def _setup(ctx: Context, table: Table, *args: str) -> None:
    proc = subprocess.run(
        [live.portfolio_sync_script(), "setup", *args],
        env=live.product_env(ctx, table),
        cwd=ctx.work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"portfolio-sync setup {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def workers(ctx: Context, dataset: Dataset) -> None:
    table = dataset.tables.get("Postgres")
    if table is None:
        print("  no PostgreSQL: workers scenario skipped", flush=True)
        return
    assert ctx.pg_server is not None
    ensure_storage_objects(ctx.pg_server)
    url = normalize_postgres_url(table.url)
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        bucket = str(conn.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
        _setup(ctx, table, "--storage-objects", bucket)
        bench = Bench(table=table, bucket=bucket, url=url, conn=conn)
        try:
            series = _rounds(ctx, bench)
        finally:
            _cleanup(ctx, table, conn, bucket)
    _report(ctx, series, portfolios=len(table.tree.keys))


def _cleanup(ctx: Context, table: Table, conn: psycopg.Connection[Any], bucket: str) -> None:
    """Uninstall the triggers, then delete the bucket's rows from the shared table (the
    bench schema, dropped at the end, takes the trigger functions with it anyway)."""
    try:
        _setup(ctx, table, "--uninstall", "--storage-objects", bucket)
        conn.execute("DELETE FROM storage.objects WHERE bucket_id = %s", (bucket,))
    except (RuntimeError, subprocess.SubprocessError, psycopg.Error) as exc:
        print(f"  could not clean up bucket {bucket} in storage.objects: {exc}", flush=True)


def _rounds(ctx: Context, bench: Bench) -> dict[int, Series]:
    s = ctx.sizes
    keys = list(bench.table.tree.keys)
    queued = keys[: s.workers_syncs]
    series = {n: Series(f"{n} worker(s)") for n in COUNTS}
    for index in range(ctx.warmup + ctx.runs):
        warm = index < ctx.warmup
        for n in COUNTS:
            tag = f"{n}w{index}"
            group = Workers(ctx, bench.table, n, tag)
            try:
                registered = group.start(bench.conn)
                time.sleep(0.5)  # registration comes just before the listener: let it start
                # a warm-up round is a light one: it only has to warm the caches
                tp = throughput_run(
                    bench, group, queued[: len(queued) // 5] if warm else queued, tag
                )
                tp_check = bench.settle()
                ev = latency_run(
                    bench,
                    keys,
                    seconds=min(2.0, s.workers_seconds) if warm else s.workers_seconds,
                    tag=tag,
                    seed=1000 * n + index,
                )
                ev_check = bench.settle()
            finally:
                stopping = time.perf_counter()
                codes = group.stop()
                stopped = time.perf_counter() - stopping
            result = {
                "workers": n,
                "register_s": registered,
                **tp,
                "throughput_check": tp_check,
                **{f"events_{k}": v for k, v in ev.items()},
                "events_check": ev_check,
                "exit_codes": codes,
                "stop_s": stopped,
                "worker_ids_left": len(_worker_ids(bench.conn)),
            }
            print(
                f"    workers {n} {'warm-up' if warm else 'run'}: {tp['syncs_per_s']:.1f} syncs/s "
                f"({tp['seen']}/{tp['syncs']} in {tp['seconds']:.2f} s, worker CPU "
                f"{tp['worker_cpu_ms_per_sync']:.1f} ms/sync), events p50 "
                f"{ev['p50_ms']:.1f} ms p99 {ev['p99_ms']:.1f} ms lost {ev['lost']}; "
                f"left {tp_check['jobs_left']}/{ev_check['jobs_left']} jobs, "
                f"{tp_check['rows_wrong']}/{ev_check['rows_wrong']} rows wrong, "
                f"{tp_check['jobs_retried']}/{ev_check['jobs_retried']} retried; "
                f"start {registered:.1f} s, stop {stopped:.1f} s, exit {codes}",
                flush=True,
            )
            if not warm:
                series[n].results.append(result)
    return series


def _problems(results: list[dict[str, Any]]) -> str:
    """What went wrong in the recorded runs of one worker count, for the row's note."""
    checks = [r[c] for r in results for c in ("throughput_check", "events_check")]
    counts = [
        (sum(r["seen"] < r["syncs"] for r in results), "throughput run(s) timed out"),
        (sum(r["events_lost"] for r in results), "uploads never reached the row"),
        (sum(c["jobs_left"] for c in checks), "jobs left todo/doing after a run"),
        (max(c["jobs_failed"] for c in checks), "failed jobs in the queue"),
        (sum(c["rows_wrong"] for c in checks), "rows differed from the folder after a run"),
    ]
    found = [f"{count} {what}" for count, what in counts if count]
    codes = sorted({str(c) for r in results for c in r["exit_codes"] if c != 0})
    if codes:
        found.append(f"worker exit codes {', '.join(codes)} (expected 0)")
    return "; ".join(found)


def _report(ctx: Context, series: dict[int, Series], *, portfolios: int) -> None:
    s = ctx.sizes
    queued = min(s.workers_syncs, portfolios)
    throughput = f"workers: throughput, {queued:,} queued syncs"
    events = f"workers: events → row, {RATE:.0f} uploads/s for {s.workers_seconds:.0f} s"
    for n in COUNTS:
        results = series[n].results
        where = f"Postgres + folder, {n} × `portfolio-sync worker`"
        problems = _problems(results)
        ctx.add(
            Row(
                throughput,
                where,
                "syncs/s",
                series[n].stat("syncs_per_s"),
                "syncs/s",
                "(reported)",
                None,
                problems,
            )
        )
        ctx.add(
            Row(
                throughput,
                where,
                "worker CPU per sync (all N processes)",
                series[n].stat("worker_cpu_ms_per_sync"),
                "ms",
            )
        )
        if n != COUNTS[0]:
            cores = os.cpu_count() or 1
            note = (
                f"the machine has {cores} cores (shared with PostgreSQL): {n} workers "
                f"get no more CPU than {cores}"
                if n > cores
                else ""
            )
            ctx.add(
                Row(
                    throughput,
                    where,
                    f"throughput vs {COUNTS[0]} worker",
                    ratio(series[n], series[COUNTS[0]], "syncs_per_s"),
                    "×",
                    "(reported)",
                    None,
                    note,
                )
            )
        where_events = f"{where}, {portfolios} portfolios"
        for figure, metric in (("latency p50", "events_p50_ms"), ("latency p99", "events_p99_ms")):
            ctx.add(
                Row(
                    events,
                    where_events,
                    figure,
                    series[n].stat(metric),
                    "ms",
                    "(reported)",
                    None,
                    problems if metric == "events_p99_ms" else "",
                )
            )
        ctx.raw[f"workers/{n}"] = results


def note(ctx: Context) -> str:
    s = ctx.sizes
    return (
        f"Workers: {s.workers_portfolios} portfolios on PostgreSQL + a local folder, "
        "`portfolio-sync setup --storage-objects` (Supabase's `storage.objects` recreated "
        "as in the tests); an upload = file written and renamed into place, then a "
        "`storage.objects` row in its own transaction, whose trigger defers the job. N "
        "`portfolio-sync worker` processes with the product defaults (concurrency 4 each), "
        "started afresh for each round, worker counts interleaved. Throughput: "
        f"{min(s.workers_syncs, s.workers_portfolios):,} rows inserted in one transaction, "
        "clock from just before its COMMIT until every row shows its new file (polled every "
        f"10 ms). Events: {RATE:.0f} uploads/s, a rate one worker sustains (its throughput "
        f"is above it). The machine has {os.cpu_count()} cores, shared by the workers, "
        "PostgreSQL and the bench's own poller: more worker processes than cores add no CPU, "
        "only overlap of the waits on the database."
    )
