"""The user's portfolio table (SQLite or PostgreSQL) and our own bookkeeping tables.

Every write to the user's table is a compare-and-set against the value read before the
storage listing started (architecture invariant 1), so a concurrent writer always wins
over a stale listing. Statements are generated per dialect rather than through SQLAlchemy
expressions: the bulk pass runs them tens of thousands of times and the PostgreSQL batch
form (`UPDATE … FROM (VALUES …)`) needs explicit casts per column type.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from portfolio_sync.backends import db_errors, schema
from portfolio_sync.errors import CatalogError, ConfigError
from portfolio_sync.explain import database_error, missing_table
from portfolio_sync.models import Plan, Row
from portfolio_sync.sources import triggers

if TYPE_CHECKING:
    from portfolio_sync.config import Settings

logger = logging.getLogger(__name__)

ColumnKind = Literal["array", "jsonb", "json", "jsontext"]
KeyKind = Literal["int", "uuid", "text"]
_INT = re.compile(r"^-?[0-9]+$")
_FETCH_ROWS = 2000  # rows per fetch of the bulk read
_TYPE_HINT = (
    "an images column must be text[], jsonb or json (PostgreSQL) or JSON text; "
    "alter it or name another with --images-column"
)

Browse = Literal["error", "never", "held"]
#: Conditions of :meth:`Catalog.browse`'s `only`, on our state table `s` beside row `t`
#: (`{own}` joins the two). A new filter is one entry here.
BROWSE_FILTERS: dict[str, str] = {
    "error": "EXISTS (SELECT 1 FROM {state} AS s WHERE {own} AND s.last_error IS NOT NULL)",
    "never": "NOT EXISTS (SELECT 1 FROM {state} AS s WHERE {own} AND s.last_synced_at IS NOT NULL)",
    "held": "EXISTS (SELECT 1 FROM {state} AS s WHERE {own} AND s.held_at IS NOT NULL)",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ImagesColumn:
    name: str
    kind: ColumnKind
    sql_type: str  # as the dialect spells it, for casts


def check_sqlite_file(url: str) -> None:
    """ConfigError unless a SQLite URL names a file that exists (or is in memory)."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return
    if parsed.database.startswith("file:"):  # a URI: the driver's own rules apply
        return
    path = Path(parsed.database).resolve()
    if not path.exists():
        raise ConfigError(
            f"SQLite database {path} does not exist",
            hint="fix PORTFOLIO_SYNC_DATABASE_URL (relative paths in a config file are "
            "relative to its folder), or create it with your app (`portfolio-sync demo` "
            "makes a sample one)",
        )


def create_engine(url: str) -> sa.Engine:
    """An engine with the settings the sync needs; SQLite gets WAL so a long read and
    the batched writes of a bulk pass can overlap (and so the app keeps writing meanwhile).
    The pragmas apply to our connections only; the application's keep their own.
    """
    if url.startswith("sqlite"):
        timeout = db_errors.sqlite_lock_timeout(sa.make_url(url))
        engine = sa.create_engine(url, connect_args={"timeout": timeout})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # first: switching to WAL may wait
            cursor.execute(f"PRAGMA busy_timeout={round(timeout * 1000)}")
            cursor.execute("PRAGMA journal_mode=WAL")
            # No fsync per commit (WAL still keeps the file consistent): a commit lost to a
            # power cut is re-derived from storage by the next sync, and the fsync was most
            # of an event sync's time.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    engine = sa.create_engine(url, pool_size=8, max_overflow=8)
    _ping_idle_connections(engine)
    return engine


_FRESH_SECONDS = 5.0


def _ping_idle_connections(engine: sa.Engine) -> None:
    """``pool_pre_ping``, for connections idle for more than a few seconds only.

    The pre-ping is a round trip before every checkout, and an event sync checks out
    twice (read, then write): a fifth of its time. A connection returned a moment ago is
    alive unless the server went away in that moment, and then the one failing sync is
    retried like any database error. This is SQLAlchemy's documented custom pessimistic
    check: raising ``DisconnectionError`` makes the pool retry with a new connection.
    """
    dialect = engine.dialect

    @sa.event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is not None and time.monotonic() - idle_since < _FRESH_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_conn)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_conn, None):
                raise sa.exc.DisconnectionError(str(exc)) from exc
            raise


class Catalog:
    """Reads and compare-and-set writes of the portfolio table, plus our own tables."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        table: str,
        key_column: str,
        columns: Sequence[str],
        objects: bool = False,
    ):
        self.engine = engine
        #: The same pool, each statement committed on its own (single-statement work).
        self.autocommit_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.dialect = engine.dialect.name
        if self.dialect not in ("sqlite", "postgresql"):
            raise ConfigError(f"database {self.dialect!r} is not supported")
        schema_name, _, table_name = table.rpartition(".")
        self.table_name = table
        quote = identifier_quoter(engine.dialect)
        self._table_sql = (
            f"{quote(schema_name)}.{quote(table_name)}" if schema_name else quote(table_name)
        )
        try:
            reflected = sa.Table(
                table_name, sa.MetaData(), autoload_with=engine, schema=schema_name or None
            )
        except sa.exc.NoSuchTableError:
            raise missing_table(table, engine.url) from None
        except sa.exc.SQLAlchemyError as exc:
            raise database_error(exc, engine.url, doing=f"reading table {table}") from exc
        if key_column not in reflected.c:
            raise ConfigError(
                f"table {table!r} has no key column {key_column!r}",
                hint=f"name it with --key-column (columns: {', '.join(reflected.c.keys())})",
            )
        self.key_kind = _key_kind(reflected.c[key_column].type)
        self._key_sql = quote(key_column)
        self._key_type = reflected.c[key_column].type.compile(dialect=engine.dialect)
        missing = [c for c in columns if c not in reflected.c]
        if missing:
            raise ConfigError(
                f"table {table!r} has no images column(s) {', '.join(missing)}",
                hint="name yours with --images-column or --collections, or add it "
                f"(columns: {', '.join(reflected.c.keys())})",
            )
        self.columns = tuple(self._images_column(name, reflected.c[name].type) for name in columns)
        #: Elements are objects (`image_fields`), which a text[] column cannot hold.
        self.objects = objects
        arrays = [c.name for c in self.columns if c.kind == "array"]
        if objects and arrays:
            raise ConfigError(
                f"image_fields (PORTFOLIO_SYNC_IMAGE_FIELDS) makes each image a JSON object, "
                f"but column(s) {', '.join(arrays)} are text[]: use jsonb (ALTER TABLE … "
                "ALTER COLUMN … TYPE jsonb USING to_jsonb(…)), json or JSON text"
            )
        self.key_column = key_column
        self.all_columns = tuple(c.name for c in reflected.c)
        self.quote = self._quote = quote

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings, columns: Sequence[str]) -> Catalog:
        """Open the existing table; a SQLite file that does not exist is an error (creating
        an empty one would only move the failure to "no such table", in a new file)."""
        check_sqlite_file(settings.database_url)
        engine = create_engine(settings.database_url)
        try:
            return cls(
                engine,
                table=settings.table,
                key_column=settings.key_column,
                columns=columns,
                objects=bool(settings.image_fields),
            )
        except BaseException:
            engine.dispose()
            raise

    def close(self) -> None:
        self.engine.dispose()

    def describe(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _images_column(self, name: str, col_type: sa.types.TypeEngine[Any]) -> ImagesColumn:
        sql_type = col_type.compile(dialect=self.engine.dialect)
        kind: ColumnKind
        if self.dialect == "postgresql" and isinstance(col_type, sa.ARRAY):
            if not isinstance(col_type.item_type, sa.String):
                raise ConfigError(f"column {name!r} is {sql_type}", hint=_TYPE_HINT)
            kind = "array"
        elif self.dialect == "postgresql" and isinstance(col_type, postgresql.JSONB):
            kind = "jsonb"
        elif self.dialect == "postgresql" and isinstance(col_type, sa.JSON):
            kind = "json"
        elif isinstance(col_type, sa.String | sa.JSON) or self.dialect == "sqlite":
            kind = "jsontext"
        else:
            raise ConfigError(f"column {name!r} is {sql_type}", hint=_TYPE_HINT)
        return ImagesColumn(name=name, kind=kind, sql_type=sql_type)

    # ---- keys and values ------------------------------------------------------------------
    def key_value(self, key: str) -> Any | None:
        """The key column value for a folder name, or None if no row could have it."""
        if self.key_kind == "int":
            if not _INT.match(key) or str(int(key)) != key:
                return None
            value = int(key)  # outside BIGINT no row can have it (and drivers would raise)
            return value if -(2**63) <= value < 2**63 else None
        if self.key_kind == "uuid":
            try:
                return key if str(uuid.UUID(key)) == key else None
            except ValueError:
                return None
        return key

    def _select_list(self) -> str:
        parts = [self._key_sql]
        for col in self.columns:
            q = self._quote(col.name)
            parts.append(f"CAST({q} AS TEXT)" if col.kind in ("json", "jsonb") else q)
        return ", ".join(parts)

    def _row(self, record: Sequence[Any]) -> Row:
        if len(record) == 2:  # one images column: the bulk read's hot path
            key_value, value = record
            try:
                decoded = _decode(self.columns[0], value, self.objects)
            except ValueError as exc:
                return Row(
                    key=str(key_value),
                    key_value=key_value,
                    values=(None,),
                    raw=(value,),
                    invalid=f"column {self.columns[0].name}: {exc}",
                )
            return Row(key=str(key_value), key_value=key_value, values=(decoded,), raw=(value,))
        key_value = record[0]
        raw = tuple(record[1:])
        values: list[list[Any] | None] = []
        invalid: str | None = None
        for col, value in zip(self.columns, raw, strict=True):
            try:
                values.append(_decode(col, value, self.objects))
            except ValueError as exc:
                values.append(None)
                invalid = f"column {col.name}: {exc}"
        return Row(
            key=str(key_value), key_value=key_value, values=tuple(values), raw=raw, invalid=invalid
        )

    # ---- reads ------------------------------------------------------------------------------
    def read_row(self, key: str, *, conn: sa.Connection | None = None) -> Row | None:
        """The row of `key`, or None; read in `conn`'s transaction when given."""
        value = self.key_value(key)
        if value is None:
            return None
        sql = (
            _names(f"SELECT {self._select_list()} FROM {self._table_sql} WHERE {self._key_sql} = ")
            + ":k"
        )
        if conn is not None:
            try:
                record = conn.execute(sa.text(sql), {"k": value}).first()
            except sa.exc.SQLAlchemyError as exc:
                raise CatalogError(f"database error on {self.table_name}: {exc}") from exc
        else:
            with self._connect(autocommit=True) as own:
                record = own.execute(sa.text(sql), {"k": value}).first()
        return None if record is None else self._row(record)

    @contextmanager
    def snapshot(self) -> Iterator[sa.Connection]:
        """A read-only REPEATABLE READ transaction (PostgreSQL): every read through it sees
        the database as of its first statement, whatever commits meanwhile."""
        with self._connect() as conn:
            conn = conn.execution_options(
                isolation_level="REPEATABLE READ", postgresql_readonly=True
            )
            with conn.begin():
                yield conn

    @contextmanager
    def stream_rows(self) -> Iterator[Iterator[Row]]:
        """All rows in `storage.folder_order` of their key, read from one snapshot.

        The statement starts (and on PostgreSQL takes its snapshot) when this context is
        entered, i.e. before the caller starts listing storage: every value the bulk pass
        compares against predates its listing, as invariant 1 requires. Memory is bounded
        by one fetch: PostgreSQL reads through a server-side cursor, SQLite steps its
        statement as rows are consumed.
        """
        sql = f"SELECT {self._select_list()} FROM {self._table_sql} ORDER BY {self._folder_order()}"
        # The DBAPI cursor directly: this read is the bulk pass's hot path, and SQLAlchemy's
        # result rows cost more per row than decoding the row does.
        error = self.engine.dialect.loaded_dbapi.Error
        with self._connect() as conn:
            try:
                dbapi_conn: Any = conn.connection.dbapi_connection
                if self.dialect == "postgresql":
                    cursor = dbapi_conn.cursor(name="portfolio_sync_rows")
                else:
                    cursor = dbapi_conn.cursor()
            except error as exc:
                raise self._explained(exc, "reading") from exc
            try:
                try:
                    cursor.execute(sql)
                    first = cursor.fetchmany(_FETCH_ROWS)  # forces the snapshot now
                except error as exc:
                    raise self._explained(exc, "reading") from exc
                yield self._iter_rows(first, cursor, error)
            finally:
                try:
                    cursor.close()
                except error:
                    pass  # the connection is going back to the pool, which resets it

    def _iter_rows(self, batch: list[Any], cursor: Any, error: type[Exception]) -> Iterator[Row]:
        make = self._row
        try:
            while batch:
                for record in batch:
                    yield make(record)
                batch = cursor.fetchmany(_FETCH_ROWS)
        except error as exc:
            raise self._explained(exc, "reading") from exc

    def _folder_order(self) -> str:
        """`storage.folder_order` of the key in SQL: the UTF-8 bytes of `key/` (SQLite's
        BINARY collation and PostgreSQL's "C" both compare bytes)."""
        collate = ' COLLATE "C"' if self.dialect == "postgresql" else ""
        return f"(CAST({self._key_sql} AS TEXT) || '/'){collate}"

    def browse(
        self,
        after: str | None,
        limit: int,
        *,
        search: str | None = None,
        only: Browse | None = None,
    ) -> list[str]:
        """Up to `limit` keys after `after` in the key column's own order, for the console.

        Integer keys sort as numbers (1, 2, …, 10: the natural order people expect) and
        text keys by the column's collation. Both walk the primary key's index, so a page
        deep into 100k rows costs what the first does (`stream_rows`' folder order is an
        expression no index has: a page in that order sorted the whole table, 117 ms at
        100k on SQLite against 0.7 ms). `search` keeps keys containing it; `only` keeps
        the keys a `BROWSE_FILTERS` condition on our state table selects.
        """
        key, table = _names(self._key_sql), _names(self._table_sql)
        state = schema.state.name
        clauses: list[str] = []
        params: dict[str, Any] = {"n": limit}
        if after is not None:
            value = self.key_value(after)
            if value is not None:
                clauses.append(f"t.{key} > CAST(:after AS {self._key_type})")
                params["after"] = value
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(f"CAST(t.{key} AS TEXT) LIKE :search ESCAPE '\\'")
            params["search"] = f"%{escaped}%"
        if only is not None:
            own = f"s.{self._quote('key')} = CAST(t.{key} AS TEXT)"
            clauses.append(BROWSE_FILTERS[only].format(state=self._quote(state), own=own))
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        sql = f"SELECT CAST(t.{key} AS TEXT) FROM {table} AS t {where}ORDER BY t.{key} LIMIT :n"
        with self._connect(autocommit=True) as conn:
            return [str(k) for k in conn.execute(sa.text(sql), params).scalars()]

    def count_rows(self) -> int:
        with self._connect() as conn:
            return int(
                conn.execute(
                    sa.text(_names(f"SELECT count(*) FROM {self._table_sql}"))
                ).scalar_one()
            )

    def count_nonempty(self) -> int:
        """Rows whose images columns hold at least one image (any column): the streaming
        guard's denominator. Decided in SQL without parsing values, so an unreadable value
        cannot fail the count: a JSON text is non-empty when it starts like `["…`."""
        tests = []
        for col in self.columns:
            q = self._quote(col.name)
            if col.kind == "array":
                tests.append(f"cardinality({q}) > 0")
                continue
            text = f"CAST({q} AS TEXT)" if col.kind in ("json", "jsonb") else q
            starts = f"ltrim(substr(ltrim({text}), 2))"
            tests.append(f"(ltrim({text}) LIKE '[%' AND {starts} LIKE '\"%')")
        sql = f"SELECT count(*) FROM {self._table_sql} WHERE {' OR '.join(tests)}"
        with self._connect(autocommit=True) as conn:
            return int(conn.execute(sa.text(sql)).scalar_one())

    # ---- writes -----------------------------------------------------------------------------
    def apply(
        self, plans: Sequence[Plan], *, trigger: str, durations: dict[str, float] | None = None
    ) -> set[str]:
        """Compare-and-set every plan in one transaction; returns the keys written.

        A plan whose row changed since it was read is skipped (not an error): the caller
        re-reads and re-lists it. History and state rows of the written keys are recorded
        in the same transaction, so history never claims a write that did not happen.
        """
        if not plans:
            return set()
        try:
            with self.engine.begin() as conn:
                if self.dialect == "postgresql":
                    written = self._cas_postgres(conn, plans)
                else:
                    written = self._cas_sqlite(conn, plans)
                done = [p for p in plans if p.key in written]
                schema.record_writes(
                    conn,
                    done,
                    trigger=trigger,
                    durations=durations or {},
                    columns=[c.name for c in self.columns],
                )
        except sa.exc.SQLAlchemyError as exc:
            raise self._explained(exc, "writing") from exc
        return written

    def _encode(self, col: ImagesColumn, value: list[Any] | None) -> Any:
        if value is None or col.kind == "array":
            return value
        return json.dumps(value, ensure_ascii=False)

    def _cas_sqlite(self, conn: sa.Connection, plans: Sequence[Plan]) -> set[str]:
        sets = ", ".join(f"{self._quote(c.name)} = ?" for c in self.columns)
        checks = " AND ".join(f"{self._quote(c.name)} IS ?" for c in self.columns)
        sql = f"UPDATE {self._table_sql} SET {sets} WHERE {self._key_sql} = ? AND {checks}"
        # The DBAPI cursor, in the transaction `conn` has open: one statement per plan (the
        # rowcount tells which rows matched) and SQLAlchemy's per-statement cost, paid
        # hundreds of times per batch, was most of a bulk pass's write time.
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        written = set()
        meta = self._quote(schema.meta.name)
        try:
            # The mark the row triggers check: our own writes are not new work. Inserted
            # and deleted in this transaction, so no other connection ever sees it.
            cursor.execute(
                f"INSERT OR REPLACE INTO {meta} (name, value) VALUES (?, '')",
                (triggers.OWN_WRITE_MARKER,),
            )
            for plan in plans:
                params = [self._encode(col, plan.new[i]) for i, col in enumerate(self.columns)]
                params.append(plan.key_value)
                params.extend(plan.expected)
                cursor.execute(sql, params)
                if cursor.rowcount == 1:
                    written.add(plan.key)
            cursor.execute(f"DELETE FROM {meta} WHERE name = ?", (triggers.OWN_WRITE_MARKER,))
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self._explained(exc, "writing") from exc
        finally:
            cursor.close()
        return written

    def _cas_postgres(self, conn: sa.Connection, plans: Sequence[Plan]) -> set[str]:
        cols = self.columns
        names = ["k"] + [f"{p}{i}" for i in range(len(cols)) for p in ("e", "n")]
        cells = [f"CAST(%s AS {self._key_type})"]
        for col in cols:
            cast = "jsonb" if col.kind in ("json", "jsonb") else col.sql_type
            cells += [f"CAST(%s AS {cast})", f"CAST(%s AS {cast})"]
        row_sql = f"({', '.join(cells)})"
        params: list[Any] = []
        for plan in plans:
            params.append(plan.key_value)
            for i, col in enumerate(cols):
                params.append(plan.expected[i])
                params.append(self._encode(col, plan.new[i]))
        sets = ", ".join(
            f"{self._quote(c.name)} = CAST(v.n{i} AS {c.sql_type})" for i, c in enumerate(cols)
        )
        checks = " AND ".join(
            (
                f"CAST(t.{self._quote(c.name)} AS jsonb)"
                if c.kind == "json"
                else f"t.{self._quote(c.name)}"
            )
            + f" IS NOT DISTINCT FROM v.e{i}"
            for i, c in enumerate(cols)
        )
        head = f"UPDATE {self._table_sql} AS t SET {sets} FROM (VALUES ".replace("%", "%%")
        # `own` turns on the transaction-local setting the row trigger checks (our writes are
        # not new work) in this statement rather than one more round trip: no row can be
        # updated before the one-row subquery that sets it was evaluated.
        own = f"(SELECT set_config('{triggers.OWN_WRITE_SETTING}', 'on', true)) AS own(mark)"
        tail = (
            f") AS v({', '.join(names)}) CROSS JOIN {own} "
            f"WHERE t.{self._key_sql} = v.k AND {checks} "
            f"RETURNING CAST(t.{self._key_sql} AS TEXT)"
        ).replace("%", "%%")
        sql = head + ", ".join([row_sql] * len(plans)) + tail
        # The DBAPI cursor, in the transaction `conn` has open: positional parameters spare
        # SQLAlchemy parsing thousands of named ones per batch.
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql, params)
            return {str(k) for (k,) in cursor.fetchall()}
        except self.engine.dialect.loaded_dbapi.Error as exc:
            raise self._explained(exc, "writing") from exc
        finally:
            cursor.close()

    @contextmanager
    def _connect(self, *, autocommit: bool = False) -> Iterator[sa.Connection]:
        """A pooled connection; with ``autocommit``, for one statement: no BEGIN and no
        ROLLBACK round trips around it (an event sync's read is one SELECT)."""
        try:
            with (self.autocommit_engine if autocommit else self.engine).connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise self._explained(exc, "using") from exc

    def _explained(self, exc: BaseException, doing: str) -> CatalogError:
        return database_error(exc, self.engine.url, doing=f"{doing} {self.table_name}")


def identifier_quoter(dialect: sa.Dialect) -> Callable[[str], str]:
    """The dialect's identifier quoting (a ``"`` inside a name is doubled; plain lower-case
    names stay bare), for SQL text exactly as the server reads it.

    SQLAlchemy's own ``quote()`` also doubles ``%`` for drivers with ``%s`` parameters,
    expecting to hand the statement to them with parameters. Ours reaches the driver in
    several ways (DDL and cursors without parameters, ``sa.text()`` which doubles ``%``
    itself), so names are kept exact here and a caller passing parameters straight to the
    driver escapes the whole statement (see ``_cas_postgres``).
    """
    quote = dialect.identifier_preparer.quote
    if dialect.paramstyle not in ("format", "pyformat"):
        return quote
    return lambda name: quote(name).replace("%%", "%")


def _names(sql: str) -> str:
    """SQL made of quoted names and no parameters, made safe for ``sa.text()``: a colon in
    a name (``"a:b"``) would otherwise be read as a bind parameter. Append the ``:param``
    markers after this."""
    return sql.replace(":", "\\:")


def _key_kind(col_type: sa.types.TypeEngine[Any]) -> KeyKind:
    if isinstance(col_type, sa.Integer):
        return "int"
    if isinstance(col_type, sa.Uuid):
        return "uuid"
    return "text"


def _decode(col: ImagesColumn, value: Any, objects: bool = False) -> list[Any] | None:
    """The list a stored value holds; ValueError if it is not a list of strings (with
    `objects`: of strings or objects with a string `path`)."""
    if value is None:
        return None
    if col.kind != "array":
        if not isinstance(value, str):
            raise ValueError(f"expected JSON text, found {type(value).__name__}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            if not value.strip():  # blank text counts as NULL
                return None
            raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(value, list):
        raise ValueError("not a list")
    if all(map(isinstance, value, repeat(str))):
        return value
    if objects:
        if all(isinstance(v, str) or _is_element(v) for v in value):
            return value
        raise ValueError("not a list of objects with a string 'path' (or of strings)")
    raise ValueError("not a list of strings")


def _is_element(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("path"), str)


def utcnow() -> datetime:
    return datetime.now(UTC)
