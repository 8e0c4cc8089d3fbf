"""`Catalog.browse`, the console's keyset pages: order, search, filters, and an index walk.

Against both real databases (the `world` fixture: SQLite file, PostgreSQL).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from portfolio_sync.backends import schema
from tests.integration.world import World


def test_integer_keys_page_in_natural_order(world: World) -> None:
    world.create_table()
    for key in (10, 2, 1, 33, 3, 20):
        world.insert(key, None)
    with world.service() as svc:
        browse = svc.catalog.browse
        assert browse(None, 10) == ["1", "2", "3", "10", "20", "33"]
        assert browse("3", 2) == ["10", "20"]
        assert browse("20", 5) == ["33"]
        assert browse("33", 5) == []
        assert browse("not-a-number", 2) == ["1", "2"]  # a cursor no row can have: the start
        assert browse(None, 10, search="3") == ["3", "33"]
        assert browse("3", 10, search="3") == ["33"]


def test_text_keys_search_is_literal(world: World) -> None:
    world.create_table(key="text")
    for key in ("a_b", "axb", "50%", "500", "back\\slash", "Z"):
        world.insert(key, None)
    with world.service() as svc:
        browse = svc.catalog.browse
        assert browse(None, 10, search="_") == ["a_b"]
        assert browse(None, 10, search="%") == ["50%"]
        assert browse(None, 10, search="\\") == ["back\\slash"]
        page = browse(None, 3)
        assert page + browse(page[-1], 10) == browse(None, 10)  # keyset pages join up


def test_filters_on_our_state_table(world: World) -> None:
    world.create_table()
    for key in range(1, 6):
        world.insert(key, None)
    with world.service() as svc:
        engine = svc.catalog.engine
        schema.record_checked(engine, "1", None)
        schema.record_checked(engine, "2", None)
        schema.record_error(engine, "2", "boom")
        schema.record_error(engine, "4", "boom")
        browse = svc.catalog.browse
        assert browse(None, 10, only="error") == ["2", "4"]
        assert browse(None, 10, only="never") == ["3", "4", "5"]
        assert browse("3", 10, only="never", search="5") == ["5"]
        schema.record_held(engine, "3", "held: test", {"removed": ["3/a.jpg"]})
        schema.record_held(engine, "5", "held: test", {"removed": ["5/a.jpg"]})
        assert browse(None, 10, only="held") == ["3", "5"]
        assert browse("3", 10, only="held") == ["5"]


def test_a_late_page_walks_the_primary_key(world: World) -> None:
    """The statement `browse` runs reads the key's index in order: no sort of the table,
    so page 2,000 of 100k rows costs what page 1 does."""
    world.create_table()
    with world.service() as svc:
        engine = svc.catalog.autocommit_engine.engine
        seen: list[tuple[str, Any]] = []

        def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
            if "ORDER BY" in statement:
                seen.append((statement, params))

        sa.event.listen(engine, "before_cursor_execute", capture)
        try:
            svc.catalog.browse("5", 50)
        finally:
            sa.event.remove(engine, "before_cursor_execute", capture)
        [(statement, params)] = seen
        explain = "EXPLAIN " if world.postgres else "EXPLAIN QUERY PLAN "
        with engine.connect() as conn:
            plan = " ".join(
                str(row[-1]) for row in conn.exec_driver_sql(explain + statement, params)
            )
    if world.postgres:
        assert "Sort" not in plan and "portfolios_pkey" in plan, plan
    else:
        assert "TEMP B-TREE" not in plan and "INTEGER PRIMARY KEY" in plan, plan
