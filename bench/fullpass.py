# ruff: noqa: RUF001
"""Full-pass scenarios: no-op, 1% drift, initial import, scaling (local folder storage)."""

from __future__ import annotations

from typing import Any

from context import Context, Dataset, Row
from data import Spec, Table
from measure import Job, Series, Stat, ratio, rounds, run_child, run_command


def _task(ctx: Context, kind: str, table: Table, **more: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "database_url": table.url,
        "storage_url": str(table.tree.root),
        "pythonpath": ctx.pythonpath,
        **more,
    }


def job(ctx: Context, kind: str, table: Table, **more: Any) -> Job:
    task = _task(ctx, kind, table, **more)
    return lambda: run_child(task, cwd=ctx.work)


def rclone_job(ctx: Context, table: Table) -> Job:
    assert ctx.rclone is not None
    argv = [ctx.rclone, "lsjson", "-R", "--files-only", "--no-mimetype", str(table.tree.root)]
    return lambda: run_command(argv)


def peak_mb(series: Series) -> Stat:
    return Stat.of([kb / 1024 for kb in series.values("maxrss_kb")])


def spec_for(ctx: Context, portfolios: int) -> Spec:
    return Spec(portfolios=portfolios, images=ctx.sizes.images, drift=0.01, orphans=0.001)


def noop(ctx: Context, dataset: Dataset, *, size: str, large: bool = False) -> dict[str, Series]:
    """No-op pass: every row already equals its folder. Returns the SQLite series."""
    sqlite_series: dict[str, Series] = {}
    for setup, table in dataset.tables.items():
        table.prepare("synced")
        jobs = {
            "ours": job(ctx, "ours", table),
            "floor": job(ctx, "floor", table),
            "floor2": job(ctx, "floor2", table),
        }
        if setup == "SQLite":
            jobs["seed"] = job(ctx, "seed", table)
            if ctx.rclone:
                jobs["rclone"] = rclone_job(ctx, table)
        writes: list[int] = []
        series = rounds(
            jobs,
            runs=ctx.fast_runs,
            warmup=ctx.warmup,
            before={"ours": table.clear_log},
            after={"ours": lambda _r, t=table, w=writes: w.append(t.writes())},  # type: ignore[misc]
            label=f"no-op {size} {setup}",
        )
        scenario = f"no-op full pass, {size}"
        target = 1.25
        r = ratio(series["ours"], series["floor"])
        ctx.add(
            Row(
                scenario,
                f"{setup} + folder",
                "time ÷ floor",
                r,
                "×",
                f"≤ {target}",
                r.median <= target,
            )
        )
        ctx.add(
            Row(
                scenario,
                f"{setup} + folder",
                "rows written",
                max(writes[-ctx.fast_runs :]),
                "rows",
                "0",
                max(writes[-ctx.fast_runs :]) == 0,
            )
        )
        r2 = ratio(series["ours"], series["floor2"])
        ctx.add(
            Row(
                scenario,
                f"{setup} + folder",
                "time ÷ parallel floor (listing and SELECT on two cores)",
                r2,
                "×",
                note="reported beside the single-threaded floor: ours lists in a helper "
                "process too, so on 2 cores this is the fairer lower bound",
            )
        )
        cpu = ratio(series["ours"], series["floor"], "cpu_total")
        ctx.add(
            Row(
                scenario,
                f"{setup} + folder",
                "CPU time ÷ floor (ours incl. listing helper)",
                cpu,
                "×",
                note="total work, whatever the cores",
            )
        )
        rss = peak_mb(series["ours"])
        ctx.add(Row(scenario, f"{setup} + folder", "peak RSS (ours)", rss, "MB"))
        ctx.raw.setdefault("rss_mb", {}).setdefault(setup, {})[dataset.tree.spec.portfolios] = rss
        for name in series:
            ctx.add(Row(scenario, f"{setup} + folder", f"time: {name}", series[name].stat(), "s"))
        if "seed" in series:
            s = ratio(series["ours"], series["seed"])
            ctx.add(Row(scenario, f"{setup} + folder", "time ÷ seed", s, "×"))
        if "rclone" in series:
            s = ratio(series["rclone"], series["floor"])
            ctx.add(Row(scenario, f"{setup} + folder", "rclone lsjson -R ÷ floor", s, "×"))
        ctx.raw[f"noop/{size}/{setup}"] = {n: s.results for n, s in series.items()}
        if setup == "SQLite":
            sqlite_series = series
    return sqlite_series


def drift(ctx: Context, dataset: Dataset, *, size: str) -> None:
    """1% of rows stale (missing, extra, reordered images, NULL rows) plus orphan folders."""
    expected = len(dataset.tree.drifted)
    for setup, table in dataset.tables.items():
        written: list[int] = []
        wrong: list[int] = []

        def check(
            _result: dict[str, Any],
            t: Table = table,
            written: list[int] = written,
            wrong: list[int] = wrong,
        ) -> None:
            written.append(t.writes())
            wrong.append(len(t.mismatches()))

        series = rounds(
            {"ours": job(ctx, "ours", table), "floor": job(ctx, "floor", table)},
            runs=ctx.fast_runs,
            warmup=ctx.warmup,
            before={"ours": lambda t=table: t.prepare("drifted")},  # type: ignore[misc]
            after={"ours": check},
            label=f"drift {setup}",
        )
        scenario = f"1% drift full pass, {size}"
        r = ratio(series["ours"], series["floor"])
        ctx.add(
            Row(scenario, f"{setup} + folder", "time ÷ floor", r, "×", "≤ 1.3", r.median <= 1.3)
        )
        recorded = written[-ctx.fast_runs :]
        exact = all(w == expected for w in recorded) and not any(wrong[-ctx.fast_runs :])
        ctx.add(
            Row(
                scenario,
                f"{setup} + folder",
                "rows written (UPDATE trigger)",
                f"{min(recorded)}–{max(recorded)}"
                if min(recorded) != max(recorded)
                else recorded[0],
                "rows",
                f"= {expected} drifted",
                exact,
                "" if not any(wrong) else f"{max(wrong)} rows left wrong",
            )
        )
        _times_and_raw(ctx, f"drift/{size}/{setup}", scenario, setup, series, written, wrong)
        table.prepare("synced")


def initial(ctx: Context, dataset: Dataset, *, size: str) -> None:
    """Every images column NULL: the pass fills every row."""
    rows = dataset.tree.spec.portfolios
    for setup, table in dataset.tables.items():
        written: dict[str, list[int]] = {"ours": [], "seed": []}
        wrong: list[int] = []

        def check(
            name: str,
            t: Table = table,
            written: dict[str, list[int]] = written,
            wrong: list[int] = wrong,
        ) -> Any:
            def after(_result: dict[str, Any]) -> None:
                written[name].append(t.writes())
                wrong.append(len(t.mismatches()))

            return after

        jobs = {
            "ours": job(ctx, "ours", table),
            "seed": job(ctx, "seed", table),
            "floor": job(ctx, "floor", table),
        }

        def empty(t: Table = table) -> None:
            t.prepare("empty")

        before = {"ours": empty, "seed": empty}
        checks = {"ours": check("ours"), "seed": check("seed")}
        if not table.postgres:  # the seed as SQLite runs it by default: fsync per commit
            jobs["seed FULL"] = job(ctx, "seed", table, synchronous="FULL")
            before["seed FULL"] = empty
        series = rounds(
            jobs,
            runs=ctx.runs,
            warmup=ctx.warmup,
            before=before,
            after=checks,
            label=f"initial {setup}",
        )
        scenario = f"initial import (all rows NULL), {size}"
        r = ratio(series["ours"], series["seed"])
        ctx.add(Row(scenario, f"{setup} + folder", "time ÷ seed", r, "×", "≤ 0.2", r.median <= 0.2))
        bound = ratio(series["floor"], series["seed"])
        ctx.add(
            Row(
                scenario,
                f"{setup} + folder",
                "floor ÷ seed (the lowest ratio any pass can reach)",
                bound,
                "×",
            )
        )
        if "seed FULL" in series:
            full = ratio(series["ours"], series["seed FULL"])
            ctx.add(
                Row(
                    scenario,
                    f"{setup} + folder",
                    "time ÷ seed at SQLite's default synchronous=FULL",
                    full,
                    "×",
                )
            )
        ours_written = written["ours"][-ctx.runs :]
        ctx.add(
            Row(
                scenario,
                f"{setup} + folder",
                "rows written (ours)",
                max(ours_written),
                "rows",
                f"= {rows}",
                all(w == rows for w in ours_written) and not any(wrong),
            )
        )
        _times_and_raw(ctx, f"initial/{size}/{setup}", scenario, setup, series, written, wrong)
        table.prepare("synced")


def _times_and_raw(
    ctx: Context,
    raw_key: str,
    scenario: str,
    setup: str,
    series: dict[str, Series],
    written: object,
    wrong: list[int],
) -> None:
    """A time row per job, and every run's results (with the write counts) in the JSON."""
    for name in series:
        ctx.add(Row(scenario, f"{setup} + folder", f"time: {name}", series[name].stat(), "s"))
    ctx.raw[raw_key] = {
        **{n: s.results for n, s in series.items()},
        "written": written,
        "wrong": wrong,
    }


def scaling_point(ctx: Context, portfolios: int, series: dict[str, Series]) -> dict[str, Any]:
    """Seconds per portfolio (median, min, max) of ours, floor and seed at one size."""
    point: dict[str, Any] = {"portfolios": portfolios}
    for name in ("ours", "floor", "seed"):
        if name in series:
            stat = series[name].stat()
            point[name] = {
                "median": stat.median / portfolios,
                "min": stat.low / portfolios,
                "max": stat.high / portfolios,
            }
    return point


def scaling_only(ctx: Context, dataset: Dataset) -> dict[str, Series]:
    table = dataset.tables["SQLite"]
    jobs = {
        "ours": job(ctx, "ours", table),
        "floor": job(ctx, "floor", table),
        "seed": job(ctx, "seed", table),
    }
    n = dataset.tree.spec.portfolios
    series = rounds(jobs, runs=ctx.fast_runs, warmup=ctx.warmup, label=f"scaling {n}")
    ctx.raw[f"scaling/{n}"] = {name: s.results for name, s in series.items()}
    return series


def rss_flat(ctx: Context) -> None:
    """Peak RSS of the no-op pass at the largest size over the main size, per database."""
    for setup, by_size in ctx.raw.get("rss_mb", {}).items():
        if len(by_size) < 2:
            continue
        small, big = min(by_size), max(by_size)
        growth = by_size[big].median / by_size[small].median
        ctx.add(
            Row(
                f"no-op full pass, {small // 1000}k → {big // 1000}k portfolios",
                f"{setup} + folder",
                "peak RSS growth (ours)",
                round(growth, 3),
                "×",
                "≤ 1.1 (flat)",
                growth <= 1.1,
                f"{by_size[small].median:.0f} MB → {by_size[big].median:.0f} MB",
            )
        )
