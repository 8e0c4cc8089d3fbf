"""Pooled PostgreSQL connections the server closed: idle ones are checked, busy ones not.

Both pools (the catalog's SQLAlchemy engine and the job queue's psycopg pool) skip the
liveness round trip for a connection used in the last few seconds and check the rest; a
connection closed by the server is replaced, at worst after one failed operation.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from portfolio_sync.backends import catalog as catalog_module
from portfolio_sync.backends.catalog import Catalog
from portfolio_sync.errors import CatalogError
from portfolio_sync.queue import procrastinate as pq
from tests.integration.world import World


@pytest.fixture
def world(pgw: World) -> World:
    pgw.insert(1, ["1/a.jpg"])
    return pgw


def _kill(server_url: str, pid: int) -> None:
    """Terminate a backend and wait until it is gone (termination is asynchronous)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone():
            assert time.monotonic() < deadline, f"backend {pid} still there"
            time.sleep(0.01)


def _pooled_pid(cat: Catalog) -> int:
    """The backend of the one connection the pool holds (it is handed out again next)."""
    with cat.engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


def test_an_idle_connection_closed_by_the_server_is_replaced_unnoticed(
    world: World, postgres_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with world.service() as svc:
        cat = svc.catalog
        _kill(postgres_server_url, _pooled_pid(cat))
        monkeypatch.setattr(catalog_module, "_FRESH_SECONDS", 0.0)  # every connection is idle
        row = cat.read_row("1")
        assert row is not None and row.values == (["1/a.jpg"],)


def test_a_fresh_connection_closed_by_the_server_fails_one_operation(
    world: World, postgres_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No check for a connection used a moment ago: the one read fails with a clear error,
    and the pool, told the connection is gone, hands out a new one next."""
    with world.service() as svc:
        cat = svc.catalog
        monkeypatch.setattr(catalog_module, "_FRESH_SECONDS", 3600.0)
        _kill(postgres_server_url, _pooled_pid(cat))
        with pytest.raises(CatalogError, match="lost the connection to the database"):
            cat.read_row("1")
        row = cat.read_row("1")
        assert row is not None and row.values == (["1/a.jpg"],)


async def test_the_queue_pool_checks_only_connections_idle_for_a_while(
    world: World, postgres_server_url: str
) -> None:
    check = pq._IdleConnectionCheck(fresh_for=3600.0)
    async with await psycopg.AsyncConnection.connect(world.database_url, autocommit=True) as conn:
        await check(conn)  # first sight: checked (and alive)
        pid = conn.info.backend_pid
        _kill(postgres_server_url, pid)
        await check(conn)  # used a moment ago: not checked, so the dead connection passes
        check.fresh_for = 0.0
        with pytest.raises(psycopg.OperationalError):
            await check(conn)  # idle: checked, and the pool would replace it
