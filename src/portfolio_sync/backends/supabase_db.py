"""Supabase Storage listed from its own table, `storage.objects`, instead of over HTTP.

On Supabase every object of every bucket is a row of `storage.objects` in the project's
database, written in the same transaction that makes the object visible (and that fires
the `setup --storage-objects` trigger). Reading the table therefore never lags an event,
needs no S3 keys, and turns a full pass into one ordered scan of an index.

Queries are ranges on `(bucket_id, name COLLATE "C")`, the column order and collation of
Supabase's `idx_objects_bucket_id_name` (storage migration 0020; on versioned schemas
`objects_bucket_id_name_version_key`, 0065): the folder `k/` is
`name >= 'k/' AND name < 'k0'` ('0' is the byte after '/'), which under "C" is exactly the
names starting with `k/`, in UTF-8 byte order — the order `folder_order` and the merge rely
on. Never `LIKE`: a pattern is one `_` or `%` in a key away from a wrong listing, and a
leading wildcard away from a scan of every bucket.

An object's size is `metadata->'size'`; an object without one (its upload has not
finished: Supabase fills `metadata` when it has) counts as zero bytes, so it is listed but
never an image until the metadata update, which fires the trigger again. `uploaded`
order is `created_at`. Rows of older versions and delete markers (versioned buckets) are
not objects.

A role reads the table only if it has SELECT on it and row-level security does not filter
what it sees: `storage.objects` has RLS enabled, and a filtered listing would look like
deleted images. Both are checked when the storage is opened and named in the error.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import compress, count, pairwise
from operator import itemgetter, methodcaller, ne
from typing import Any

import psycopg
import sqlalchemy as sa

from portfolio_sync.backends.storage import Group, ObjectNotFound, make_objects
from portfolio_sync.errors import StorageError
from portfolio_sync.explain import database_error
from portfolio_sync.models import ObjectInfo, RootProbe

TABLE = "storage.objects"
_FETCH = 20_000  # rows per round trip of the full scan's cursor

_SIZE = (
    "CASE jsonb_typeof(metadata -> 'size') WHEN 'number' THEN (metadata -> 'size')::bigint "
    "ELSE 0 END"
)
_MTIME = "COALESCE(date_part('epoch', created_at), 0)"
_partition_slash = methodcaller("partition", "/")


def name_range(prefix: str) -> tuple[str, str | None]:
    """`[low, high)` of the names under `prefix` in byte order ("C" collation).

    `prefix` is a folder path (ends with `/`) or empty (the whole bucket: no upper bound).
    """
    if not prefix:
        return "", None
    if not prefix.endswith("/"):
        raise ValueError(f"not a folder path: {prefix!r}")
    return prefix, prefix[:-1] + "0"


class SupabaseDbStorage:
    """One bucket (optionally a prefix in it) of `storage.objects`, read with SQL.

    `engine` is the catalog's own engine when the bucket lives in the portfolio table's
    database (then a per-key sync reads the row and the folder in one snapshot, see
    `list_prefix_in`), else an engine of its own, closed with the storage.
    """

    def __init__(
        self, bucket: str, *, prefix: str = "", engine: sa.Engine, owns_engine: bool = False
    ) -> None:
        self.bucket = bucket
        prefix = prefix.strip("/")
        self.root = f"{prefix}/" if prefix else ""
        self.engine = engine
        self._owns_engine = owns_engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        where = engine.url.render_as_string(hide_password=True)
        self.description = f"supabase-db://{bucket}/{prefix}".rstrip("/") + f" ({TABLE} in {where})"
        self._live = ""  # the filter for current versions, when the table has versions
        self.check()

    # ---- the Storage protocol --------------------------------------------------------------
    def check(self) -> None:
        """Raise StorageError unless this role can read every row of the table."""
        with self._cursor() as cursor:
            try:
                cursor.execute(_INSPECT)
                found = cursor.fetchone()
            except psycopg.Error as exc:
                raise self._error("cannot inspect", exc) from exc
        if found is None or found[0] is None:
            raise StorageError(
                f"{self.description}: there is no table {TABLE} (it exists on Supabase databases)"
            )
        _, role, usage, select, filtered, versioned = found
        if not usage or not select:
            missing = [
                text
                for ok, text in ((usage, "USAGE on schema storage"), (select, f"SELECT on {TABLE}"))
                if not ok
            ]
            grants = "; ".join(f"GRANT {what} TO {role}" for what in missing)
            raise StorageError(
                f"{self.description}: role {role!r} lacks {' and '.join(missing)} ({grants}), "
                "or connect as Supabase's postgres role"
            )
        if filtered:
            raise StorageError(
                f"{self.description}: row-level security on {TABLE} filters what role "
                f"{role!r} sees, so objects could look deleted; connect as a role with "
                "BYPASSRLS (Supabase's postgres role has it) or the table's owner"
            )
        self._live = " AND archived_at IS NULL AND NOT is_delete_marker" if versioned else ""

    def probe(self, prefix: str) -> RootProbe:
        """One indexed query: is there any current object under `prefix`?"""
        sql, params = self._query(prefix)
        with self._cursor() as cursor:
            try:
                cursor.execute(sql + " LIMIT 1", params)
                found = cursor.fetchone()
            except psycopg.Error as exc:
                raise self._error("cannot list", exc, prefix) from exc
        return RootProbe(device=None, has_objects=found is not None)

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        with self._cursor() as cursor:
            return self._list(cursor, prefix)

    def list_prefix_in(self, conn: sa.Connection, prefix: str) -> list[ObjectInfo]:
        """`list_prefix` inside the caller's transaction on this storage's database, so a
        row read in the same transaction is from the same snapshot as the listing."""
        dbapi: Any = conn.connection.dbapi_connection
        with dbapi.cursor() as cursor:
            return self._list(cursor, prefix)

    def shares(self, engine: sa.Engine) -> bool:
        """Whether `engine` reaches this storage's database through the same pool."""
        return engine is self.engine

    def iter_folders(self, prefix: str) -> Iterator[Group]:
        """One ordered scan of the bucket under `prefix`, read through a server-side cursor
        while the caller works on the folders already read (one batch ahead)."""
        sql, params = self._query(prefix)
        try:
            conn = self.engine.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise self._unreachable(exc) from exc
        with conn:
            dbapi: Any = conn.connection.dbapi_connection
            cursor = dbapi.cursor(name="portfolio_sync_objects")
            ahead = ThreadPoolExecutor(1, thread_name_prefix="portfolio-sync-objects")
            try:
                try:
                    cursor.execute(sql, params)
                except psycopg.Error as exc:
                    raise self._error("cannot list", exc, prefix) from exc
                first = ahead.submit(cursor.fetchmany, _FETCH)
                yield from _group(self._batches(first, cursor, ahead, prefix), len(prefix))
            finally:
                ahead.shutdown(wait=True)  # no fetch may still use the cursor
                try:
                    cursor.close()
                except psycopg.Error:
                    pass  # the connection goes back to the pool, which resets it

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        # The table holds names and metadata, not the bytes (they are in Supabase's object
        # store, reached over HTTP with keys this backend exists to do without).
        raise ObjectNotFound(f"{self.description} lists objects; it cannot read {path}")

    def read_range(self, path: str, start: int, length: int) -> bytes:
        raise ObjectNotFound(f"{self.description} lists objects; it cannot read {path}")

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    # ---- queries ---------------------------------------------------------------------------
    def _query(self, prefix: str) -> tuple[str, dict[str, Any]]:
        low, high = name_range(self.root + prefix)
        bound = ' AND name COLLATE "C" < %(high)s' if high is not None else ""
        sql = (
            f"SELECT name, {_SIZE}, {_MTIME} FROM {TABLE} "
            f'WHERE bucket_id = %(bucket)s AND name COLLATE "C" >= %(low)s{bound}{self._live} '
            'ORDER BY name COLLATE "C"'
        )
        return sql, {"bucket": self.bucket, "low": low, "high": high}

    def _list(self, cursor: Any, prefix: str) -> list[ObjectInfo]:
        sql, params = self._query(prefix)
        try:
            cursor.execute(sql, params)
            rows: list[tuple[str, int, float]] = cursor.fetchall()
        except psycopg.Error as exc:
            raise self._error("cannot list", exc, prefix) from exc
        if not rows:
            return []
        names, sizes, mtimes = map(list, zip(*rows, strict=True))
        return make_objects(self._paths(names), sizes, mtimes)

    def _paths(self, names: list[str]) -> list[str]:
        cut = len(self.root)
        return list(map(itemgetter(slice(cut, None)), names)) if cut else names

    def _batches(
        self,
        pending: Future[list[tuple[str, int, float]]],
        cursor: Any,
        ahead: ThreadPoolExecutor,
        prefix: str,
    ) -> Iterator[tuple[list[str], list[int], list[float]]]:
        while True:
            try:
                rows = pending.result()
            except psycopg.Error as exc:
                raise self._error("cannot list", exc, prefix) from exc
            if not rows:
                return
            pending = ahead.submit(cursor.fetchmany, _FETCH)
            names, sizes, mtimes = map(list, zip(*rows, strict=True))
            yield self._paths(names), sizes, mtimes

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A DBAPI cursor on a pooled connection in autocommit (one statement each)."""
        try:
            conn = self._autocommit.connect()
        except sa.exc.SQLAlchemyError as exc:
            raise self._unreachable(exc) from exc
        with conn:
            dbapi: Any = conn.connection.dbapi_connection
            with dbapi.cursor() as cursor:
                yield cursor

    def _unreachable(self, exc: sa.exc.SQLAlchemyError) -> StorageError:
        """The database's own wording (explain.py): one line, password hidden, a hint."""
        failure = database_error(exc, self.engine.url)
        return StorageError(f"{self.description}: {failure.message}", hint=failure.hint)

    def _error(self, doing: str, exc: psycopg.Error, prefix: str | None = None) -> StorageError:
        where = f" ({self.root}{prefix or ''})" if prefix is not None else ""
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return StorageError(
                f"{doing} {self.description}{where}: the role lacks SELECT on {TABLE} "
                f"(or USAGE on schema storage): {str(exc).strip()}"
            )
        return StorageError(f"{doing} {self.description}{where}: {str(exc).strip()}")


#: (table, role, USAGE on its schema, SELECT on it, RLS filters this role, has versions)
_INSPECT = """
SELECT c.oid, current_user,
       has_schema_privilege(c.relnamespace, 'USAGE'),
       has_table_privilege(c.oid, 'SELECT'),
       row_security_active(c.oid),
       (SELECT count(*) = 2 FROM pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped
          AND a.attname IN ('archived_at', 'is_delete_marker'))
FROM (SELECT 1) one
LEFT JOIN pg_class c ON c.relname = 'objects' AND c.relkind IN ('r', 'p', 'v')
  AND c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'storage')
"""


def _group(
    batches: Iterator[tuple[list[str], list[int], list[float]]], start: int
) -> Iterator[Group]:
    """(folder, objects) from byte-ordered columns of paths, sizes and mtimes.

    The folder of a path is its segment after `start`; paths without a `/` after it (files
    directly in the prefix) belong to none. Runs of one folder are found with whole-list
    operations, as a bulk pass reads a million paths this way.
    """
    current: str | None = None
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[float] = []
    for batch_paths, batch_sizes, batch_mtimes in batches:
        tails = map(itemgetter(slice(start, None)), batch_paths) if start else batch_paths
        heads = list(map(_partition_slash, tails))
        if not all(map(itemgetter(1), heads)):
            keep = list(map(itemgetter(1), heads))
            heads = list(compress(heads, keep))
            batch_paths = list(compress(batch_paths, keep))
            batch_sizes = list(compress(batch_sizes, keep))
            batch_mtimes = list(compress(batch_mtimes, keep))
        folders = list(map(itemgetter(0), heads))
        edges = [0, *compress(count(1), map(ne, folders[1:], folders)), len(folders)]
        for lo, hi in pairwise(edges):
            if lo == hi:
                continue
            folder = folders[lo]
            if folder != current:
                if current is not None:
                    yield current, make_objects(paths, sizes, mtimes)
                current, paths, sizes, mtimes = folder, [], [], []
            paths += batch_paths[lo:hi]
            sizes += batch_sizes[lo:hi]
            mtimes += batch_mtimes[lo:hi]
    if current is not None:
        yield current, make_objects(paths, sizes, mtimes)


def open_supabase_db(
    bucket: str, prefix: str, *, engine: sa.Engine | None, database_url: str | None
) -> SupabaseDbStorage:
    """The bucket on `engine` (the catalog's) or, given `database_url`, on its own engine."""
    from portfolio_sync.backends.catalog import create_engine

    if database_url is not None:
        own = create_engine(database_url)
        try:
            return SupabaseDbStorage(bucket, prefix=prefix, engine=own, owns_engine=True)
        except BaseException:
            own.dispose()
            raise
    if engine is None:
        raise StorageError("supabase-db storage needs the catalog's PostgreSQL engine")
    return SupabaseDbStorage(bucket, prefix=prefix, engine=engine)


__all__: Sequence[str] = ("SupabaseDbStorage", "name_range", "open_supabase_db")
