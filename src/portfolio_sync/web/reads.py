"""The console's reads: facts, panels and pages of portfolios (blocking parts in threads).

Only reads; writes go through the queue. Each panel of the main page is one `Panel`: a
title, a template and one read, so a new panel (a list of passes, say) is one
entry in `PANELS` and one small template.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from portfolio_sync.backends import schema
from portfolio_sync.backends.catalog import Browse
from portfolio_sync.errors import CatalogError, PortfolioSyncError

if TYPE_CHECKING:
    from portfolio_sync.runtime import Runtime

PARALLEL_ROWS = 8  # per-row reads at once; below the database pool size
DRIFT_SCAN = 500  # keys one page of the drift filter examines at most
PANEL_ROWS = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class Panel:
    name: str  # its template is panels/<name>.html
    title: str
    read: Callable[[sa.Engine], Any]


def _last_passes(engine: sa.Engine) -> list[dict[str, Any]]:
    """Every recorded full pass, failed ones included (`outcome`, `reason`), newest first."""
    passes = schema.recent_passes(engine, PANEL_ROWS)
    if passes:
        return [{**p, "at": p["finished_at"]} for p in passes]
    last = schema.get_meta(engine, "last_full_pass")  # recorded before passes were kept
    return [last] if last else []


def _orphans(engine: sa.Engine) -> dict[str, Any] | None:
    last = schema.get_meta(engine, "last_full_pass")
    if not last:
        return None
    return {"at": last.get("at"), "count": last.get("orphans", 0), "keys": last.get("orphan_keys")}


def _errors(engine: sa.Engine) -> list[dict[str, Any]]:
    return schema.read_errors(engine, PANEL_ROWS)


def _held(engine: sa.Engine) -> list[dict[str, Any]]:
    return schema.read_held(engine)[:PANEL_ROWS]


def _recent(engine: sa.Engine) -> list[dict[str, Any]]:
    return schema.recent_history(engine, PANEL_ROWS)


PANELS = (
    Panel(name="held", title="Held writes", read=_held),
    Panel(name="errors", title="Keys with errors", read=_errors),
    Panel(name="passes", title="Last passes", read=_last_passes),
    Panel(name="orphans", title="Orphan folders", read=_orphans),
    Panel(name="recent", title="Recent changes", read=_recent),
)


def facts(runtime: Runtime) -> dict[str, Any]:
    """Counts and panels for the main page (blocking)."""
    catalog = runtime.service.catalog
    try:
        failing = schema.count_errors(catalog.engine)
        held = schema.count_held(catalog.engine)
        panels = [(panel, panel.read(catalog.engine)) for panel in PANELS]
        passes = schema.pass_summary(catalog.engine)
    except sa.exc.SQLAlchemyError as exc:
        raise CatalogError(f"cannot read the status tables: {exc}") from exc
    return {
        "rows": catalog.count_rows(),
        "failing": failing,
        "held": held,
        "panels": panels,
        "passes": passes,
    }


async def portfolios(runtime: Runtime, keys: list[str]) -> list[dict[str, Any]]:
    """`Runtime.portfolio` of each key, a few at once; a failure is shown on its row."""
    gate = asyncio.Semaphore(PARALLEL_ROWS)

    async def one(key: str) -> dict[str, Any]:
        async with gate:
            try:
                found = await asyncio.to_thread(runtime.portfolio, key)
            except (PortfolioSyncError, sa.exc.SQLAlchemyError) as exc:
                return {"key": key, "failed": str(exc)}
        return found if found is not None else {"key": key, "failed": "row deleted meanwhile"}

    return list(await asyncio.gather(*(one(key) for key in keys)))


@dataclass(frozen=True, slots=True, kw_only=True)
class Page:
    rows: list[dict[str, Any]]
    next_after: str | None  # the cursor of the next page; None on the last one
    scanned: int


async def page(
    runtime: Runtime,
    *,
    after: str | None,
    limit: int,
    search: str | None,
    only: Browse | None,
    drift: bool,
) -> Page:
    """One keyset page of portfolios; with `drift`, only those out of sync with storage.

    Drift needs both sides listed, so that filter examines at most `DRIFT_SCAN` keys per
    page and the next page continues after the last key examined, shown or not.
    """
    catalog = runtime.service.catalog
    if not drift:
        keys = await asyncio.to_thread(catalog.browse, after, limit + 1, search=search, only=only)
        rows = await portfolios(runtime, keys[:limit])
        more = len(keys) > limit
        return Page(rows=rows, next_after=keys[limit - 1] if more else None, scanned=limit)
    found: list[dict[str, Any]] = []
    cursor, scanned, more = after, 0, True
    while more and len(found) < limit and scanned < DRIFT_SCAN:
        batch = min(limit * 2, DRIFT_SCAN - scanned)
        keys = await asyncio.to_thread(catalog.browse, cursor, batch, search=search, only=only)
        for got in await portfolios(runtime, keys):
            scanned += 1
            cursor = got["key"]
            if "failed" in got or not got["in_sync"]:
                found.append(got)
            if len(found) == limit:
                break
        # A short batch is the end of the table, unless the page filled before its end.
        more = len(keys) == batch or (bool(keys) and cursor != keys[-1])
    return Page(rows=found, next_after=cursor if more else None, scanned=scanned)


def history(runtime: Runtime, key: str, limit: int = 50) -> list[dict[str, Any]]:
    return schema.read_history(runtime.service.catalog.engine, key, limit)
