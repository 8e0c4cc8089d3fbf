"""Event scenarios against a real `portfolio-sync serve` subprocess (folder watcher).

- events → row: uploads at a fixed rate into random portfolios; the latency of each is
  the time from just before its file is written until a separate database connection,
  polling in a tight loop, sees the path in the row.
- burst: 1,000 uploads into one folder as fast as possible; syncs of that key are counted
  with `/metrics` (`portfolio_sync_syncs_total`, nothing else is happening meanwhile), and
  convergence is the time from the last upload until the row holds all 1,000.

Uploads are written under a hidden temporary name and renamed into place, as upload
tools do, so the watcher never sees a half-written image. The server runs with the
product defaults (debounce 0.25 s, 4 workers) except the cron schedule, moved out of the
way so no full pass runs during a measurement.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from context import Context, Dataset, Row
from data import JPEG, Table
from measure import Stat, clean_env

BURST_KEYS_FROM = 900_001


def portfolio_sync_script() -> str:
    """The `portfolio-sync` console script of the interpreter running the bench."""
    import sys

    script = Path(sys.executable).parent / "portfolio-sync"
    return str(script)


def product_env(ctx: Context, table: Table) -> dict[str, str]:
    """Environment for a product subprocess on `table` and its tree: product defaults,
    except the cron schedule, moved out of the way so no full pass runs meanwhile."""
    env = clean_env()
    env.pop("PYTHONPATH", None)
    if ctx.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(ctx.pythonpath)
    env.update(
        {
            "PORTFOLIO_SYNC_DATABASE_URL": table.url,
            "PORTFOLIO_SYNC_STORAGE_URL": str(table.tree.root),
            "PORTFOLIO_SYNC_SCHEDULE": "0 0 1 1 *",  # no cron pass during a measurement
        }
    )
    return env


def stop(*procs: subprocess.Popen[bytes], timeout: float = 30.0) -> list[int | None]:
    """One SIGTERM to each, then wait for each (bounded): the exit codes, None for a
    process that had to be killed."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            codes.append(None)
    return codes


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.client = httpx.Client(base_url=self.url, timeout=10.0)

    def metric(self, name: str) -> float:
        total = 0.0
        for line in self.client.get("/metrics").text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                series, _, value = line.rpartition(" ")
                if series.partition("{")[0] == name:
                    total += float(value)
        return total

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if self.client.get("/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        # the start-up catch-up pass must be over before anything is measured
        while time.monotonic() < deadline:
            if self.metric("portfolio_sync_full_passes_total") >= 1:
                return
            time.sleep(0.1)
        raise RuntimeError(f"serve not ready:\n{self.log.read_text()[-3000:]}")


@contextmanager
def serve(
    ctx: Context,
    table: Table,
    label: str,
    *,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[Server]:
    """A `portfolio-sync serve` on `table` (product defaults, cron moved away; `env`
    overrides, `args` are added to the command line), ready once its catch-up pass ran."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    environ = {**product_env(ctx, table), **(env or {})}
    log = ctx.work / f"serve-{label}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [portfolio_sync_script(), "serve", "--port", str(port), *args],
            env=environ,
            cwd=ctx.work,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(proc, port, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.client.close()
        stop(proc)


def upload(root: Path, key: int, name: str) -> None:
    folder = root / str(key)
    folder.mkdir(exist_ok=True)
    tmp = folder / f".upload-{name}"
    tmp.write_bytes(JPEG)
    os.rename(tmp, folder / name)


class Poller:
    """A separate connection that re-reads the rows of keys awaiting an image."""

    def __init__(self, table: Table) -> None:
        self.table = table
        if table.postgres:
            import psycopg
            from tests.servers import normalize_postgres_url

            self.pg: Any = psycopg.connect(normalize_postgres_url(table.url), autocommit=True)
            self.lite: sqlite3.Connection | None = None
        else:
            path = table.url.removeprefix("sqlite:///")
            self.lite = sqlite3.connect(path, timeout=30, check_same_thread=False)
            self.pg = None

    def rows(self, keys: list[int]) -> dict[int, set[str]]:
        marks = ",".join(str(int(k)) for k in keys)
        sql = f"SELECT id, images FROM portfolios WHERE id IN ({marks})"
        if self.lite is not None:
            records = self.lite.execute(sql).fetchall()
        else:
            records = self.pg.execute(sql).fetchall()
        found: dict[int, set[str]] = {}
        for key, images in records:
            value = json.loads(images) if isinstance(images, str) else images
            found[int(key)] = set(value or ())
        return found

    def close(self) -> None:
        if self.lite is not None:
            self.lite.close()
        if self.pg is not None:
            self.pg.close()


def events_run(
    table: Table,
    keys: list[int],
    *,
    rate: float,
    seconds: float,
    tag: str,
    seed: int,
    put: Callable[[int, str], None] | None = None,
) -> dict[str, Any]:
    """Uploads at `rate` per second for `seconds` into random `keys`; each one's latency
    from just before `put(key, name)` (default: `upload` into the tree) until the poller
    sees its path in the row."""
    rng = random.Random(seed)
    root = table.tree.root
    put = put or (lambda key, name: upload(root, key, name))
    pending: dict[str, tuple[int, float]] = {}
    latencies: list[float] = []
    lock = threading.Lock()
    done = threading.Event()
    total = int(rate * seconds)

    def writer() -> None:
        start = time.perf_counter()
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            key = rng.choice(keys)
            name = f"ev-{tag}-{i}.jpg"
            with lock:
                pending[f"{key}/{name}"] = (key, time.perf_counter())
            put(key, name)
        done.set()

    poller = Poller(table)
    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    deadline: float | None = None
    try:
        while True:
            with lock:
                waiting = dict(pending)
            if not waiting:
                if done.is_set():
                    break
                time.sleep(0.0005)
                continue
            rows = poller.rows(sorted({k for k, _ in waiting.values()}))
            now = time.perf_counter()
            time.sleep(0.001)  # ~1 ms resolution; a busier loop would compete with the server
            with lock:
                for path, (key, written) in waiting.items():
                    if path in rows.get(key, ()):
                        latencies.append(now - written)
                        del pending[path]
            if done.is_set():
                deadline = deadline or time.monotonic() + 30
                if time.monotonic() > deadline:
                    break
    finally:
        thread.join(timeout=seconds + 30)
        poller.close()
    latencies.sort()
    return {
        "uploads": total,
        "seen": len(latencies),
        "lost": total - len(latencies),
        "p50_ms": 1000 * _pct(latencies, 50),
        "p99_ms": 1000 * _pct(latencies, 99),
        "max_ms": 1000 * (latencies[-1] if latencies else float("nan")),
    }


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    index = min(len(values) - 1, max(0, round(pct / 100 * len(values) + 0.5) - 1))
    return values[index]


def _burst_run(server: Server, table: Table, key: int, count: int) -> dict[str, Any]:
    root = table.tree.root
    poller = Poller(table)
    try:
        before = server.metric("portfolio_sync_syncs_total")
        first = time.perf_counter()
        names = [f"burst-{i}.jpg" for i in range(count)]
        for name in names:
            upload(root, key, name)
        last = time.perf_counter()
        wanted = {f"{key}/{name}" for name in names}
        converged = None
        while time.perf_counter() - last < 60:
            if poller.rows([key]).get(key, set()) >= wanted:
                converged = time.perf_counter()
                break
            time.sleep(0.001)
        time.sleep(2.0)  # let any trailing follow-up sync run before counting
        syncs = server.metric("portfolio_sync_syncs_total") - before
    finally:
        poller.close()
    return {
        "upload_seconds": last - first,
        "converge_after_last_s": (converged - last) if converged else float("nan"),
        "syncs": syncs,
    }


def live(ctx: Context, dataset: Dataset) -> None:
    rate = 200.0
    seconds = ctx.sizes.events_seconds
    keys = list(dataset.tree.keys)
    for setup, table in dataset.tables.items():
        burst_key = BURST_KEYS_FROM
        table.insert_empty(range(BURST_KEYS_FROM, BURST_KEYS_FROM + 2 * (ctx.warmup + ctx.runs)))
        with serve(ctx, table, setup) as server:
            runs: list[dict[str, Any]] = []
            for index in range(ctx.warmup + ctx.runs):
                warm = index < ctx.warmup
                result = events_run(
                    table,
                    keys,
                    rate=rate,
                    seconds=min(2.0, seconds) if warm else seconds,
                    tag=f"{setup}-{index}",
                    seed=index,
                )
                print(
                    f"    events {setup} {'warm-up' if warm else 'run'}: "
                    f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                    f"lost {result['lost']}",
                    flush=True,
                )
                if not warm:
                    runs.append(result)
            p50 = Stat.of([r["p50_ms"] for r in runs])
            p99 = Stat.of([r["p99_ms"] for r in runs])
            lost = sum(r["lost"] for r in runs)
            scenario = f"events → row, {rate:.0f} uploads/s for {seconds:.0f} s"
            where = f"{setup} + folder (watcher), {len(keys)} portfolios"
            local = setup == "SQLite"
            ctx.add(Row(scenario, where, "latency p50", p50, "ms"))
            ctx.add(
                Row(
                    scenario,
                    where,
                    "latency p99",
                    p99,
                    "ms",
                    "< 250" if local else "(reported)",
                    (p99.median < 250 and lost == 0) if local else None,
                    f"{lost} uploads never reached the row" if lost else "",
                )
            )
            bursts: list[dict[str, Any]] = []
            for index in range(ctx.warmup + ctx.runs):
                result = _burst_run(server, table, burst_key, 1000)
                burst_key += 1
                warm = index < ctx.warmup
                print(
                    f"    burst {setup} {'warm-up' if warm else 'run'}: "
                    f"{result['syncs']:.0f} syncs, converged "
                    f"{result['converge_after_last_s']:.3f} s after the last upload "
                    f"(uploads took {result['upload_seconds']:.2f} s)",
                    flush=True,
                )
                if not warm:
                    bursts.append(result)
            syncs = Stat.of([b["syncs"] for b in bursts])
            converge = Stat.of([b["converge_after_last_s"] for b in bursts])
            scenario = "burst: 1,000 uploads into one folder"
            where = f"{setup} + folder (watcher)"
            ctx.add(
                Row(scenario, where, "syncs of that key", syncs, "syncs", "≤ 5", syncs.median <= 5)
            )
            ctx.add(
                Row(
                    scenario,
                    where,
                    "converged after the last upload",
                    converge,
                    "s",
                    "< 1",
                    converge.median < 1.0,
                    f"uploads took {statistics.median(b['upload_seconds'] for b in bursts):.2f} s",
                )
            )
            ctx.raw[f"events/{setup}"] = runs
            ctx.raw[f"burst/{setup}"] = bursts
        for key in range(BURST_KEYS_FROM, burst_key):  # the next backend starts clean
            shutil.rmtree(table.tree.root / str(key), ignore_errors=True)
