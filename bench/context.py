# ruff: noqa: RUF001
"""What every scenario shares: sizes, the work folder, the servers, and the result rows."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data import PostgresPlace, Spec, Table, Tree, build_tree, sqlite_url
from measure import Stat


@dataclass(frozen=True, slots=True)
class Sizes:
    main: int  # portfolios of the main full-pass data set
    images: int
    scaling: tuple[int, ...]
    large: int | None  # the 100k no-op run (SCALE=large only)
    s3: int
    events_seconds: float
    events_portfolios: int
    initial: int  # portfolios of the initial-import data set (the seed writes every row)
    s3_seed_sample: int = 0  # count the seed's S3 requests on this many portfolios (0: all)
    # `portfolio-sync worker` processes (PostgreSQL job queue): portfolios of the data set,
    # syncs queued at once for the throughput figure, seconds of each events run (kept
    # short at the default scale: 3 worker counts x 4 rounds, each with fresh processes)
    workers_portfolios: int = 1_000
    workers_syncs: int = 500
    workers_seconds: float = 6.0
    supabase: int = 10_000  # portfolios of the supabase-db (storage.objects) full pass
    # webhook intake (intake.py): requests per second, seconds of each recorded run
    intake_rate: float = 1_000.0
    intake_seconds: float = 10.0
    s3_scale: int = 20_000  # portfolios of the S3-at-scale full pass (list-only server)
    image_files: int = 2_000  # images of the `image_fields` metadata import


SCALES = {
    "default": Sizes(
        main=10_000,
        images=10,
        scaling=(1_000, 10_000),
        large=None,
        s3=2_000,
        events_seconds=10.0,
        events_portfolios=1_000,
        initial=2_000,
        s3_seed_sample=200,
    ),
    "large": Sizes(
        main=10_000,
        images=10,
        scaling=(1_000, 10_000, 100_000),
        large=100_000,
        s3=2_000,
        events_seconds=30.0,
        events_portfolios=1_000,
        initial=10_000,
        workers_syncs=1_000,
        workers_seconds=20.0,
        supabase=100_000,
        s3_scale=100_000,
    ),
    # A quick pass over every scenario, to check the suite itself (not for results).
    "smoke": Sizes(
        main=500,
        images=10,
        scaling=(200, 500),
        large=None,
        s3=200,
        events_seconds=3.0,
        events_portfolios=100,
        initial=200,
        s3_seed_sample=50,
        workers_portfolios=100,
        workers_syncs=100,
        workers_seconds=2.0,
        supabase=500,
        intake_rate=200.0,
        intake_seconds=3.0,
        s3_scale=2_000,
        image_files=200,
    ),
}


@dataclass(slots=True)
class Row:
    """One line of the results table."""

    scenario: str
    setup: str
    figure: str
    value: Stat | float | int | str
    unit: str = ""
    target: str = ""
    ok: bool | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        value = self.value.as_dict() if isinstance(self.value, Stat) else self.value
        return {
            "scenario": self.scenario,
            "setup": self.setup,
            "figure": self.figure,
            "value": value,
            "unit": self.unit,
            "target": self.target,
            "ok": self.ok,
            "note": self.note,
        }


@dataclass(slots=True)
class Dataset:
    """A tree on disk and its table in SQLite and (when available) PostgreSQL."""

    name: str
    tree: Tree
    tables: dict[str, Table]  # "SQLite" / "Postgres" -> table

    def close(self) -> None:
        for table in self.tables.values():
            table.close()


@dataclass(slots=True)
class Context:
    scale: str
    sizes: Sizes
    work: Path
    runs: int
    warmup: int
    pythonpath: list[str]
    pg_server: str | None  # a plain postgresql:// URL, or None when no server is usable
    pg_note: str = ""
    rclone: str | None = None
    rclone_note: str = ""
    baseline_src: str = ""  # intake: also run the PostgreSQL queue from this src/ (A/B)
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    places: list[PostgresPlace] = field(default_factory=list)
    datasets: dict[str, Dataset] = field(default_factory=dict)

    @property
    def fast_runs(self) -> int:
        """Runs of the full-pass figures: a pass takes a second, so take a few more."""
        return max(self.runs, 5) if self.scale != "smoke" else self.runs

    def add(self, row: Row) -> None:
        self.rows.append(row)
        value = row.value
        shown = (
            f"{value.median:.3g} [{value.low:.3g}–{value.high:.3g}]"
            if isinstance(value, Stat)
            else str(value)
        )
        verdict = "" if row.ok is None else (" ok" if row.ok else " MISSED")
        print(
            f"  => {row.scenario} | {row.setup} | {row.figure}: {shown} {row.unit} "
            f"(target {row.target or '-'}){verdict}",
            flush=True,
        )

    def dataset(
        self, name: str, spec: Spec, *, postgres: bool = True, sqlite: bool = True
    ) -> Dataset:
        """Build (once) a tree and its tables."""
        if name in self.datasets:
            return self.datasets[name]
        root = self.work / f"tree-{name}"
        print(f"  building {name}: {spec.portfolios} portfolios x {spec.images} images", flush=True)
        tree = build_tree(spec, root)
        tables: dict[str, Table] = {}
        if sqlite:
            tables["SQLite"] = Table(url=sqlite_url(self.work / f"{name}.db"), tree=tree)
        if postgres and self.pg_server:
            place = PostgresPlace(server_url=self.pg_server)
            place.create()
            self.places.append(place)
            tables["Postgres"] = Table(url=place.url, tree=tree)
        for table in tables.values():
            table.create("synced")
        dataset = Dataset(name=name, tree=tree, tables=tables)
        self.datasets[name] = dataset
        return dataset

    def drop_dataset(self, name: str) -> None:
        dataset = self.datasets.pop(name, None)
        if dataset is not None:
            dataset.close()
            shutil.rmtree(dataset.tree.root, ignore_errors=True)

    def close(self) -> None:
        for name in list(self.datasets):
            self.drop_dataset(name)
        for place in self.places:
            try:
                place.drop()
            except Exception as exc:  # report, keep cleaning up
                print(f"  could not drop schema {place.schema}: {exc}", flush=True)


def size_label(portfolios: int, images: int) -> str:
    count = f"{portfolios // 1000}k" if portfolios % 1000 == 0 else str(portfolios)
    return f"{count} × {images}"


def s3_request_bound(objects: int) -> int:
    return math.ceil(objects / 1000) + 2
