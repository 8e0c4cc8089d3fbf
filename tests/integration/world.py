"""A portfolio table plus a storage root, on one of the two matrices.

`World` gives tests one vocabulary for both matrices (SQLite + local folder, PostgreSQL +
moto S3): create the table, put and delete objects, read a row's images, count row writes
with a database trigger (not by trusting the product's report), and get Settings or the
environment for a subprocess.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from portfolio_sync.config import Settings, load_settings
from portfolio_sync.wiring import Service, open_service
from tests.servers import S3Target

JPEG = b"\xff\xd8\xff\xe0" + b"0" * 60  # non-empty: zero-byte objects are not images


@dataclass
class World:
    """`kind`: sqlite-folder, postgres-folder, postgres-s3 or postgres-supabase-db (objects
    are rows of the shared `storage.objects`, bucket `bucket`, removed by `close`)."""

    kind: str
    database_url: str
    root: Path | None = None
    s3: S3Target | None = None
    bucket: str | None = None
    column_types: dict[str, str] = field(default_factory=dict)
    key_type: str = "int"
    _engine: sa.Engine | None = None

    @property
    def postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            self._engine = sa.create_engine(url)
        return self._engine

    def close(self) -> None:
        if self.bucket is not None:
            self.execute("DELETE FROM storage.objects WHERE bucket_id = :b", {"b": self.bucket})
        if self._engine is not None:
            self._engine.dispose()

    # ---- settings ---------------------------------------------------------------------
    def overrides(self) -> dict[str, Any]:
        values: dict[str, Any] = {"database_url": self.database_url}
        if self.s3 is not None:
            values.update(
                storage_url=f"s3://{self.s3.bucket}",
                s3_endpoint=self.s3.endpoint,
                aws_access_key_id=self.s3.access_key,
                aws_secret_access_key=self.s3.secret_key,
                aws_region=self.s3.region,
            )
        elif self.bucket is not None:
            values["storage_url"] = f"supabase-db://{self.bucket}"
        else:
            assert self.root is not None
            values["storage_url"] = str(self.root)
        return values

    def settings(self, **more: Any) -> Settings:
        return load_settings(None, **{**self.overrides(), **more})

    @contextmanager
    def service(self, **more: Any) -> Iterator[Service]:
        with open_service(self.settings(**more)) as svc:
            yield svc

    def env(self, **more: str) -> dict[str, str]:
        """Environment for a `portfolio-sync` subprocess pointed at this world."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTFOLIO_SYNC_", "AWS_"))}
        env["PORTFOLIO_SYNC_DATABASE_URL"] = self.database_url
        if self.s3 is not None:
            env.update(self.s3.env())
        elif self.bucket is not None:
            env["PORTFOLIO_SYNC_STORAGE_URL"] = f"supabase-db://{self.bucket}"
        else:
            env["PORTFOLIO_SYNC_STORAGE_URL"] = str(self.root)
        env.update(more)
        return env

    # ---- storage ----------------------------------------------------------------------
    def put(self, path: str, data: bytes = JPEG) -> None:
        if self.s3 is not None:
            self.s3.put(path, data)
        elif self.bucket is not None:
            self.put_rows([path], data)
        else:
            assert self.root is not None
            target = self.root.joinpath(*path.split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)

    def put_many(self, paths: list[str], data: bytes = JPEG) -> None:
        """Many uploads at once (moto answers one request at a time per connection)."""
        from concurrent.futures import ThreadPoolExecutor

        if self.bucket is not None:
            self.put_rows(paths, data)
            return

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda p: self.put(p, data), paths))

    def put_rows(self, paths: list[str], data: bytes = JPEG) -> None:
        """Uploads as Supabase Storage records them: an upserted `storage.objects` row per
        object, its size in `metadata` (one transaction)."""
        from tests.integration.supabase import object_metadata

        rows = [{"b": self.bucket, "n": path, "m": object_metadata(len(data))} for path in paths]
        self.execute_many(
            "INSERT INTO storage.objects (bucket_id, name, metadata) "
            "VALUES (:b, :n, CAST(:m AS jsonb)) ON CONFLICT (bucket_id, name) "
            "DO UPDATE SET metadata = EXCLUDED.metadata, updated_at = now()",
            rows,
        )

    def delete(self, path: str) -> None:
        if self.s3 is not None:
            self.s3.delete(path)
        elif self.bucket is not None:
            self.execute(
                "DELETE FROM storage.objects WHERE bucket_id = :b AND name = :n",
                {"b": self.bucket, "n": path},
            )
        else:
            assert self.root is not None
            self.root.joinpath(*path.split("/")).unlink()

    # ---- table ------------------------------------------------------------------------
    def create_table(
        self, *, key: str = "int", columns: dict[str, str] | None = None, table: str = "portfolios"
    ) -> None:
        """`columns` maps column name to "array" | "jsonb" | "json" | "text" (default:
        text[] on Postgres, JSON text on SQLite)."""
        columns = columns or {"images": "array" if self.postgres else "text"}
        self.column_types = dict(columns)
        self.key_type = key
        key_sql = {
            "int": "INTEGER PRIMARY KEY",
            "text": "TEXT PRIMARY KEY",
            "uuid": "UUID PRIMARY KEY",
        }[key]
        sql_types = {"array": "TEXT[]", "jsonb": "JSONB", "json": "JSON", "text": "TEXT"}
        cols = ", ".join(f"{name} {sql_types[kind]}" for name, kind in columns.items())
        with self.engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (id {key_sql}, title TEXT, {cols})"))
            conn.execute(sa.text("CREATE TABLE write_log (key TEXT, at_ms BIGINT)"))
            self._log_into(conn, "write_log", table, "UPDATE", "NEW.id::text, 0", "NEW.id, 0")

    def _encode(self, column: str) -> str:
        kind = self.column_types[column]
        return {
            "array": f"CAST(:{column} AS TEXT[])",
            "jsonb": f"CAST(:{column} AS JSONB)",
            "json": f"CAST(:{column} AS JSON)",
        }.get(kind, f":{column}")

    def _value(self, column: str, images: list[str] | None) -> Any:
        if images is None or self.column_types[column] == "array":
            return images
        return json.dumps(images)

    def insert(self, key: Any, images: list[str] | None = None, **others: list[str] | None) -> None:
        values = {next(iter(self.column_types)): images, **others}
        cols = ", ".join(values)
        params = ", ".join(self._encode(c) for c in values)
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(
                    f"INSERT INTO portfolios (id, title, {cols}) VALUES (:id, 'title', {params})"
                ),
                {"id": key, **{c: self._value(c, v) for c, v in values.items()}},
            )

    def set_images(self, key: Any, images: list[str] | None, column: str | None = None) -> None:
        column = column or next(iter(self.column_types))
        with self.engine.begin() as conn:
            conn.execute(
                sa.text(f"UPDATE portfolios SET {column} = {self._encode(column)} WHERE id = :id"),
                {"id": key, column: self._value(column, images)},
            )

    def images(self, key: Any, column: str | None = None) -> list[str] | None:
        column = column or next(iter(self.column_types))
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.text(f"SELECT {column} FROM portfolios WHERE id = :id"), {"id": key}
            ).scalar_one()
        if isinstance(value, str):
            return list(json.loads(value))
        return value  # type: ignore[no-any-return]

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params or {})

    def execute_many(self, sql: str, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), rows)

    def writes(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM write_log")).scalar_one())

    def log_syncs(self) -> None:
        """Count every finished sync of a row from the database's side, independently of
        the product's report: each one (written, unchanged or failed) upserts the key's
        ``portfolio_sync_state`` row, and a trigger there logs the key to ``sync_log``."""
        from portfolio_sync.backends import schema

        schema.migrate(self.engine)
        with self.engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE sync_log (key TEXT)"))
            for op in ("INSERT", "UPDATE"):
                self._log_into(conn, "sync_log", "portfolio_sync_state", op, "NEW.key", "NEW.key")

    def _log_into(
        self, conn: sa.Connection, log: str, table: str, op: str, pg_values: str, values: str
    ) -> None:
        """A trigger appending ``values`` (``pg_values`` on PostgreSQL) to ``log`` after
        each ``op`` on ``table``."""
        name = f"{log}_{table}_{op}".lower()
        if self.postgres:
            conn.execute(
                sa.text(
                    f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    f"BEGIN INSERT INTO {log} VALUES ({pg_values}); RETURN NEW; END $$"
                )
            )
            action = f"FOR EACH ROW EXECUTE FUNCTION {name}()"
        else:
            action = f"BEGIN INSERT INTO {log} VALUES ({values}); END"
        conn.execute(sa.text(f"CREATE TRIGGER {name} AFTER {op} ON {table} {action}"))

    def syncs(self, key: Any) -> int:
        """Syncs of ``key`` finished since :meth:`log_syncs`."""
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM sync_log WHERE key = :k"), {"k": str(key)}
                ).scalar_one()
            )

    def written_keys(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(
                str(k) for k in conn.execute(sa.text("SELECT key FROM write_log")).scalars()
            )
