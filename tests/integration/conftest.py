"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.world import World


@pytest.fixture
def pgw(tmp_path: Path, pg_url: str) -> Iterator[World]:
    """PostgreSQL + a local folder, table `portfolios` with a text[] images column."""
    root = tmp_path / "storage"
    root.mkdir()
    w = World(kind="postgres-folder", database_url=pg_url, root=root)
    w.create_table()
    yield w
    w.close()


@pytest.fixture(params=["sqlite-folder", "postgres-folder"])
def local(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A local storage folder, with SQLite or PostgreSQL (faults of one folder, devices)."""
    root = tmp_path / "storage"
    root.mkdir()
    if request.param == "sqlite-folder":
        url = f"sqlite:///{tmp_path / 'app.db'}"
    else:
        url = request.getfixturevalue("pg_url")
    w = World(kind=request.param, database_url=url, root=root)
    yield w
    w.close()
