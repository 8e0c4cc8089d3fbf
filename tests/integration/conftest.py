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
