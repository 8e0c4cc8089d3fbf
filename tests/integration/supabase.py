"""Supabase's ``storage.objects`` table, recreated for tests on a plain PostgreSQL server.

The ``storage`` schema is global to the database, so the table is created only if missing
(under an advisory lock, as sessions may share the server) and shared between tests; each
test isolates itself with its own bucket id and deletes its rows afterwards. Trigger
functions that ``setup --storage-objects`` installs live in the test's own schema, so
dropping that schema drops the triggers on the shared table as well.
"""

from __future__ import annotations

import json

import psycopg

#: The columns of Supabase's table and its indexes on names (supabase/storage tenant
#: migrations: 0002 `bucketid_objname` and `name_prefix_search`, 0020
#: `idx_objects_bucket_id_name`, the one in byte order), with row-level security enabled
#: as there (0002). Superusers, as the tests connect, bypass it.
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
CREATE INDEX IF NOT EXISTS name_prefix_search ON storage.objects (name text_pattern_ops);
CREATE INDEX IF NOT EXISTS idx_objects_bucket_id_name
    ON storage.objects (bucket_id, (name COLLATE "C"));
"""

#: Object versioning (tenant migrations 0062, 0064-0066): several rows per name, the
#: current one with `archived_at` NULL, deletions as delete markers; the unique name
#: index gives way to one per (name, version) and one per current name.
VERSIONED_DDL = """
ALTER TABLE storage.objects
    ADD COLUMN IF NOT EXISTS version text,
    ADD COLUMN IF NOT EXISTS archived_at timestamptz,
    ADD COLUMN IF NOT EXISTS is_delete_marker boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS is_versioned boolean NOT NULL DEFAULT false;
DROP INDEX IF EXISTS storage.bucketid_objname;
CREATE UNIQUE INDEX IF NOT EXISTS objects_bucket_id_name_version_key
    ON storage.objects (bucket_id, name COLLATE "C", version) NULLS NOT DISTINCT;
CREATE UNIQUE INDEX IF NOT EXISTS idx_objects_current_version
    ON storage.objects (bucket_id, name) WHERE archived_at IS NULL;
"""

_RLS_ENABLED = "SELECT relrowsecurity FROM pg_class WHERE oid = 'storage.objects'::regclass"


def ensure_storage_objects(server_url: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('portfolio_sync_test_storage'))")
            conn.execute(OBJECTS_DDL)
            enabled = conn.execute(_RLS_ENABLED).fetchone()
            if not (enabled and enabled[0]):  # ALTER TABLE locks it: only once
                conn.execute("ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY")


def object_metadata(size: int, *, etag: str = "0", mimetype: str = "image/jpeg") -> str:
    """`metadata` as Supabase Storage writes it for an uploaded object (JSON text)."""
    return json.dumps(
        {
            "eTag": f'"{etag}"',
            "size": size,
            "mimetype": mimetype,
            "cacheControl": "max-age=3600",
            "contentLength": size,
            "httpStatusCode": 200,
        }
    )


def forget_bucket(server_url: str, bucket: str) -> None:
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(
            "DELETE FROM storage.objects WHERE bucket_id = %s OR bucket_id LIKE %s",
            (bucket, bucket.replace("_", r"\_") + "-%"),  # and the test's other buckets
        )
