"""`make bench` entry point: `python bench/run.py --scale default|large`.

Builds the data, runs every scenario against its references in the same run, and writes
`bench/results/latest.md`, `latest.json` and `scaling.png`. See bench/README.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(BENCH), str(REPO)]

import fullpass  # noqa: E402
import imagebench  # noqa: E402
import intake  # noqa: E402
import live  # noqa: E402
import report  # noqa: E402
import s3bench  # noqa: E402
import s3scale  # noqa: E402
import supabasedb  # noqa: E402
import workers  # noqa: E402
from context import SCALES, Context, size_label  # noqa: E402
from data import Spec  # noqa: E402

SCENARIOS = (
    "noop",
    "drift",
    "initial",
    "scaling",
    "large",
    "s3",
    "supabase",
    "live",
    "workers",
    "intake",
    "s3scale",
    "images",
)
BENCH_DB_ENV = "PORTFOLIO_SYNC_BENCH_DATABASE_URL"


def find_postgres() -> tuple[str | None, str, object | None]:
    """A server URL for the bench schemas: the env URL, else 127.0.0.1:5432/test, else an
    embedded pgserver (from the test extra). Returns (url, description, embedded)."""
    from tests.servers import (
        LOCAL_POSTGRES_URL,
        EmbeddedPostgres,
        ServerUnavailable,
        connection_error,
        normalize_postgres_url,
    )

    url = os.environ.get(BENCH_DB_ENV, "").strip()
    if url:
        return normalize_postgres_url(url), f"{BENCH_DB_ENV}", None
    if connection_error(LOCAL_POSTGRES_URL) is None:
        return LOCAL_POSTGRES_URL, "local server 127.0.0.1:5432/test", None
    try:
        embedded = EmbeddedPostgres.start()
    except ServerUnavailable as exc:
        return None, f"no PostgreSQL ({exc}); Postgres rows skipped", None
    return embedded.url, "embedded pgserver", embedded


def postgres_version(url: str | None) -> str:
    if not url:
        return "none"
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def rclone_version(path: str | None) -> str:
    if not path:
        return "not installed"
    out = subprocess.run([path, "version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "?"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", choices=sorted(SCALES), default="default")
    parser.add_argument("--runs", type=int, default=3, help="recorded runs per figure (≥ 3)")
    parser.add_argument("--warmup", type=int, default=1, help="unrecorded rounds first")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {SCENARIOS}")
    parser.add_argument(
        "--src", default="", help="measure the product from this src/ folder instead (A/B)"
    )
    parser.add_argument(
        "--out", default="", help="write results here instead of bench/results (A/B runs)"
    )
    parser.add_argument(
        "--baseline-src",
        default="",
        help="intake: also serve PostgreSQL + folder from this src/ folder, interleaved (A/B)",
    )
    args = parser.parse_args()
    only = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if args.out:
        report.RESULTS = Path(args.out).resolve()
    elif args.scale != "default":  # keep the default results (the README's) in place
        report.RESULTS = report.RESULTS / args.scale

    started = time.monotonic()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="psync-bench-"))
    pg_url, pg_note, embedded = find_postgres()
    rclone = shutil.which("rclone")
    sizes = SCALES[args.scale]
    ctx = Context(
        scale=args.scale,
        sizes=sizes,
        work=work,
        runs=args.runs,
        warmup=args.warmup,
        pythonpath=[str(Path(args.src).resolve())] if args.src else [],
        pg_server=pg_url,
        pg_note=pg_note,
        rclone=rclone,
        rclone_note=rclone_version(rclone),
        baseline_src=str(Path(args.baseline_src).resolve()) if args.baseline_src else "",
    )
    print(f"bench: scale {args.scale}, work dir {work}, postgres: {pg_note}", flush=True)
    points: list[dict[str, object]] = []
    try:
        main_size = size_label(sizes.main, sizes.images)
        if {"noop", "drift", "scaling"} & set(only):
            dataset = ctx.dataset("main", fullpass.spec_for(ctx, sizes.main))
            if "noop" in only or "scaling" in only:
                print("== no-op full pass", flush=True)
                series = fullpass.noop(ctx, dataset, size=main_size)
                points.append(fullpass.scaling_point(ctx, sizes.main, series))
            if "drift" in only:
                print("== 1% drift", flush=True)
                fullpass.drift(ctx, dataset, size=main_size)
            ctx.drop_dataset("main")
        if "initial" in only:
            print("== initial import", flush=True)
            dataset = ctx.dataset("initial", fullpass.spec_for(ctx, sizes.initial))
            fullpass.initial(ctx, dataset, size=size_label(sizes.initial, sizes.images))
            ctx.drop_dataset("initial")
        if "scaling" in only:
            for n in sizes.scaling:
                if n in (sizes.main, sizes.large):
                    continue
                print(f"== scaling at {n}", flush=True)
                dataset = ctx.dataset(f"scale{n}", fullpass.spec_for(ctx, n), postgres=False)
                points.append(fullpass.scaling_point(ctx, n, fullpass.scaling_only(ctx, dataset)))
                ctx.drop_dataset(f"scale{n}")
        if "large" in only and sizes.large:
            print("== large no-op full pass", flush=True)
            dataset = ctx.dataset("large", fullpass.spec_for(ctx, sizes.large))
            series = fullpass.noop(
                ctx, dataset, size=size_label(sizes.large, sizes.images), large=True
            )
            points.append(fullpass.scaling_point(ctx, sizes.large, series))
            fullpass.rss_flat(ctx)
            ctx.drop_dataset("large")
        if "s3" in only:
            print("== S3", flush=True)
            s3bench.s3(ctx)
        if "supabase" in only:
            print("== supabase-db storage (storage.objects)", flush=True)
            supabasedb.supabase_db(ctx)
        if "live" in only:
            print("== events and burst", flush=True)
            dataset = ctx.dataset(
                "events", Spec(portfolios=sizes.events_portfolios, images=sizes.images)
            )
            live.live(ctx, dataset)
            ctx.drop_dataset("events")
        if "workers" in only:
            print("== worker processes (PostgreSQL job queue)", flush=True)
            if pg_url:
                dataset = ctx.dataset(
                    "workers",
                    Spec(portfolios=sizes.workers_portfolios, images=sizes.images),
                    sqlite=False,
                )
                workers.workers(ctx, dataset)
                ctx.drop_dataset("workers")
            else:
                print("  no PostgreSQL: skipped", flush=True)
        if "s3scale" in only:
            print("== S3 at scale (list-only server, 30 ms per request)", flush=True)
            s3scale.s3scale(ctx)
        if "intake" in only:
            print("== webhook intake", flush=True)
            intake.intake(ctx)
        if "images" in only:
            print("== image objects (image_fields)", flush=True)
            imagebench.images(ctx)
    finally:
        ctx.close()
        if embedded is not None:
            embedded.stop()  # type: ignore[attr-defined]
        shutil.rmtree(work, ignore_errors=True)
    points.sort(key=lambda p: int(p["portfolios"]))  # type: ignore[call-overload]
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()
    meta = {
        "command": "make bench" + (f" SCALE={args.scale}" if args.scale != "default" else ""),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} cores, load avg {load_before[0]:.1f} → {load_after[0]:.1f}",
        "scale": args.scale,
        "elapsed_s": round(elapsed, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgres": f"{postgres_version(pg_url)} ({pg_note})" if pg_url else pg_note,
        "rclone": ctx.rclone_note,
        "scenarios": only,
        "src": args.src or "src",
        "notes": notes(ctx, pg_note, elapsed),
    }
    report.write(ctx, meta, points)
    print(f"bench: done in {elapsed:.0f} s; results in {report.RESULTS}", flush=True)
    return 0


def notes(ctx: Context, pg_note: str, elapsed: float) -> list[str]:
    s = ctx.sizes
    out = [
        f"Run took {elapsed / 60:.1f} min. Python {platform.python_version()}, SQLite "
        f"{sqlite3.sqlite_version}, PostgreSQL: {pg_note}, rclone: {ctx.rclone_note}.",
        "Full passes run in a fresh process each (`bench/child.py`); the clock covers the "
        "pass only (imports, engine, table reflection and one warm connection come first, "
        "for every job alike). Peak RSS is that process's VmHWM (`/proc/self/status`).",
        "floor = one recursive `os.scandir` + `stat` listing (path, size, mtime) plus one "
        "`SELECT id, images` through the product's SQLAlchemy engine; seed = the seed's "
        "cron (list each portfolio's folder with the product's storage backend, UPDATE the "
        "row when the rendered listing differs, each UPDATE its own transaction).",
        "Data: integer keys, 10 images per portfolio in four naming styles (camera "
        "`IMG_4821.JPG`, counters `1.jpg`…`10.jpg`, hashes `3f2a9c1e4b5d.jpg`, `Kitchen view "
        "7.jpg`); the full-pass tree has 1% drift on storage (missing and extra images) and "
        "0.1% orphan folders. Rows written are counted by an UPDATE trigger, and after each "
        "drift/initial run every row is checked against the expected value.",
        f"Events: {s.events_seconds:.0f} s per run at this scale "
        f"({'30 s with SCALE=large' if ctx.scale != 'large' else 'the full 30 s'}), "
        f"{s.events_portfolios} portfolios, server with the product defaults.",
        f"Initial import uses {s.initial} portfolios at this scale (the seed commits one "
        "UPDATE per row, which dominates the run time).",
    ]
    if any(row.scenario.startswith("workers") for row in ctx.rows):
        out.append(workers.note(ctx))
    if not ctx.rclone:
        out.append("rclone is not installed (`apt-get install rclone`): its column is skipped.")
    return out


if __name__ == "__main__":
    sys.exit(main())
