# ruff: noqa: RUF001
"""Full pass on S3 at scale: parallel key ranges against a 30 ms-per-request endpoint.

The bucket is `listserver.ListServer` (a list-only S3 endpoint, a bisect per page, 30 ms
of latency per request), because moto scans the whole bucket for every page. Interleaved
round by round: the floor (one sequential paginated obstore listing plus the table's
SELECT, as in the other S3 rows) and our full pass (product defaults: the listing turns
into parallel key ranges after its first pages). Requests are counted by the server.
"""

from __future__ import annotations

import math
from typing import Any

from context import Context, Row
from data import Spec, Table, objects, plan_tree, sqlite_url
from listserver import ListServer
from measure import ratio, rounds, run_child
from s3bench import BUCKET, CREDENTIALS

LATENCY = 0.030


def s3scale(ctx: Context) -> None:
    portfolios = ctx.sizes.s3_scale
    spec = Spec(portfolios=portfolios, images=ctx.sizes.images)
    tree = plan_tree(spec)
    keys = list(objects(tree))
    server = ListServer(BUCKET, keys, size=64, latency=LATENCY)
    server.start()
    table = Table(url=sqlite_url(ctx.work / "s3scale.db"), tree=tree)
    try:
        table.create("synced")
        base = {
            "database_url": table.url,
            "storage_url": f"s3://{BUCKET}",
            "s3_endpoint": server.endpoint,
            "pythonpath": ctx.pythonpath,
            **CREDENTIALS,
        }
        counts: dict[str, list[int]] = {}

        def job(name: str, kind: str, **more: Any) -> Any:
            def run() -> dict[str, Any]:
                server.reset()
                task = {**base, "kind": kind, **more}
                result: dict[str, Any] = run_child(task, cwd=ctx.work)
                result["requests"] = server.count()
                counts.setdefault(name, []).append(result["requests"])
                return result

            return run

        series = rounds(
            {
                "ours": job("ours", "ours"),
                "floor": job("floor", "floor"),
                "listing": job("listing", "listing"),
                "listing-seq": job("listing-seq", "listing", list_workers=1),
            },
            runs=ctx.runs,
            warmup=ctx.warmup,
            label="s3 scale",
        )
        pages = math.ceil(len(keys) / 1000)
        scenario = f"full pass on S3, {len(keys):,} objects, {LATENCY * 1000:.0f} ms per request"
        setup = f"SQLite + list-only S3 server, {portfolios} × {spec.images}"
        r = ratio(series["ours"], series["floor"])
        ctx.add(
            Row(
                scenario,
                setup,
                "time ÷ sequential listing (floor)",
                r,
                "×",
                "≤ 0.25",
                r.median <= 0.25,
                "the floor lists in one sequence of pages; ours cuts key ranges as it goes, "
                "then compares 10 objects per row in Python: CPU-bound on a loaded machine",
            )
        )
        lr = ratio(series["listing"], series["listing-seq"])
        ctx.add(
            Row(
                scenario,
                setup,
                "listing alone: parallel ÷ sequential (iter_folders, no table)",
                lr,
                "×",
                "≤ 0.25",
                lr.median <= 0.25,
                "the same product listing with list_workers = 1 as the sequential one",
            )
        )
        ours = counts["ours"][-1]
        bound = math.floor(pages * 1.05) + 10
        ctx.add(
            Row(
                scenario,
                setup,
                "storage requests (ours)",
                ours,
                "requests",
                f"≤ 1.05 × {pages} + 10 probes = {bound}",
                ours <= bound,
                f"floor: {counts['floor'][-1]} requests",
            )
        )
        for name, s in series.items():
            ctx.add(Row(scenario, setup, f"time: {name}", s.stat(), "s"))
        ctx.raw["s3scale"] = {
            "objects": len(keys),
            "counts": counts,
            **{n: s.results for n, s in series.items()},
        }
    finally:
        table.close()
        server.stop()
