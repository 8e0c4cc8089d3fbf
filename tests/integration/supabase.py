"""Supabase's ``storage.objects`` table, recreated for tests on a plain PostgreSQL server.

The ``storage`` schema is global to the database, so the table is created only if missing
(under an advisory lock, as sessions may share the server) and shared between tests; each
test isolates itself with its own bucket id and deletes its rows afterwards. Trigger
functions that ``setup --storage-objects`` installs live in the test's own schema, so
dropping that schema drops the triggers on the shared table as well.
"""

from __future__ import annotations

import psycopg

#: The columns of Supabase's table (storage-api migrations), plus its unique name index.
OBJECTS_DDL = """
CREATE SCHEMA IF NOT EXISTS storage;
CREATE TABLE IF NOT EXISTS storage.objects (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    bucket_id text,
    name text,
    owner uuid,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    last_accessed_at timestamptz DEFAULT now(),
    metadata jsonb
);
CREATE UNIQUE INDEX IF NOT EXISTS bucketid_objname ON storage.objects (bucket_id, name);
"""


def ensure_storage_objects(server_url: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('portfolio_sync_test_storage'))")
            conn.execute(OBJECTS_DDL)


def forget_bucket(server_url: str, bucket: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM storage.objects WHERE bucket_id = %s OR bucket_id LIKE %s",
            (bucket, bucket.replace("_", r"\_") + "-%"),  # and the test's other buckets
        )
