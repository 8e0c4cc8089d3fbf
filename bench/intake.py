"""Webhook intake: S3 event notifications paced at a fixed rate against a real `serve`.

What the issue measured: S3 storage webhooks (Bearer auth) at a fixed rate from 64
keep-alive connections, 300 keys, 1 in 10 events naming a new object. Each setup is a
real `portfolio-sync serve` (product defaults, the cron moved away, folder watcher off so
only the webhooks bring work): PostgreSQL + S3 (moto in its own process), PostgreSQL + a
local folder (the same queue path without moto's own slowness) and, as the reference,
SQLite + a local folder (the in-process queue). Setups run interleaved, round by round.

A round: the new objects of the round are written first (S3 sends its event after the
object exists), then `loadgen` sends the events open-loop (latency from the moment each
request was scheduled, so a server that falls behind shows it in full). Afterwards every
row must come to hold every new object of its key (the expectations of a 202 kept), within
a bounded time that is reported as "converged after the last request".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import loadgen
from context import Context, Row
from data import JPEG, PostgresPlace, Spec, Table, Tree, build_tree, plan_tree, sqlite_url
from live import Poller, Server, serve
from measure import Stat

KEYS = 300
IMAGES = 3
CONNECTIONS = 64
NEW_EVERY = 10  # one event in ten names a new object
SECRET = "bench-intake-secret"
BUCKET = "portfolio-sync-intake"


@dataclass(slots=True)
class Setup:
    name: str
    table: Table
    env: dict[str, str]
    put: Callable[[list[str]], None]  # write new objects (paths relative to the root)
    runs: list[dict[str, Any]] = field(default_factory=list)
    server: Server | None = None


def s3_event(bucket: str, path: str) -> bytes:
    """One S3 ObjectCreated:Put notification, as S3 posts it (the key URL-encoded)."""
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-12-01T10:15:30.123Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(path, safe="/"), "size": len(JPEG)},
        },
    }
    return json.dumps({"Records": [record]}).encode()


def workload(
    tree_names: Callable[[int], list[str]], *, total: int, tag: str, seed: int
) -> tuple[list[loadgen.Request], dict[int, set[str]]]:
    """`total` events on random keys, one in NEW_EVERY naming a new object; returns the
    requests and, per key, the new paths that its row must come to hold."""
    rng = random.Random(seed)
    requests: list[loadgen.Request] = []
    new: dict[int, set[str]] = {}
    for index in range(total):
        key = rng.randrange(1, KEYS + 1)
        if index % NEW_EVERY == 0:
            path = f"{key}/new-{tag}-{index}.jpg"
            new.setdefault(key, set()).add(path)
        else:
            path = f"{key}/{rng.choice(tree_names(key))}"
        requests.append(("POST", "/hooks/storage", s3_event(BUCKET, path)))
    return requests, new


def converge(table: Table, new: dict[int, set[str]], *, timeout: float) -> float | None:
    """Seconds until every row holds its new paths, None if not within `timeout`."""
    poller = Poller(table)
    started = time.perf_counter()
    waiting = dict(new)
    try:
        while time.perf_counter() - started < timeout:
            rows = poller.rows(sorted(waiting))
            waiting = {k: p for k, p in waiting.items() if not p <= rows.get(k, set())}
            if not waiting:
                return time.perf_counter() - started
            time.sleep(0.02)
    finally:
        poller.close()
    return None


def _local_put(root: Path) -> Callable[[list[str]], None]:
    def put(paths: list[str]) -> None:
        for path in paths:
            target = root / path
            target.parent.mkdir(exist_ok=True)
            target.write_bytes(JPEG)

    return put


@contextlib.contextmanager
def _moto(tree_objects: list[str]) -> Iterator[tuple[str, Callable[[list[str]], None]]]:
    from tests.servers import MotoServer, S3Target

    server = MotoServer()
    server.start()
    target = S3Target(endpoint=server.endpoint, bucket=BUCKET)
    pool = ThreadPoolExecutor(8)
    try:
        target.create_bucket()

        def put(paths: list[str]) -> None:
            list(pool.map(lambda p: target.put(p, JPEG), paths))

        put(tree_objects)
        yield server.endpoint, put
    finally:
        pool.shutdown()
        target.close()
        server.stop()


def _table(ctx: Context, stack: contextlib.ExitStack, tree: Tree, *, postgres: bool) -> Table:
    """The tree's table, in sync, in a new PostgreSQL schema or a SQLite file."""
    if postgres:
        assert ctx.pg_server is not None
        place = PostgresPlace(server_url=ctx.pg_server)
        place.create()
        ctx.places.append(place)
        url = place.url
    else:
        url = sqlite_url(ctx.work / f"intake-{tree.root.name}.db")
    table = Table(url=url, tree=tree)
    table.create("synced")
    stack.callback(table.close)
    return table


def intake(ctx: Context) -> None:
    rate = ctx.sizes.intake_rate
    seconds = ctx.sizes.intake_seconds
    spec = Spec(portfolios=KEYS, images=IMAGES)
    with contextlib.ExitStack() as stack:
        setups: list[Setup] = []
        if ctx.pg_server:
            tree = plan_tree(spec)
            objects = [f"{k}/{n}" for k in tree.keys for n in tree.names(k)]
            endpoint, put = stack.enter_context(_moto(objects))
            setups.append(
                Setup(
                    "Postgres + S3 (moto)",
                    _table(ctx, stack, tree, postgres=True),
                    {
                        "PORTFOLIO_SYNC_STORAGE_URL": f"s3://{BUCKET}",
                        "PORTFOLIO_SYNC_S3_ENDPOINT": endpoint,
                        "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_REGION": "us-east-1",
                    },
                    put,
                )
            )
            folder = build_tree(spec, ctx.work / "tree-intake-pg")
            table = _table(ctx, stack, folder, postgres=True)
            setups.append(Setup("Postgres + folder", table, {}, _local_put(folder.root)))
            if ctx.baseline_src:
                folder = build_tree(spec, ctx.work / "tree-intake-base")
                table = _table(ctx, stack, folder, postgres=True)
                env = {"PYTHONPATH": ctx.baseline_src}
                name = "Postgres + folder, baseline src"
                setups.append(Setup(name, table, env, _local_put(folder.root)))
        folder = build_tree(spec, ctx.work / "tree-intake-lite")
        table = _table(ctx, stack, folder, postgres=False)
        setups.append(Setup("SQLite + folder", table, {}, _local_put(folder.root)))
        for setup in setups:
            env = {"PORTFOLIO_SYNC_WEBHOOK_SECRET": SECRET, **setup.env}
            label = "intake-" + "".join(c for c in setup.name.lower() if c.isalnum())
            setup.server = stack.enter_context(
                serve(ctx, setup.table, label, env=env, args=("--no-watch",))
            )
        for index in range(ctx.warmup + ctx.runs):
            warm = index < ctx.warmup
            for setup in setups:
                result = _round(setup, rate=rate, seconds=2.0 if warm else seconds, index=index)
                print(
                    f"    intake {setup.name} {'warm-up' if warm else 'run'}: "
                    f"{result['accepted_per_s']:.0f} req/s accepted of {rate:.0f}, "
                    f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
                    f"5xx {result['server_errors']}, converged "
                    f"{result['converge_s']} s after",
                    flush=True,
                )
                if not warm:
                    setup.runs.append(result)
    scenario = (
        f"webhook intake: S3 events paced at {rate:.0f} req/s for {seconds:.0f} s, "
        f"{CONNECTIONS} connections, {KEYS} keys, 1 in {NEW_EVERY} a new object"
    )
    for setup in setups:
        _rows(ctx, scenario, setup, rate)
        ctx.raw[f"intake/{setup.name}"] = setup.runs


def _round(setup: Setup, *, rate: float, seconds: float, index: int) -> dict[str, Any]:
    assert setup.server is not None
    table = setup.table
    requests, new = workload(
        table.tree.names, total=int(rate * seconds), tag=f"r{index}", seed=index
    )
    setup.put(sorted(p for paths in new.values() for p in paths))
    port = int(setup.server.url.rpartition(":")[2])
    outcome = asyncio.run(
        loadgen.run(
            host="127.0.0.1",
            port=port,
            requests=requests,
            rate=rate,
            connections=CONNECTIONS,
            headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
        )
    )
    result: dict[str, Any] = dict(outcome.summary())
    converged = converge(table, new, timeout=120.0)
    result["converge_s"] = None if converged is None else round(converged, 3)
    result["keys_with_new"] = len(new)
    return result


def _rows(ctx: Context, scenario: str, setup: Setup, rate: float) -> None:
    runs = setup.runs
    accepted = Stat.of([r["accepted_per_s"] for r in runs])
    p50 = Stat.of([r["p50_ms"] for r in runs])
    p99 = Stat.of([r["p99_ms"] for r in runs])
    errors = sum(r["server_errors"] + r["transport_errors"] + r["other_status"] for r in runs)
    lost = sum(1 for r in runs if r["converge_s"] is None)
    postgres = setup.name.startswith("Postgres") and "baseline" not in setup.name
    problems = []
    if errors:
        problems.append(f"{errors} requests not accepted (5xx, other status or transport)")
    if lost:
        problems.append(f"{lost} run(s) where some row never got its new objects")
    note = "; ".join(problems)
    met_rate = accepted.median >= min(1000.0, 0.98 * rate)
    ctx.add(
        Row(
            scenario,
            setup.name,
            "accepted",
            accepted,
            "req/s",
            "≥ 1,000" if postgres else "(reference)",
            (met_rate and not errors) if postgres else None,
            note,
        )
    )
    ctx.add(Row(scenario, setup.name, "latency p50", p50, "ms"))
    ctx.add(
        Row(
            scenario,
            setup.name,
            "latency p99",
            p99,
            "ms",
            "< 100" if postgres else "(reference)",
            p99.median < 100 if postgres else None,
        )
    )
    converge_values = [r["converge_s"] for r in runs if r["converge_s"] is not None]
    if converge_values:
        ctx.add(
            Row(
                scenario,
                setup.name,
                "rows converged after the last request",
                Stat.of(converge_values),
                "s",
                "all rows",
                not lost,
            )
        )
