"""Session-wide fixtures: a hermetic environment and real services (PostgreSQL, moto S3).

Fixtures (the code behind them is in ``tests/servers.py``):

- ``clean_environment`` (autouse): no ``PORTFOLIO_SYNC_*`` or ``AWS_*`` settings leak in.
- ``postgres_server_url`` (session) -> ``str``: a server URL; see ``plan_postgres`` for the
  resolution order. ``PORTFOLIO_SYNC_TEST_PGSERVER=1`` forces the embedded server.
- ``pg_url`` -> ``str``: that server, with a fresh schema as ``search_path``; dropped after.
- ``moto_endpoint`` (session) -> ``str``: a shared ``moto_server``.
- ``moto_server_private`` -> ``MotoServer``: a test's own moto it may stop and restart.
- ``s3_bucket`` -> ``S3Target``: a fresh bucket on the shared moto.
- ``counting_s3`` -> ``CountingS3``: a fresh bucket reached through a request-counting proxy.

The header says which Postgres was chosen; the terminal summary says what was really started.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.supabase import ensure_storage_objects
from tests.integration.world import World
from tests.servers import (
    CountingProxy,
    CountingS3,
    EmbeddedPostgres,
    MotoServer,
    PostgresPlan,
    S3Target,
    ServerUnavailable,
    connection_error,
    create_schema,
    drop_schema,
    plan_postgres,
    random_bucket_name,
    redact_url,
    with_search_path,
)

#: The environment as it was before any fixture ran: the scrub below hides the test settings.
_STARTUP_ENVIRON = pytest.StashKey[dict[str, str]]()
_POSTGRES_PLAN = pytest.StashKey[PostgresPlan]()
_SUMMARY = pytest.StashKey[list[str]]()

#: Kept despite the AWS_ prefix: it only says which CAs to trust, not where or who to be.
_KEEP_AWS = frozenset({"AWS_CA_BUNDLE"})


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STARTUP_ENVIRON] = dict(os.environ)
    config.stash[_SUMMARY] = []


def _postgres_plan(config: pytest.Config) -> PostgresPlan:
    """Decide once per session (the probe of 127.0.0.1:5432 costs a connection)."""
    if _POSTGRES_PLAN not in config.stash:
        config.stash[_POSTGRES_PLAN] = plan_postgres(config.stash[_STARTUP_ENVIRON])
    return config.stash[_POSTGRES_PLAN]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"postgres: {_postgres_plan(config).describe()}"]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    for line in config.stash.get(_SUMMARY, []):
        terminalreporter.write_line(line)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove every ``PORTFOLIO_SYNC_*`` and ``AWS_*`` variable for the test's duration.

    A developer's real bucket or credentials must never be picked up by a test. Pointing the
    AWS config files at /dev/null stops a ``~/.aws`` profile from leaking in the same way.
    Test-harness settings (``PORTFOLIO_SYNC_TEST_*``) were read at startup, before this ran.
    """
    for name in list(os.environ):
        if name.startswith("PORTFOLIO_SYNC_") or (
            name.startswith("AWS_") and name not in _KEEP_AWS
        ):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


# --------------------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server_url(pytestconfig: pytest.Config) -> Iterator[str]:
    """URL of the session's PostgreSQL server (plain ``postgresql://`` form). Never skips.

    Order: ``PORTFOLIO_SYNC_TEST_PGSERVER=1`` forces the embedded server; else
    ``PORTFOLIO_SYNC_TEST_DATABASE_URL``; else ``postgresql://postgres@127.0.0.1:5432/test``;
    else an embedded server from the ``pgserver`` wheel, stopped at session end. Tests that
    need isolation should use ``pg_url`` instead of creating objects here.
    """
    plan = _postgres_plan(pytestconfig)
    summary = pytestconfig.stash[_SUMMARY]
    if plan.url is not None:
        error = connection_error(plan.url, timeout=5.0)
        if error is not None:
            raise ServerUnavailable(
                f"PostgreSQL {plan.describe()} is unreachable at {redact_url(plan.url)}: {error}. "
                "Set PORTFOLIO_SYNC_TEST_DATABASE_URL to a reachable server, or "
                "PORTFOLIO_SYNC_TEST_PGSERVER=1 to use an embedded one."
            )
        summary.append(f"postgres used: {plan.describe()}")
        yield plan.url
        return
    try:
        server = EmbeddedPostgres.start()
    except ServerUnavailable as exc:
        raise ServerUnavailable(
            f"no PostgreSQL for the tests: {plan.reason}; and {exc}. "
            "Set PORTFOLIO_SYNC_TEST_DATABASE_URL to a reachable server."
        ) from exc
    with server:
        yield server.url
    summary.append(
        f"postgres used: embedded pgserver pid {server.pid}, data {server.data_dir} (stopped)"
    )


@pytest.fixture
def pg_url(postgres_server_url: str) -> Iterator[str]:
    """A URL whose every connection uses a fresh schema ``t_<hex>`` as ``search_path``.

    Plain ``postgresql://`` form (pass it through ``sqlalchemy_url`` for SQLAlchemy). The
    schema is dropped with CASCADE afterwards; close your connections before the test ends.
    """
    schema = create_schema(postgres_server_url)
    try:
        yield with_search_path(postgres_server_url, schema)
    finally:
        drop_schema(postgres_server_url, schema)


# --------------------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def moto_endpoint(pytestconfig: pytest.Config) -> Iterator[str]:
    """``http://127.0.0.1:PORT`` of a ``moto_server`` shared by the session.

    Never stop it from a test: use ``moto_server_private`` for outages.
    """
    with MotoServer() as server:
        yield server.endpoint
    pytestconfig.stash[_SUMMARY].append(f"s3 used: moto_server at {server.endpoint} (stopped)")


@pytest.fixture
def moto_server_private() -> Iterator[MotoServer]:
    """A running ``MotoServer`` of the test's own, on its own port.

    ``stop()``/``start()`` simulate an S3 outage without disturbing other tests; the restart
    keeps the endpoint but (moto being in-memory) loses every bucket.
    """
    with MotoServer() as server:
        yield server


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> Iterator[S3Target]:
    """A new, empty bucket ``t-<hex>`` on the shared moto, credentials testing/testing."""
    target = S3Target(endpoint=moto_endpoint, bucket=random_bucket_name())
    try:
        target.create_bucket()
        yield target
    finally:
        target.close()


@pytest.fixture
def counting_s3(s3_bucket: S3Target) -> Iterator[CountingS3]:
    """``s3_bucket`` behind a proxy that counts every request the server receives."""
    with CountingProxy(s3_bucket.endpoint) as proxy:
        target = dataclasses.replace(s3_bucket, endpoint=proxy.endpoint)
        try:
            yield CountingS3(target=target, proxy=proxy)
        finally:
            target.close()


# --------------------------------------------------------------------------- worlds


def make_world(request: pytest.FixtureRequest, tmp_path: Path, kind: str) -> World:
    """A World of `kind` (see `World`), on this test's fixtures; close it afterwards."""
    if kind == "sqlite-folder":
        root = tmp_path / "storage"
        root.mkdir()
        return World(kind=kind, database_url=f"sqlite:///{tmp_path / 'app.db'}", root=root)
    pg_url: str = request.getfixturevalue("pg_url")
    if kind == "postgres-supabase-db":
        server_url: str = request.getfixturevalue("postgres_server_url")
        ensure_storage_objects(server_url)
        bucket = f"t-{uuid.uuid4().hex[:12]}"  # other tests share storage.objects
        return World(kind=kind, database_url=pg_url, bucket=bucket)
    s3: S3Target = request.getfixturevalue("s3_bucket")
    return World(kind=kind, database_url=pg_url, s3=s3)


@pytest.fixture(params=["sqlite-folder", "postgres-s3"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    w = make_world(request, tmp_path, request.param)
    yield w
    w.close()


@pytest.fixture
def pg_world(tmp_path: Path, pg_url: str, s3_bucket: S3Target) -> Iterator[World]:
    """PostgreSQL + S3 only, for column types SQLite does not have."""
    w = World(kind="postgres-s3", database_url=pg_url, s3=s3_bucket)
    yield w
    w.close()
