# ruff: noqa: RUF001
"""Full pass on S3 (moto): storage requests counted at the server side of the wire.

moto runs in this process (`ThreadedMotoServer`) so that the bucket can be filled through
moto's backend in a second; 20,000 PUTs over HTTP take minutes. Every request of the
measured jobs goes through `tests.servers.CountingProxy`, which counts what the client
really sent (retries included).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from context import Context, Row, s3_request_bound
from data import JPEG, Spec, Table, Tree, objects, plan_tree, sqlite_url
from measure import Series, Stat, ratio, rounds, run_child, run_command

BUCKET = "portfolio-sync-bench"
CREDENTIALS = {
    "aws_access_key_id": "testing",
    "aws_secret_access_key": "testing",
    "aws_region": "us-east-1",
}


@contextmanager
def moto_bucket(tree: Tree) -> Iterator[tuple[str, int]]:
    """moto in this process, bucket `BUCKET` holding every object of `tree` (filled through
    moto's backend); yields its endpoint and the object count."""
    from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
        backend.create_bucket(BUCKET, "us-east-1")
        count = 0
        for path in objects(tree):
            backend.put_object(BUCKET, path, JPEG)
            count += 1
        yield f"http://{host}:{port}", count
    finally:
        server.stop()
        time.sleep(0.1)


def s3(ctx: Context) -> None:
    from tests.servers import CountingProxy

    portfolios = ctx.sizes.s3
    spec = Spec(portfolios=portfolios, images=ctx.sizes.images)
    tree = plan_tree(spec)
    proxy: CountingProxy | None = None
    table: Table | None = None
    with moto_bucket(tree) as (endpoint, count):
        try:
            proxy = CountingProxy(endpoint)
            proxy.start()
            table = Table(url=sqlite_url(ctx.work / "s3.db"), tree=tree)
            table.create("synced")
            base = {
                "database_url": table.url,
                "storage_url": f"s3://{BUCKET}",
                "s3_endpoint": proxy.endpoint,
                "pythonpath": ctx.pythonpath,
                **CREDENTIALS,
            }
            counts: dict[str, list[int]] = {}

            def counted(name: str, job: Any) -> Any:
                def run() -> dict[str, Any]:
                    assert proxy is not None
                    proxy.reset()
                    result: dict[str, Any] = job()
                    result["requests"] = proxy.count()
                    counts.setdefault(name, []).append(result["requests"])
                    return result

                return run

            def child(kind: str) -> Any:
                return lambda: run_child({**base, "kind": kind}, cwd=ctx.work)

            # Request counts are exact, not timings. moto answers a page in ~0.5 s and scans
            # the whole bucket for every prefix listing, so: ours and the floor interleaved for
            # the timing, and the seed (one request per portfolio) once, on a sample at the
            # default scale.
            jobs = {
                "ours": counted("ours", child("ours")),
                "floor": counted("floor", child("floor")),
            }
            series = rounds(jobs, runs=ctx.runs, warmup=0, label="s3")
            sample = ctx.sizes.s3_seed_sample or portfolios
            seed_task = {**base, "kind": "seed", "limit": sample}
            once = {"seed": counted("seed", lambda: run_child(seed_task, cwd=ctx.work))}
            rclone_argv = _rclone_argv(ctx, proxy.endpoint)
            if rclone_argv is not None:
                env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
                once["rclone"] = counted("rclone", lambda: run_command(rclone_argv, env=env))
            extra = rounds(once, runs=1, warmup=0, label="s3 (counts)")
            series.update(extra)
            bound = s3_request_bound(count)
            setup = f"SQLite + S3 (moto), {portfolios} × {spec.images}"
            scenario = f"full pass on S3, {count} objects"
            ours = Stat.of([float(c) for c in counts["ours"][-ctx.runs :]])
            ctx.add(
                Row(
                    scenario,
                    setup,
                    "storage requests (ours)",
                    ours,
                    "requests",
                    f"≤ ⌈{count}/1000⌉ + 2 = {bound}",
                    ours.median <= bound,
                )
            )
            seed_count = counts["seed"][-1]
            per_portfolio = seed_count / sample
            ctx.add(
                Row(
                    scenario,
                    setup,
                    "storage requests (seed)",
                    round(per_portfolio * portfolios),
                    "requests",
                    f"≥ {portfolios} (one per portfolio)",
                    per_portfolio * portfolios >= portfolios,
                    "1 run (the count is exact)"
                    + (
                        f"; measured on {sample} portfolios: {seed_count} requests, "
                        f"{per_portfolio:.2f} per portfolio"
                        if sample < portfolios
                        else ""
                    ),
                )
            )
            ctx.add(
                Row(scenario, setup, "storage requests (floor)", counts["floor"][-1], "requests")
            )
            if "rclone" in counts:
                ctx.add(
                    Row(
                        scenario,
                        setup,
                        "storage requests (rclone lsjson -R --fast-list)",
                        counts["rclone"][-1],
                        "requests",
                    )
                )
            r = ratio(series["ours"], series["floor"])
            ctx.add(
                Row(scenario, setup, "time ÷ floor", r, "×", "", None, "moto answers ~0.4 s/page")
            )
            for name, s in series.items():
                figure = f"time: {name}"
                if name == "seed" and sample < portfolios:
                    figure += f", measured on {sample} of the {portfolios} portfolios"
                ctx.add(Row(scenario, setup, figure, _stat(s), "s"))
            ctx.raw["s3"] = {
                "objects": count,
                "bound": bound,
                "counts": counts,
                **{n: s.results for n, s in series.items()},
            }
        finally:
            if proxy is not None:
                proxy.stop()
            if table is not None:
                table.close()


def _stat(series: Series) -> Stat:
    return series.stat()


def _rclone_argv(ctx: Context, endpoint: str) -> list[str] | None:
    if ctx.rclone is None:
        return None
    remote = (
        f":s3,provider=Other,endpoint='{endpoint}',access_key_id=testing,"
        "secret_access_key=testing,region=us-east-1,force_path_style=true:" + BUCKET
    )
    return [
        ctx.rclone,
        "lsjson",
        "-R",
        "--fast-list",
        "--files-only",
        "--no-modtime",
        "--no-mimetype",
        remote,
    ]
