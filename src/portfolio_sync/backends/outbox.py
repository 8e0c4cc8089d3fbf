"""Row-change outbox (SQLite): install the triggers, and drain what they recorded.

Draining deletes what it returns in the same transaction. If the process dies before the
resulting syncs ran, those keys are still covered: `serve` starts with a full pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

from portfolio_sync.backends import schema
from portfolio_sync.backends.catalog import Catalog
from portfolio_sync.errors import CatalogError
from portfolio_sync.sources import triggers


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxEntry:
    key: str
    op: str  # INSERT | UPDATE | DELETE
    old_images: list[str] | None = None


def install_sql(catalog: Catalog) -> list[str]:
    if catalog.dialect != "sqlite":
        return []
    return triggers.sqlite_install(
        table=catalog.table_name,
        key=catalog.key_column,
        images=[c.name for c in catalog.columns],
        quote=catalog.quote,
    )


def uninstall_sql(catalog: Catalog) -> list[str]:
    if catalog.dialect != "sqlite":
        return []
    return triggers.sqlite_uninstall(table=catalog.table_name, quote=catalog.quote)


def run(catalog: Catalog, statements: list[str]) -> None:
    try:
        with catalog.engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    except sa.exc.SQLAlchemyError as exc:
        raise CatalogError(f"installing triggers failed: {exc}") from exc


def installed(catalog: Catalog) -> bool:
    """Whether row triggers feed the outbox (so the service should drain it)."""
    if catalog.dialect != "sqlite":
        return False
    names = triggers.sqlite_trigger_names(catalog.table_name)
    with catalog.engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = :n"),
            {"n": names[0]},
        ).scalar_one()
    return bool(found)


def outdated(catalog: Catalog) -> bool:
    """Whether installed triggers differ from what `setup` would install now (an older
    version, or other columns): re-running setup replaces them."""
    if not installed(catalog):
        return False
    with catalog.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
        found = {name: sql for name, sql in rows}
    wanted = [s for s in install_sql(catalog) if s.startswith("CREATE TRIGGER")]
    names = triggers.sqlite_trigger_names(catalog.table_name)
    return [found.get(name) for name in names] != wanted


def take(catalog: Catalog, limit: int = 1000) -> list[OutboxEntry]:
    """Remove and return the oldest entries, one entry per key and operation."""
    table = schema.outbox
    try:
        with catalog.engine.begin() as conn:
            rows = conn.execute(
                sa.select(table.c.id, table.c.key, table.c.op, table.c.old_images)
                .order_by(table.c.id)
                .limit(limit)
            ).all()
            if not rows:
                return []
            conn.execute(sa.delete(table).where(table.c.id <= rows[-1].id))
    except sa.exc.SQLAlchemyError as exc:
        raise CatalogError(f"reading the outbox failed: {exc}") from exc
    entries: dict[tuple[str, str], OutboxEntry] = {}
    for row in rows:
        entries[(row.key, row.op)] = OutboxEntry(
            key=row.key, op=row.op, old_images=_old_images(row.old_images)
        )
    return list(entries.values())


def _old_images(raw: str | None) -> list[str] | None:
    """Flatten `{"column": "<json list text>"}` from the delete trigger; junk is ignored."""
    if not raw:
        return None
    try:
        columns = json.loads(raw)
        values: list[str] = []
        for text in columns.values():
            decoded = json.loads(text) if isinstance(text, str) else None
            if isinstance(decoded, list):
                values.extend(v for v in decoded if isinstance(v, str))
        return values
    except (ValueError, AttributeError):
        return None
