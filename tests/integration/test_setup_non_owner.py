"""`setup --storage-objects` as a role that does not own `storage.objects`.

On Supabase, `postgres` may add triggers to `storage.objects` (it has the TRIGGER
privilege) but the table belongs to `supabase_storage_admin`, so `DROP TRIGGER` fails with
"must be owner of relation objects". Reproduced here with a role created for the test that
holds only TRIGGER (and USAGE on the schema) on the shared `storage.objects`, owned by the
test server's superuser; the role owns its own schema and portfolio table.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from tests.acceptance.command import run
from tests.integration.supabase import ensure_storage_objects, forget_bucket
from tests.servers import S3Target


def _as_user(url: str, user: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


@pytest.fixture
def non_owner(pg_url: str, postgres_server_url: str) -> Iterator[str]:
    """A URL for a fresh login role limited as Supabase's `postgres` is on storage.objects."""
    ensure_storage_objects(postgres_server_url)
    role = f"ps_app_{secrets.token_hex(4)}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]  # type: ignore[index]
        ident = sql.Identifier(role)
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(ident))
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA storage TO {}").format(ident))
        conn.execute(sql.SQL("GRANT TRIGGER ON storage.objects TO {}").format(ident))
    try:
        yield _as_user(pg_url, role)
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            ident = sql.Identifier(role)
            conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(ident))
            conn.execute(sql.SQL("DROP ROLE {}").format(ident))


def _trigger_oids(url: str, bucket_like: str = "portfolio_sync_%") -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tgname, oid FROM pg_trigger WHERE tgrelid = 'storage.objects'::regclass "
            "AND tgname LIKE %s AND tgfoid IN (SELECT oid FROM pg_proc WHERE "
            "pronamespace = current_schema()::regnamespace)",
            (bucket_like,),
        ).fetchall()
    return dict(rows)


def test_setup_storage_objects_again_and_uninstall_as_non_owner(
    non_owner: str, postgres_server_url: str, s3_bucket: S3Target
) -> None:
    with psycopg.connect(non_owner, autocommit=True) as conn:
        conn.execute("CREATE TABLE portfolios (id INTEGER PRIMARY KEY, images TEXT[])")
    env = {**s3_bucket.env(), "PORTFOLIO_SYNC_DATABASE_URL": non_owner, "PATH": "/usr/bin:/bin"}
    bucket = f"b{secrets.token_hex(4)}"
    try:
        first = run("setup", "--storage-objects", bucket, env=env)
        assert first.returncode == 0, first.stderr
        installed = _trigger_oids(non_owner)
        assert len(installed) == 2
        again = run("setup", "--storage-objects", bucket, env=env)
        assert again.returncode == 0, again.stderr
        assert "must be owner" not in again.stderr
        assert _trigger_oids(non_owner) == installed  # unchanged triggers were left alone
        # A changed layout changes the trigger: replaced in a way this role may do.
        changed = run("--folder", "portfolios/{key}/", "setup", "--storage-objects", bucket,
                      env=env)  # fmt: skip
        assert changed.returncode == 0, changed.stderr
        assert set(_trigger_oids(non_owner)) == set(installed)
        removed = run("setup", "--uninstall", env=env)
        assert removed.returncode == 0, removed.stderr
        assert _trigger_oids(non_owner) == {}
    finally:
        forget_bucket(postgres_server_url, bucket)
