"""Wiring: turn Settings into an open Reconciler (catalog + storage + layout), and close it.

Shared by the CLI and the server so both build the product the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa

from portfolio_sync.backends import schema
from portfolio_sync.backends.catalog import Catalog
from portfolio_sync.backends.image_cache import ImageCache
from portfolio_sync.backends.storage import Storage, open_storage
from portfolio_sync.config import Settings
from portfolio_sync.explain import database_error
from portfolio_sync.layout import Layout
from portfolio_sync.reconcile import Guard, Reconciler


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    settings: Settings
    layout: Layout
    catalog: Catalog
    storage: Storage
    reconciler: Reconciler


@contextmanager
def open_service(settings: Settings, *, migrate: bool = True) -> Iterator[Service]:
    """Open both sides. With `migrate`, our own tables are created or upgraded first, so
    the embedded default works without a separate `setup`; read-only commands pass False.
    """
    layout = Layout.from_settings(settings)
    catalog = Catalog.open(settings, layout.columns)
    try:
        storage = open_storage(settings, database=catalog.engine)
        try:
            if migrate:
                schema.migrate(catalog.engine)
            images = None
            if settings.image_fields:
                images = ImageCache(catalog.engine, storage, settings.image_fields)
            reconciler = Reconciler(
                catalog,
                storage,
                layout,
                guard=Guard(max_share=settings.max_empty_share, min_rows=settings.max_empty_rows),
                batch_size=settings.batch_size,
                guard_window=settings.guard_window,
                images=images,
            )
            yield Service(
                settings=settings,
                layout=layout,
                catalog=catalog,
                storage=storage,
                reconciler=reconciler,
            )
        except sa.exc.SQLAlchemyError as exc:  # our own tables, read or written directly
            raise database_error(exc, catalog.engine.url) from exc
        finally:
            storage.close()
    finally:
        catalog.close()
