"""The `world` fixture: every test using it runs on both matrices."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.world import World
from tests.servers import S3Target


@pytest.fixture(params=["sqlite-folder", "postgres-s3"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "sqlite-folder":
        root = tmp_path / "storage"
        root.mkdir()
        w = World(kind=request.param, database_url=f"sqlite:///{tmp_path / 'app.db'}", root=root)
    else:
        pg_url: str = request.getfixturevalue("pg_url")
        s3: S3Target = request.getfixturevalue("s3_bucket")
        w = World(kind=request.param, database_url=pg_url, s3=s3)
    yield w
    w.close()


@pytest.fixture
def pg_world(tmp_path: Path, pg_url: str, s3_bucket: S3Target) -> Iterator[World]:
    """PostgreSQL + S3 only, for column types SQLite does not have."""
    w = World(kind="postgres-s3", database_url=pg_url, s3=s3_bucket)
    yield w
    w.close()
