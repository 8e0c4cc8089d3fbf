"""`portfolio-sync worker` processes scaling out on one PostgreSQL database.

Three worker processes drain the queue while a driver makes 2,000 random changes across
200 portfolios, the way a Supabase app does: files land in storage and a row appears in
``storage.objects`` (whose trigger defers the sync), and rows of the portfolio table are
edited (whose trigger defers it too). Nothing calls HTTP. Storage is a local folder: the
queue, not the storage backend, is under test.

Evidence comes from the database, not from the workers' word: procrastinate's events give
each job's start and end, the history table each row write, the jobs table each periodic
tick. One worker is killed with SIGKILL while it holds running jobs; they must be retried
once its heartbeat is older than the stall timeout, and nothing may be lost.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from portfolio_sync.layout import natural_key
from portfolio_sync.queue.jobs import PASS_TASK, QUEUE, SYNC_TASK
from tests.acceptance.command import SCRIPT, run
from tests.integration.supabase import ensure_storage_objects, forget_bucket, object_metadata
from tests.integration.world import JPEG, World

PORTFOLIOS = 200
CHANGES = 2000
STALL_TIMEOUT = 3


class Workers:
    """`portfolio-sync worker` processes, each mapped to its procrastinate worker id."""

    def __init__(self, env: dict[str, str], logs: Path, conn: psycopg.Connection[Any]) -> None:
        self.env = env
        self.logs = logs
        self.conn = conn
        self.by_id: dict[int, subprocess.Popen[bytes]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> int:
        """Start one and wait (bounded) until it registered; workers start one at a time,
        so the one new row of procrastinate_workers is its own."""
        known = self._ids()
        n = len(self.procs)
        with (self.logs / f"worker-{n}.log").open("wb") as log:
            proc = subprocess.Popen(
                [str(SCRIPT), "worker", "--stall-timeout", str(STALL_TIMEOUT)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        new = wait_for(lambda: self._ids() - known, 30, f"worker {n} registered", self)
        assert len(new) == 1, new
        worker_id = next(iter(new))
        self.by_id[worker_id] = proc
        return worker_id

    def _ids(self) -> set[int]:
        return {r[0] for r in self.conn.execute("SELECT id FROM procrastinate_workers")}

    def kill_busy(self) -> tuple[int, list[int]] | None:
        """SIGKILL a worker that holds running jobs; returns its id and those jobs.

        SIGSTOP first freezes it, so the jobs it holds can be read without racing it to
        finish them. Statements it sent just before may still complete, so the jobs are
        read again once it is dead; if none is left, a replacement worker is started and
        None returned (as when no worker was busy): the caller tries again later.
        """
        busy = self.conn.execute(
            "SELECT DISTINCT worker_id FROM procrastinate_jobs "
            "WHERE status = 'doing' AND worker_id IS NOT NULL"
        ).fetchall()
        for (worker_id,) in busy:
            proc = self.by_id.get(worker_id)
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGSTOP)
            time.sleep(0.3)
            if not self._held(worker_id):
                os.kill(proc.pid, signal.SIGCONT)
                continue
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            time.sleep(0.5)
            held = self._held(worker_id)
            if held:
                return worker_id, held
            self.start()
        return None

    def _held(self, worker_id: int) -> list[int]:
        rows = self.conn.execute(
            "SELECT id FROM procrastinate_jobs WHERE status = 'doing' AND worker_id = %s",
            (worker_id,),
        )
        return [r[0] for r in rows]

    def output(self) -> str:
        return "\n".join(
            f"--- worker {i} ---\n{p.read_text(errors='replace')[-3000:]}"
            for i, p in enumerate(sorted(self.logs.glob("worker-*.log")))
        )

    def stop(self) -> list[int | None]:
        """SIGTERM every live worker; their exit codes (graceful: 0), bounded."""
        live = [p for p in self.procs if p.poll() is None]
        for proc in live:
            proc.send_signal(signal.SIGTERM)
        codes = []
        for proc in live:
            try:
                codes.append(proc.wait(20))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                codes.append(None)
        return codes


def wait_for(check: Callable[[], Any], timeout: float, what: str, workers: Workers) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not reached in {timeout} s\n{workers.output()}")


@pytest.fixture
def workers(tmp_path: Path, pg_url: str, postgres_server_url: str) -> Iterator[Workers]:
    ensure_storage_objects(postgres_server_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        bucket = str(conn.execute("SELECT current_schema()").fetchone()[0])  # type: ignore[index]
        root = tmp_path / "storage"
        root.mkdir()
        world = World(kind="postgres-folder", database_url=pg_url, root=root)
        world.create_table()
        env = world.env(
            # No periodic full pass: it would repair rows that lost their sync, hiding it.
            PORTFOLIO_SYNC_SCHEDULE="0 0 1 1 *",
            PORTFOLIO_SYNC_DEBOUNCE="0.05",
            PORTFOLIO_SYNC_WORKERS="4",
            # The random changes really empty many folders: the streaming guard would hold
            # those writes for an operator (tested in test_safety*), so it is out of the way.
            PORTFOLIO_SYNC_MAX_EMPTY_ROWS="1000000",
        )
        env["TEST_BUCKET"] = bucket
        try:
            with running(Workers(env, tmp_path, conn), world) as group:
                yield group
        finally:
            forget_bucket(postgres_server_url, bucket)


@contextmanager
def running(group: Workers, world: World) -> Iterator[Workers]:
    """`group`, its workers killed (if still running) and `world` closed on exit."""
    try:
        yield group
    finally:
        for proc in group.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        world.close()


def listing(root: Path, key: int) -> list[str]:
    folder = root / str(key)
    names = sorted((p.name for p in folder.iterdir()), key=natural_key) if folder.exists() else []
    return [f"{key}/{name}" for name in names]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_three_workers_converge_without_overlap_and_survive_kill_9(
    workers: Workers, tmp_path: Path
) -> None:
    conn, env = workers.conn, workers.env
    bucket, root = env["TEST_BUCKET"], tmp_path / "storage"
    conn.execute(
        "INSERT INTO portfolios (id, title) SELECT g, 'new' FROM generate_series(1, %s) g",
        (PORTFOLIOS,),
    )
    setup = run("setup", "--storage-objects", bucket, env=env)
    assert setup.returncode == 0, setup.stderr
    for _ in range(3):
        workers.start()

    rng = random.Random(4)
    files: dict[int, list[str]] = defaultdict(list)
    killed: tuple[int, list[int]] | None = None
    began = time.monotonic()
    for i in range(CHANGES):
        key = rng.randint(1, PORTFOLIOS)
        roll = rng.random()
        if roll < 0.45 or (roll < 0.65 and not files[key]):
            name = f"{key}/img-{i}.jpg"
            (root / str(key)).mkdir(exist_ok=True)
            (root / name).write_bytes(JPEG)
            files[key].append(name)
            conn.execute(
                "INSERT INTO storage.objects (bucket_id, name, metadata) VALUES (%s, %s, %s) "
                "ON CONFLICT (bucket_id, name) DO UPDATE SET metadata = EXCLUDED.metadata",
                (bucket, name, '{"size": 64}'),
            )
        elif roll < 0.65:
            name = files[key].pop(rng.randrange(len(files[key])))
            (root / name).unlink()
            conn.execute(
                "DELETE FROM storage.objects WHERE bucket_id = %s AND name = %s", (bucket, name)
            )
        else:
            conn.execute("UPDATE portfolios SET title = %s WHERE id = %s", (f"t{i}", key))
        if killed is None and i >= CHANGES // 3 and i % 25 == 0:
            # taken just before the kill: a successor of an orphan may start any time after
            before_kill = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
            killed = workers.kill_busy()
            killed_at = before_kill
    driven = time.monotonic() - began
    assert killed is not None, "no worker was ever caught holding a running job"
    dead_worker, orphans = killed

    def converged() -> bool:
        waiting = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s "
            "AND status IN ('todo', 'doing')",
            (SYNC_TASK,),
        ).fetchone()
        if waiting != (0,):
            return False
        rows = dict(conn.execute("SELECT id, images FROM portfolios").fetchall())
        return all(rows[key] == listing(root, key) for key in range(1, PORTFOLIOS + 1))

    wait_for(converged, 60, "every portfolio equal to its folder", workers)
    settled = time.monotonic() - began

    # Every job the killed worker held ran again to success: retried itself, or, when a
    # job of its key was already waiting (procrastinate cannot put the stalled one back
    # then and fails it), that waiting job started after the kill and succeeded. A
    # failed orphan without such a successor is a lost sync.
    for job in orphans:
        status, key = conn.execute(
            "SELECT status::text, args->>'key' FROM procrastinate_jobs WHERE id = %s", (job,)
        ).fetchone()  # type: ignore[misc]
        if status == "succeeded":
            retried = conn.execute(
                "SELECT count(*) FROM procrastinate_events WHERE job_id = %s "
                "AND type = 'deferred_for_retry'",
                (job,),
            ).fetchone()
            assert retried is not None and retried[0] >= 1, (job, key)
            continue
        assert status == "failed", (job, key, status)
        successor = conn.execute(
            "SELECT count(*) FROM procrastinate_jobs j JOIN procrastinate_events e "
            "ON e.job_id = j.id AND e.type = 'started' AND e.at > %s "
            "WHERE j.args->>'key' = %s AND j.id <> %s AND j.status = 'succeeded'",
            (killed_at, key, job),
        ).fetchone()
        assert successor is not None and successor[0] >= 1, f"orphan {job} of {key} lost"

    # no two runs of one key overlapped: intervals from procrastinate's own events
    events = conn.execute(
        "SELECT j.id, j.lock, e.type::text, e.at FROM procrastinate_events e "
        "JOIN procrastinate_jobs j ON j.id = e.job_id WHERE j.queue_name = %s "
        "AND e.type IN ('started', 'succeeded', 'failed', 'deferred_for_retry', 'aborted') "
        "ORDER BY e.id",
        (QUEUE,),
    ).fetchall()
    runs = job_runs(events)
    by_lock: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for lock, start, end in runs:
        by_lock[lock].append((start, end))
    for lock, spans in by_lock.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert start >= end, f"two runs of {lock} overlapped: {spans}"
    # ... and row writes agree (the full pass is not a per-key run; its writes are CAS)
    writes = conn.execute(
        "SELECT key, at, duration_ms FROM portfolio_sync_history WHERE trigger <> 'schedule' "
        "ORDER BY key, at"
    ).fetchall()
    last: dict[str, datetime] = {}
    for key, at, duration in writes:
        start = at - timedelta(milliseconds=duration)
        assert key not in last or start >= last[key] - timedelta(milliseconds=5), key
        last[key] = at

    jobs = conn.execute(
        "SELECT count(*), count(DISTINCT args->>'key') FROM procrastinate_jobs "
        "WHERE task_name = %s",
        (SYNC_TASK,),
    ).fetchone()
    assert jobs is not None
    print(
        f"\n{CHANGES} changes over {PORTFOLIOS} portfolios driven in {driven:.1f} s, all rows "
        f"converged {settled:.1f} s after the first change with 3 workers (one killed); "
        f"{jobs[0]} sync jobs ({jobs[0] / jobs[1]:.1f} per key), {len(runs)} runs, "
        f"no periodic pass; worker {dead_worker} killed holding {len(orphans)} job(s)"
    )
    codes = workers.stop()
    assert len(codes) >= 2 and set(codes) == {0}, codes  # graceful SIGTERM


@pytest.mark.timeout(120)
def test_periodic_pass_runs_once_per_tick_across_workers(workers: Workers) -> None:
    """Three workers, a full pass every 2 s: each tick is one job, started once."""
    workers.env["PORTFOLIO_SYNC_SCHEDULE"] = "*/2 * * * * *"  # seconds first
    setup = run("setup", env=workers.env)
    assert setup.returncode == 0, setup.stderr
    for _ in range(3):
        workers.start()

    def passes() -> list[tuple[str, int, int]]:
        return workers.conn.execute(
            "SELECT args->>'timestamp', id, (SELECT count(*) FROM procrastinate_events e "
            "WHERE e.job_id = j.id AND e.type = 'started') FROM procrastinate_jobs j "
            "WHERE task_name = %s AND status = 'succeeded'",
            (PASS_TASK,),
        ).fetchall()

    wait_for(lambda: len(passes()) >= 3, 60, "three periodic passes", workers)
    codes = workers.stop()
    found = passes()
    every = workers.conn.execute(
        "SELECT args->>'timestamp', count(*) FROM procrastinate_jobs WHERE task_name = %s "
        "GROUP BY 1",
        (PASS_TASK,),
    ).fetchall()
    assert all(n == 1 for _, n in every), every  # one job per tick
    assert all(started == 1 for _, _, started in found), found  # run once
    assert set(codes) == {0}, codes


def job_runs(events: list[tuple[int, str, str, datetime]]) -> list[tuple[str, datetime, datetime]]:
    """(lock, start, end) of every run: a 'started' event up to the job's next end event.

    A run still going when the events were read (a periodic pass, say) ends "never", so
    it still counts as overlapping anything of its lock that started after it.
    """
    open_: dict[int, tuple[str, datetime]] = {}
    runs = []
    for job_id, lock, kind, at in events:
        if kind == "started":
            open_[job_id] = (lock, at)
        elif job_id in open_:
            lock_, start = open_.pop(job_id)
            runs.append((lock_, start, at))
    never = datetime.max.replace(tzinfo=UTC)
    runs += [(lock, start, never) for lock, start in open_.values()]
    return runs


@pytest.fixture
def db_workers(tmp_path: Path, pg_url: str, postgres_server_url: str) -> Iterator[Workers]:
    """Workers on `supabase-db://<bucket>` storage: the table `portfolios` with keys 1-20,
    a bucket of this test's own in the shared `storage.objects` (removed afterwards)."""
    ensure_storage_objects(postgres_server_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        bucket = f"w-{conn.execute('SELECT current_schema()').fetchone()[0]}"  # type: ignore[index]
        world = World(kind="postgres-supabase-db", database_url=pg_url, bucket=bucket)
        world.create_table()
        conn.execute(
            "INSERT INTO portfolios (id, title, images) SELECT g, 't', '{}' "
            "FROM generate_series(1, 20) g"
        )
        env = world.env(PORTFOLIO_SYNC_SCHEDULE="0 0 1 1 *", PORTFOLIO_SYNC_DEBOUNCE="0.05")
        env["TEST_BUCKET"] = bucket
        with running(Workers(env, tmp_path, conn), world) as group:
            yield group


@pytest.mark.timeout(120)
def test_a_worker_syncs_uploads_from_storage_objects_with_the_supabase_db_backend(
    db_workers: Workers,
) -> None:
    """Supabase without S3 keys: `supabase-db://BUCKET` storage, `setup` (the bucket's
    trigger is installed without --storage-objects), one `worker`. Uploads, a move and a
    deletion are `storage.objects` rows changed in transactions, as Supabase Storage
    writes them; the rows follow, each job in one attempt (no lag re-check)."""
    conn, env, bucket = db_workers.conn, db_workers.env, db_workers.env["TEST_BUCKET"]
    setup = run("setup", env=env)
    assert setup.returncode == 0, setup.stderr
    assert f"storage.objects for bucket {bucket!r}" in setup.stdout
    db_workers.start()
    expected: dict[int, list[str]] = {key: [] for key in range(1, 21)}
    with conn.transaction():  # one upload of several files
        for key in (1, 2, 3):
            for name in ("b 2.jpg", "a+1.jpg", "it's.png"):
                world_put(conn, bucket, f"{key}/{name}")
                expected[key].append(f"{key}/{name}")
    world_put(conn, bucket, "4/cover.jpg")
    conn.execute(
        "UPDATE storage.objects SET name = '5/moved.jpg' WHERE bucket_id = %s "
        "AND name = '4/cover.jpg'",
        (bucket,),
    )
    expected[5] = ["5/moved.jpg"]
    conn.execute(
        "DELETE FROM storage.objects WHERE bucket_id = %s AND name = '3/b 2.jpg'", (bucket,)
    )
    expected[3].remove("3/b 2.jpg")
    want = {key: sorted(paths, key=natural_key) for key, paths in expected.items()}

    def synced() -> bool:
        return dict(conn.execute("SELECT id, images FROM portfolios").fetchall()) == want

    wait_for(synced, 60, "rows equal to storage.objects", db_workers)
    retried = conn.execute(
        "SELECT count(*) FROM procrastinate_events e JOIN procrastinate_jobs j "
        "ON j.id = e.job_id WHERE j.task_name = %s AND e.type = 'deferred_for_retry'",
        (SYNC_TASK,),
    ).fetchone()
    assert retried == (0,), db_workers.output()
    assert db_workers.stop() == [0]


def world_put(conn: psycopg.Connection[Any], bucket: str, name: str) -> None:
    conn.execute(
        "INSERT INTO storage.objects (bucket_id, name, metadata) VALUES (%s, %s, %s)",
        (bucket, name, object_metadata(64)),
    )


def test_worker_needs_postgresql(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTFOLIO_SYNC_")}
    env["PORTFOLIO_SYNC_DATABASE_URL"] = f"sqlite:///{tmp_path / 'app.db'}"
    proc = run("worker", env=env)
    assert proc.returncode == 2
    assert "needs a PostgreSQL database" in proc.stderr


def test_setup_prints_installs_and_uninstalls_on_postgresql(
    tmp_path: Path, pg_url: str, postgres_server_url: str
) -> None:
    root = tmp_path / "storage"
    root.mkdir()
    world = World(kind="postgres-folder", database_url=pg_url, root=root)
    try:
        world.create_table()
        env = world.env()
        printed = run("setup", "--print-sql", env=env)
        assert printed.returncode == 0, printed.stderr
        assert "CREATE OR REPLACE FUNCTION" in printed.stdout
        assert "SECURITY DEFINER SET search_path" in printed.stdout
        first = run("setup", env=env)
        assert first.returncode == 0, first.stderr
        assert "procrastinate schema created" in first.stdout
        assert "installed job triggers on portfolios" in first.stdout
        again = run("setup", env=env)
        assert again.returncode == 0 and "procrastinate schema present" in again.stdout
        removing = run("setup", "--uninstall", "--print-sql", env=env).stdout
        assert removing.count("DROP TRIGGER") == 2 and removing.count("DROP FUNCTION") == 1
        gone = run("setup", "--uninstall", env=env)
        assert gone.returncode == 0 and "removed 2 trigger(s) and 1 function(s)" in gone.stdout
        missing = run("setup", "--storage-objects", "nope", env=world.env())
        if not _has_storage_objects(postgres_server_url):
            assert missing.returncode == 1 and "storage.objects" in missing.stderr
    finally:
        world.close()


def _has_storage_objects(server_url: str) -> bool:
    with psycopg.connect(server_url) as conn:
        row = conn.execute("SELECT to_regclass('storage.objects') IS NOT NULL").fetchone()
    return bool(row and row[0])
