"""One measured job in a fresh process: `python bench/child.py '<json task>'`.

Each full pass (ours or a reference) runs in its own interpreter so that its peak RSS is
its own (VmHWM at the end) and no cache of a previous run is inherited. Set-up
(imports, engine, reflecting the table, one warm connection) is done before the clock
starts for every job alike; the clock covers the pass only. Prints one JSON object.

Tasks (`kind`):
- `ours`: `Reconciler.sync_all` of the product, built by `open_service` as the CLI does.
- `floor`: one recursive `os.scandir` + `stat` listing of the tree (name, size, mtime)
  plus one `SELECT id, images` through the product's SQLAlchemy engine; for S3, one
  paginated obstore listing of the bucket plus the same SELECT; for `supabase-db://`, one
  ordered `SELECT name` of the bucket's `storage.objects` rows (psycopg, fetchall) plus
  the same SELECT.
- `floor2`: the floor on two cores: the same listing in a forked helper process while the
  main process runs the SELECT (ours lists in a helper process too).
- `per_key`: `sync_one` latency (a no-op, after an upload, after a deletion) on given keys
  of a `supabase-db://` bucket, uploads being `storage.objects` rows.
- `listing`: the product's full-pass listing alone (`iter_folders`), optionally with
  `list_workers` (S3: 1 = one sequence of pages).
- `seed`: the seed's cron: read the table, then for each portfolio list its folder (one
  storage request each, with the product's storage backend) and UPDATE its row when the
  rendered listing differs (one UPDATE statement per differing row, each committed on its
  own, as the cron's per-row client calls were). On SQLite it runs with the product's
  engine settings (WAL, synchronous=NORMAL), so the comparison is of the algorithms;
  `synchronous` in the task sets another level (`FULL`, SQLite's default) for reference.
"""

from __future__ import annotations

import json
import os
import resource
import stat
import sys
import time
from pathlib import Path
from typing import Any


def _settings(task: dict[str, Any]) -> Any:
    from portfolio_sync.config import load_settings

    overrides: dict[str, Any] = {
        "database_url": task["database_url"],
        "storage_url": task["storage_url"],
    }
    for name in (
        "s3_endpoint",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_region",
        "storage_database_url",
    ):
        if task.get(name):
            overrides[name] = task[name]
    return load_settings(None, **overrides)


def ours(task: dict[str, Any]) -> dict[str, Any]:
    import sqlalchemy as sa

    from portfolio_sync.wiring import open_service

    with open_service(_settings(task)) as svc:
        with svc.catalog.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        profile: str = task.get("profile") or ""
        profiler: Any = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        started, cpu = time.perf_counter(), time.process_time()
        report = svc.reconciler.sync_all("bench")
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if profiler is not None:
            profiler.stop()
            Path(profile).write_text(profiler.output_text(unicode=False, color=False))
    return {
        "seconds": seconds,
        "cpu": cpu,
        "rows": report.rows,
        "changed": len(report.changed),
        "unchanged": report.unchanged,
        "orphans": len(report.orphans),
        "errors": [e.error for e in report.errors][:5],
        "aborted": report.aborted,
    }


def _scan(top: str, out: list[tuple[str, int, float]]) -> None:
    with os.scandir(top) as entries:
        for entry in entries:
            st = entry.stat()
            if stat.S_ISDIR(st.st_mode):
                _scan(entry.path, out)
            else:
                out.append((entry.path, st.st_size, st.st_mtime))


def _engine(url: str) -> Any:
    from portfolio_sync.backends.catalog import create_engine
    from portfolio_sync.config import normalize_database_url

    engine = create_engine(normalize_database_url(url))
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    return engine


def _listing(task: dict[str, Any], engine: Any) -> list[Any]:
    """The floor's listing: one recursive scandir + stat, one paginated S3 listing, or one
    ordered SELECT of the bucket's `storage.objects` rows."""
    if task["storage_url"].startswith("s3://"):
        import obstore

        from portfolio_sync.backends.storage import open_storage

        store = open_storage(_settings(task))._store  # type: ignore[attr-defined]
        return [
            (m["path"], m["size"], m["last_modified"])
            for chunk in obstore.list(store, chunk_size=1000)
            for m in chunk
        ]
    if task["storage_url"].startswith("supabase-db://"):
        bucket = task["storage_url"].removeprefix("supabase-db://")
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.execute(
                'SELECT name FROM storage.objects WHERE bucket_id = %s ORDER BY name COLLATE "C"',
                (bucket,),
            )
            return list(cursor.fetchall())
        finally:
            raw.close()
    files: list[tuple[str, int, float]] = []
    _scan(task["storage_url"], files)
    return files


def floor(task: dict[str, Any]) -> dict[str, Any]:
    engine = _engine(task["database_url"])
    started, cpu = time.perf_counter(), time.process_time()
    objects = _listing(task, engine)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, images FROM portfolios").fetchall()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.dispose()
    return {"seconds": seconds, "cpu": cpu, "objects": len(objects), "rows": len(rows)}


def _list_and_send(task: dict[str, Any], conn: Any) -> None:
    engine = _engine(task["database_url"]) if task["storage_url"].startswith("supabase") else None
    conn.send(len(_listing(task, engine)))
    conn.close()


def listing(task: dict[str, Any]) -> dict[str, Any]:
    """The product's full-pass listing alone (`Storage.iter_folders`), no table: on S3,
    `list_workers` 1 lists in one sequence of pages, the default in parallel key ranges."""
    from portfolio_sync.backends.storage import open_storage

    storage = open_storage(_settings(task))
    if "list_workers" in task:
        storage.list_workers = int(task["list_workers"])  # type: ignore[attr-defined]
    started, cpu = time.perf_counter(), time.process_time()
    objects = sum(len(found) for _, found in storage.iter_folders(""))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    return {"seconds": seconds, "cpu": cpu, "objects": objects}


def floor2(task: dict[str, Any]) -> dict[str, Any]:
    """The floor on two cores: the listing in a forked helper process (started inside the
    clock, as the product's listing helper is) while this process reads the table. The
    listing is not shipped back (only its count), so this is a floor: ours also pays for
    moving the listing between processes and comparing it with the rows."""
    import multiprocessing

    engine = _engine(task["database_url"])
    fork = multiprocessing.get_context("fork")
    receive, send = fork.Pipe(duplex=False)
    started, cpu = time.perf_counter(), time.process_time()
    helper = fork.Process(target=_list_and_send, args=(task, send))
    helper.start()
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, images FROM portfolios").fetchall()
    objects = receive.recv()
    helper.join()
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.dispose()
    return {"seconds": seconds, "cpu": cpu, "objects": objects, "rows": len(rows)}


def seed(task: dict[str, Any]) -> dict[str, Any]:
    from portfolio_sync.backends.storage import open_storage
    from portfolio_sync.layout import Layout

    settings = _settings(task)
    layout = Layout.from_settings(settings)
    storage = open_storage(settings)
    engine = _engine(task["database_url"])
    if task.get("synchronous"):  # e.g. SQLite's own default, FULL: an fsync per commit
        import sqlalchemy as sa

        level = str(task["synchronous"])

        @sa.event.listens_for(engine, "connect")
        def _synchronous(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA synchronous={level}")

        engine.dispose()  # the warm connection was made with the product's settings
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    postgres = engine.dialect.name == "postgresql"
    update = (
        "UPDATE portfolios SET images = CAST(%s AS TEXT[]) WHERE id = %s"
        if postgres
        else "UPDATE portfolios SET images = ? WHERE id = ?"
    )
    started, cpu = time.perf_counter(), time.process_time()
    with engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT id, images FROM portfolios").fetchall()
    if task.get("limit"):  # a sample of the portfolios (request counts on slow servers)
        rows = rows[: task["limit"]]
    updates = 0
    for key_value, raw in rows:
        key = str(key_value)
        current = json.loads(raw) if isinstance(raw, str) else raw
        objects = storage.list_prefix(layout.folder(key))  # one request per portfolio
        new = layout.render(layout.select(key, objects)[0], current)
        if new != current:
            with engine.begin() as conn:  # one statement, one commit per row
                conn.exec_driver_sql(update, (new if postgres else json.dumps(new), key_value))
            updates += 1
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.dispose()
    return {"seconds": seconds, "cpu": cpu, "rows": len(rows), "updates": updates}


def per_key(task: dict[str, Any]) -> dict[str, Any]:
    """`sync_one` latency on `task["keys"]` (portfolio keys, rows in sync): each key once
    as a no-op, then once after one new object row (an upload), then once after its
    deletion. The clock covers `sync_one` only."""
    import sqlalchemy as sa

    from portfolio_sync.wiring import open_service

    bucket = task["storage_url"].removeprefix("supabase-db://")
    ms: dict[str, list[float]] = {"noop": [], "upload": [], "delete": []}
    with open_service(_settings(task)) as svc:
        sync, engine = svc.reconciler.sync_one, svc.catalog.engine
        put = sa.text(
            "INSERT INTO storage.objects (bucket_id, name, metadata) "
            "VALUES (:b, :n, '{\"size\": 64}')"
        )
        drop = sa.text("DELETE FROM storage.objects WHERE bucket_id = :b AND name = :n")
        for key in task["keys"]:
            for kind, change in (("noop", None), ("upload", put), ("delete", drop)):
                if change is not None:
                    with engine.begin() as conn:
                        conn.execute(change, {"b": bucket, "n": f"{key}/zz upload.jpg"})
                started = time.perf_counter()
                result = sync(str(key), "bench")
                ms[kind].append((time.perf_counter() - started) * 1000)
                want = "unchanged" if change is None else "changed"
                if result.status != want:
                    raise RuntimeError(f"sync of {key} ({kind}): {result.status}, {result.error}")
    return {"seconds": sum(map(sum, ms.values())) / 1000, "ms": ms}


def peak_rss_kb() -> int:
    """This process's peak RSS. VmHWM, not ru_maxrss: on Linux ru_maxrss carries over the
    high-water mark of the image before exec, i.e. of the bench runner that started us."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    task = json.loads(sys.argv[1])
    for path in reversed(task.get("pythonpath", [])):
        sys.path.insert(0, path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    kinds = {
        "ours": ours,
        "floor": floor,
        "floor2": floor2,
        "seed": seed,
        "per_key": per_key,
        "listing": listing,
    }
    result = kinds[task["kind"]](task)
    result["maxrss_kb"] = peak_rss_kb()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU of helper processes (the product's folder listing helper), to report total CPU
    helpers = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result["cpu_total"] = result.get("cpu", 0.0) + helpers
    result["helper_maxrss_kb"] = after.ru_maxrss
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
