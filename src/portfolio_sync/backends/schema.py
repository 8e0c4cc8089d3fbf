"""Our own tables (sync state, history, meta) and their versioned migrations.

They live beside the user's table in the same database, so history is written in the
same transaction as the row it describes. Migrations are numbered and applied in order
under a lock; `schema_version` in `portfolio_sync_meta` records how far a database got.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa

from portfolio_sync.backends import db_errors
from portfolio_sync.errors import CatalogError
from portfolio_sync.models import Plan

metadata = sa.MetaData()


def _id_column() -> sa.Column[int]:
    """Auto-increment id; INTEGER on SQLite, where only that type aliases the rowid."""
    return sa.Column(
        "id",
        sa.BigInteger().with_variant(sa.Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


meta = sa.Table(
    "portfolio_sync_meta",
    metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

state = sa.Table(
    "portfolio_sync_state",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("last_synced_at", sa.DateTime(timezone=True)),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("last_error", sa.Text),
    sa.Column("last_error_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    # A write the streaming guard held for an operator (`release`); any later write or
    # in-sync check of the key clears it.
    sa.Column("held_at", sa.DateTime(timezone=True)),
    sa.Column("held_reason", sa.Text),
    sa.Column("held_write", sa.JSON),
)

history = sa.Table(
    "portfolio_sync_history",
    metadata,
    _id_column(),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("trigger", sa.String(200), nullable=False),
    sa.Column("added", sa.JSON, nullable=False),
    sa.Column("removed", sa.JSON, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    # the row's previous value per column ({"images": [...]}), so a reverted edit can be
    # read back (and redone by hand); an unreadable value is kept raw. NULL for entries
    # that are not row writes
    sa.Column("replaced", sa.JSON),
    sa.Index("portfolio_sync_history_key_at", "key", "at"),
)


outbox = sa.Table(
    "portfolio_sync_outbox",
    metadata,
    _id_column(),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("op", sa.String(16), nullable=False),
    sa.Column("old_images", sa.Text),
)


emptying = sa.Table(
    "portfolio_sync_emptying",
    metadata,
    _id_column(),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("portfolio_sync_emptying_at", "at"),
)

_HELD_COLUMNS = ("held_at", "held_reason", "held_write")

# What reading an image told, so a file is read once: a row is valid while the listing
# shows the same size and mtime for its path (`version`: the mtime as text).
images = sa.Table(
    "portfolio_sync_images",
    metadata,
    sa.Column("path", sa.Text, primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    sa.Column("type", sa.String(100)),
    sa.Column("placeholder", sa.String(200)),
    sa.Column("error", sa.Text),
    sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
)


#: Standard Webhooks ``webhook-id`` values already acted on (digests), shared by every
#: process on the database and kept across restarts for ``WEBHOOK_ID_TTL``.
webhook_ids = sa.Table(
    "portfolio_sync_webhook_ids",
    metadata,
    sa.Column("digest", sa.String(64), primary_key=True),
    sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Index("portfolio_sync_webhook_ids_seen_at", "seen_at"),
)

#: How long a webhook-id is remembered: senders retry a failed delivery for hours (Svix
#: for about a day), and a delivery they retry after success must still be recognised.
WEBHOOK_ID_TTL = timedelta(hours=26)


passes = sa.Table(
    "portfolio_sync_passes",
    metadata,
    _id_column(),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("trigger", sa.String(200), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),  # ok | errors | aborted
    sa.Column("reason", sa.Text),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("changed", sa.Integer, nullable=False),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("orphans", sa.Integer, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
)


def _v1(conn: sa.Connection) -> None:
    for table in (state, history):
        table.create(conn, checkfirst=True)


def _v2(conn: sa.Connection) -> None:
    outbox.create(conn, checkfirst=True)


def _v3(conn: sa.Connection) -> None:
    present = {c["name"] for c in sa.inspect(conn).get_columns(state.name)}
    quote = conn.dialect.identifier_preparer.quote
    for name in _HELD_COLUMNS:
        if name not in present:
            sql_type = state.c[name].type.compile(dialect=conn.dialect)
            conn.execute(
                sa.text(f"ALTER TABLE {quote(state.name)} ADD COLUMN {quote(name)} {sql_type}")
            )
    emptying.create(conn, checkfirst=True)


def _v4(conn: sa.Connection) -> None:
    webhook_ids.create(conn, checkfirst=True)


def _v5(conn: sa.Connection) -> None:
    # _v1 creates the table from today's definition, which already has the column
    names = {c["name"] for c in sa.inspect(conn).get_columns(history.name)}
    if "replaced" not in names:
        quote = conn.dialect.identifier_preparer.quote
        kind = history.c.replaced.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {quote(history.name)} ADD COLUMN replaced {kind}"))


def _v6(conn: sa.Connection) -> None:
    images.create(conn, checkfirst=True)


def _v7(conn: sa.Connection) -> None:
    passes.create(conn, checkfirst=True)


MIGRATIONS: list[tuple[int, str, Callable[[sa.Connection], None]]] = [
    (1, "state and history tables", _v1),
    (2, "outbox table filled by row triggers", _v2),
    (3, "held writes and the streaming guard's window", _v3),
    (4, "webhook ids seen (dedup shared by all instances)", _v4),
    (5, "history keeps the value each write replaced", _v5),
    (6, "image metadata cache", _v6),
    (7, "full passes with their outcome", _v7),
]
LATEST = MIGRATIONS[-1][0]


def now() -> datetime:
    return datetime.now(UTC)


def current_version(conn: sa.Connection) -> int:
    if not sa.inspect(conn).has_table(meta.name):
        return 0
    value = conn.execute(
        sa.select(meta.c.value).where(meta.c.name == "schema_version")
    ).scalar_one_or_none()
    return int(value) if value is not None else 0


def migrate(engine: sa.Engine) -> list[str]:
    """Bring our tables to the latest version; returns the steps applied (idempotent).

    On PostgreSQL an advisory lock serialises concurrent `setup`/worker starts. A database
    that is locked or goes away meanwhile is a one-line :class:`CatalogError` (start-up
    must not end in a traceback); a step that did not commit is applied next time.
    """
    try:
        return _migrate(engine)
    except sa.exc.SQLAlchemyError as exc:
        doing = "cannot upgrade portfolio-sync's own tables"
        raise db_errors.explain(exc, doing=doing, engine=engine) from None


def _migrate(engine: sa.Engine) -> list[str]:
    applied = []
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('portfolio_sync_schema'))"))
        meta.create(conn, checkfirst=True)
        version = current_version(conn)
        for number, title, step in MIGRATIONS:
            if number > version:
                step(conn)
                applied.append(f"{number}: {title}")
                version = number
        _put_meta(conn, "schema_version", str(version))
    return applied


def is_ready(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return current_version(conn) >= LATEST


def _put_meta(conn: sa.Connection, name: str, value: str) -> None:
    updated = conn.execute(sa.update(meta).where(meta.c.name == name).values(value=value))
    if updated.rowcount == 0:
        conn.execute(sa.insert(meta).values(name=name, value=value))


def put_meta(engine: sa.Engine, name: str, value: Any) -> None:
    with engine.begin() as conn:
        _put_meta(conn, name, json.dumps(value))


def get_meta(engine: sa.Engine, name: str) -> Any:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(meta.name):
            return None
        value = conn.execute(sa.select(meta.c.value).where(meta.c.name == name)).scalar()
    return None if value is None else json.loads(value)


_STATE_FIELDS = (
    "last_synced_at",
    "fingerprint",
    "last_error",
    "last_error_at",
    "attempts",
    *_HELD_COLUMNS,
)
_HISTORY_FIELDS = ("key", "at", "trigger", "added", "removed", "duration_ms", "replaced")
_Processor = Callable[[Any], Any] | None


@functools.cache
def _bulk_statement(
    dialect: sa.Dialect, table: sa.Table, fields: tuple[str, ...], upsert: bool
) -> tuple[str, tuple[_Processor, ...]]:
    """An INSERT (or upsert on the first column) of many rows, built once per dialect, and
    the bind processors SQLAlchemy would apply to each field on SQLite (datetimes as
    SQLite stores them, JSON as text).

    Written out rather than run through ``conn.execute(insert(table), rows)``: there the
    per-row parameter handling cost more than the statement, in every sync and for every
    row of a bulk write. SQLite takes the rows through ``executemany`` (no round trips);
    PostgreSQL takes them as one JSON array of rows, expanded by ``json_to_recordset``:
    one statement and one parameter whatever the number of rows, serialised by the json
    module in one call. ``ON CONFLICT … DO UPDATE SET … = excluded.…`` reads the same in
    both.
    """
    quote = dialect.identifier_preparer.quote
    head = f"INSERT INTO {quote(table.name)} ({', '.join(map(quote, fields))}) "
    processors: tuple[_Processor, ...] = (None,) * len(fields)
    if dialect.name == "postgresql":
        columns = ", ".join(
            f"{quote(f)} {table.c[f].type.compile(dialect=dialect)}" for f in fields
        )
        sql = head + f"SELECT * FROM json_to_recordset(%s::json) AS r({columns})"
    else:
        sql = head + f"VALUES ({', '.join(['?'] * len(fields))})"
        processors = tuple(
            table.c[f].type.dialect_impl(dialect).bind_processor(dialect) for f in fields
        )
    if upsert:
        sets = ", ".join(f"{quote(f)} = excluded.{quote(f)}" for f in fields[1:])
        sql += f" ON CONFLICT ({quote(fields[0])}) DO UPDATE SET {sets}"
    return sql, processors


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot store {type(value).__name__} in a bookkeeping row")


def _insert_many(
    conn: sa.Connection,
    table: sa.Table,
    fields: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    *,
    upsert: bool = False,
) -> None:
    """Insert ``rows`` (tuples in ``fields`` order); with ``upsert``, keys must be unique."""
    if not rows:
        return
    sql, processors = _bulk_statement(conn.dialect, table, fields, upsert)
    if conn.dialect.name == "postgresql":
        records = [dict(zip(fields, row, strict=True)) for row in rows]
        conn.exec_driver_sql(sql, (json.dumps(records, default=_json_default),))
        return
    if any(processors):
        columns: list[Any] = list(zip(*rows, strict=True))
        for i, proc in enumerate(processors):  # column by column: one pass per field
            if proc is not None:
                columns[i] = [None if v is None else proc(v) for v in columns[i]]
        rows = list(zip(*columns, strict=True))
    conn.exec_driver_sql(sql, rows)


def upsert_many(
    conn: sa.Connection, table: sa.Table, fields: tuple[str, ...], rows: list[tuple[Any, ...]]
) -> None:
    """Insert or replace `rows` (tuples in `fields` order, keyed by the first field)."""
    _insert_many(conn, table, fields, rows, upsert=True)


def _state_rows(keys: Sequence[tuple[str, str | None]], at: datetime) -> list[tuple[Any, ...]]:
    """State rows of keys found in sync (key, fingerprint) as of ``at``: errors and held
    writes cleared."""
    return [(key, at, fp, None, None, 0, None, None, None) for key, fp in keys]


def record_writes(
    conn: sa.Connection,
    plans: Sequence[Plan],
    *,
    trigger: str,
    durations: dict[str, float],
    columns: Sequence[str],
) -> None:
    """History and state for rows just written (to `columns`), inside the writing
    transaction."""
    if not plans:
        return
    at = now()
    history_rows = [
        (
            p.key,
            at,
            trigger,
            list(p.added),
            list(p.removed),
            round(durations.get(p.key, 0.0), 3),
            _replaced(p, columns),
        )
        for p in plans
    ]
    _insert_many(conn, history, _HISTORY_FIELDS, history_rows)
    # one state row per key (an upsert cannot touch a row twice in one statement)
    state_rows = _state_rows(list({p.key: p.fingerprint for p in plans}.items()), at)
    _insert_many(conn, state, ("key", *_STATE_FIELDS), state_rows, upsert=True)


def _replaced(plan: Plan, columns: Sequence[str]) -> dict[str, Any] | None:
    """What a write overwrote, per column: the decoded values, or for an unreadable row its
    raw values (so nothing is lost by the write)."""
    if plan.invalid is not None:
        return dict(zip(columns, map(_raw_json, plan.expected), strict=True))
    return dict(zip(columns, plan.replaced, strict=True)) if plan.replaced else None


def _raw_json(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return str(value)


PassOutcome = Literal["ok", "errors", "aborted"]


def record_pass(
    engine: sa.Engine,
    *,
    started_at: datetime,
    trigger: str,
    outcome: PassOutcome,
    reason: str | None,
    rows: int,
    changed: int,
    errors: int,
    orphans: int,
    duration_ms: float,
) -> None:
    """Keep every full pass, completed or not, so a failing one cannot look like the last
    good one (`status`, the dashboard, /metrics and /readyz read it back)."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(passes).values(
                started_at=started_at,
                finished_at=now(),
                trigger=trigger[:200],
                outcome=outcome,
                reason=reason[:2000] if reason else None,
                rows=rows,
                changed=changed,
                errors=errors,
                orphans=orphans,
                duration_ms=round(duration_ms, 1),
            )
        )


def recent_passes(engine: sa.Engine, limit: int = 20) -> list[dict[str, Any]]:
    """The last full passes, newest first, with outcome and reason."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(passes.name):
            return []
        rows = conn.execute(sa.select(passes).order_by(passes.c.id.desc()).limit(limit))
        return [_utc(dict(r)) for r in rows.mappings()]


def pass_summary(engine: sa.Engine) -> dict[str, Any]:
    """The last pass, the last successful one, and how many failed in a row since."""
    recent = recent_passes(engine, 100)
    failures = 0
    for entry in recent:
        if entry["outcome"] == "ok":
            break
        failures += 1
    last_ok = next((p for p in recent if p["outcome"] == "ok"), None)
    return {
        "last": recent[0] if recent else None,
        "last_ok": last_ok,
        "consecutive_failures": failures,
    }


def _utc(row: dict[str, Any]) -> dict[str, Any]:
    """SQLite hands back naive datetimes; every one we store is UTC."""
    return {
        k: v.replace(tzinfo=UTC) if isinstance(v, datetime) and v.tzinfo is None else v
        for k, v in row.items()
    }


def record_event(
    engine: sa.Engine, key: str, *, trigger: str, added: list[str], removed: list[str]
) -> None:
    """A history entry that is not a row write (e.g. the row was deleted by the app)."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(history).values(
                key=key, at=now(), trigger=trigger, added=added, removed=removed, duration_ms=0.0
            )
        )


def record_checked(engine: sa.Engine, key: str, fingerprint: str | None) -> None:
    """A sync of `key` found nothing to change: it is in sync as of now.

    One statement, so `engine` may be an autocommit engine (no BEGIN/COMMIT round trips).
    """
    with engine.begin() as conn:
        rows = _state_rows([(key, fingerprint)], now())
        _insert_many(conn, state, ("key", *_STATE_FIELDS), rows, upsert=True)


def record_error(engine: sa.Engine, key: str, error: str) -> None:
    """Keep the last error of a key (and count attempts) for `status` and the console."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        stmt = insert(state).values(
            key=key, last_error=error[:2000], last_error_at=now(), attempts=1
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[state.c.key],
                set_={
                    "last_error": stmt.excluded.last_error,
                    "last_error_at": stmt.excluded.last_error_at,
                    "attempts": state.c.attempts + 1,
                },
            )
        )


def record_held(engine: sa.Engine, key: str, reason: str, write: dict[str, Any]) -> None:
    """Keep the write the streaming guard held (what the listing asked for) until an
    operator releases it or a later sync of the key makes it moot."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        stmt = insert(state).values(key=key, held_at=now(), held_reason=reason, held_write=write)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[state.c.key],
                set_={
                    "held_at": stmt.excluded.held_at,
                    "held_reason": stmt.excluded.held_reason,
                    "held_write": stmt.excluded.held_write,
                },
            )
        )


def read_held(engine: sa.Engine, keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Held writes (all, or of `keys`), oldest first."""
    try:
        return _read_held(engine, keys)
    except sa.exc.SQLAlchemyError as exc:
        raise CatalogError(f"reading held writes failed: {exc}") from exc


def _read_held(engine: sa.Engine, keys: Sequence[str] | None) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(state.name) or current_version(conn) < 3:
            return []
        query = sa.select(
            state.c.key, state.c.held_at, state.c.held_reason, state.c.held_write
        ).where(state.c.held_at.is_not(None))
        if keys is not None:
            query = query.where(state.c.key.in_(list(keys)))
        rows = conn.execute(query.order_by(state.c.held_at, state.c.key)).mappings()
        return [dict(r) for r in rows]


def count_held(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        if current_version(conn) < 3:
            return 0
        query = sa.select(sa.func.count()).where(state.c.held_at.is_not(None))
        return int(conn.execute(query).scalar_one())


def claim_webhook_id(engine: sa.Engine, message_id: str) -> bool:
    """Record a webhook-id; False if it was recorded less than ``WEBHOOK_ID_TTL`` ago (a
    duplicate delivery). One statement, so two instances receiving the same delivery at
    once cannot both claim it: the primary key decides. Expired ids are pruned as we go.
    """
    digest = hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()
    at = now()
    cutoff = at - WEBHOOK_ID_TTL
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        stmt = insert(webhook_ids).values(digest=digest, seen_at=at)
        # RETURNING, not rowcount: psycopg reports no count for this statement here.
        claimed = conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[webhook_ids.c.digest],
                set_={"seen_at": stmt.excluded.seen_at},
                where=webhook_ids.c.seen_at < cutoff,
            ).returning(webhook_ids.c.digest)
        ).first()
        if claimed and digest.startswith("00"):  # about one claim in 256 prunes
            conn.execute(sa.delete(webhook_ids).where(webhook_ids.c.seen_at < cutoff))
    return claimed is not None


def read_history(engine: sa.Engine, key: str, limit: int = 50) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(history.name):
            return []
        rows = conn.execute(
            sa.select(history)
            .where(history.c.key == key)
            .order_by(history.c.at.desc(), history.c.id.desc())
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def read_state(engine: sa.Engine, key: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(state.name):
            return None
        row = conn.execute(sa.select(state).where(state.c.key == key)).mappings().first()
        return dict(row) if row else None


def read_errors(engine: sa.Engine, limit: int = 50) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(state.name):
            return []
        rows = conn.execute(
            sa.select(state)
            .where(state.c.last_error.is_not(None))
            .order_by(state.c.last_error_at.desc())
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def count_errors(engine: sa.Engine) -> int:
    """How many keys have a last error recorded."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(state.name):
            return 0
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(state).where(state.c.last_error.is_not(None))
            ).scalar_one()
        )


def recent_history(engine: sa.Engine, limit: int = 20) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(history.name):
            return []
        rows = conn.execute(
            sa.select(history).order_by(history.c.id.desc()).limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def current_version_of(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return current_version(conn)
