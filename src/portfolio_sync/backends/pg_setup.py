"""`portfolio-sync setup` on PostgreSQL: job queue schema, our tables, and job triggers.

Idempotent and versioned, in this order:

1. procrastinate's schema, created only if ``procrastinate_jobs`` does not resolve (its
   script is not idempotent), and checked to have the functions this version calls;
   plus an index on the lock of waiting and running jobs (see ``jobs.ensure_lock_index``);
2. our own tables, through the numbered migrations of :mod:`portfolio_sync.backends.schema`;
3. a trigger on the portfolio table and, with ``--storage-objects BUCKET``, on Supabase's
   ``storage.objects``, each deferring ``sync_portfolio`` in the changing transaction
   (SQL in :mod:`portfolio_sync.sources.triggers`).

Steps 1 and 3 run in one transaction. What step 3 installed is recorded in
``portfolio_sync_meta`` (``postgres_triggers``), so ``--uninstall`` removes exactly that
(triggers and functions; tables and queued jobs stay) even after the settings changed.
Functions are created in the schema that holds ``procrastinate_jobs``: ``public`` in
production, the test's own schema under a test ``search_path``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import sqlalchemy as sa

from portfolio_sync.backends import schema
from portfolio_sync.backends.catalog import Catalog
from portfolio_sync.config import BUCKET_SCHEMES, SUPABASE_DB_SCHEME, Settings
from portfolio_sync.errors import CatalogError
from portfolio_sync.layout import Layout
from portfolio_sync.queue import jobs as pq
from portfolio_sync.sources import triggers

META_KEY = "postgres_triggers"
#: 2: the row trigger also fires on foreign UPDATEs of the images columns.
VERSION = 2
OBJECTS_TABLE = "storage.objects"


@dataclass(frozen=True, slots=True, kw_only=True)
class Installed:
    """One installed function and the triggers calling it (kept in meta for uninstall)."""

    function: str  # schema-qualified, quoted
    table: str  # schema-qualified or plain, quoted
    triggers: tuple[str, ...]
    what: str  # for messages

    def as_json(self) -> dict[str, Any]:
        return {
            "function": self.function,
            "table": self.table,
            "triggers": list(self.triggers),
            "what": self.what,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    statements: list[str]
    installed: list[Installed]


def storage_root(settings: Settings) -> str:
    """What object names in the bucket start with before the layout (``s3://b/prefix``,
    ``supabase-db://b/prefix``)."""
    parts = urlsplit(settings.storage_url)
    if parts.scheme not in BUCKET_SCHEMES:
        return ""
    prefix = unquote(parts.path).strip("/")
    return f"{prefix}/" if prefix else ""


def storage_bucket(settings: Settings) -> str | None:
    """The bucket a ``supabase-db://`` storage reads in the catalog's own database: its
    ``storage.objects`` rows are the uploads to sync on (``setup`` installs that trigger
    without ``--storage-objects``). None for other storage or another database."""
    parts = urlsplit(settings.storage_url)
    if parts.scheme != SUPABASE_DB_SCHEME or settings.storage_database_url is not None:
        return None
    return unquote(parts.netloc)


def plan(catalog: Catalog, settings: Settings, *, install_schema: str, bucket: str | None) -> Plan:
    """Trigger DDL for these settings, functions in ``install_schema`` (unquoted name)."""
    quote = catalog.quote
    target = triggers.JobTarget(
        schema=quote(install_schema),
        queue=pq.QUEUE,
        task=pq.SYNC_TASK,
        lock_prefix=pq.LOCK_PREFIX,
        debounce=settings.debounce,
    )
    table_sql = _qualified(catalog.table_name, quote)
    function, write, update = triggers.postgres_row_names(catalog.table_name)
    statements = triggers.postgres_row_install(
        table_sql=table_sql,
        table=catalog.table_name,
        key=catalog.key_column,
        images=[(c.name, c.kind) for c in catalog.columns],
        quote=quote,
        target=target,
    )
    installed = [
        Installed(
            function=f"{target.schema}.{quote(function)}",
            table=table_sql,
            triggers=(write, update),
            what=f"{catalog.table_name} (INSERT, DELETE, and UPDATE by anyone but portfolio-sync)",
        )
    ]
    if bucket:
        layout = Layout.from_settings(settings)
        root = storage_root(settings)
        function, write, update = triggers.postgres_objects_names(bucket, install_schema)
        statements += triggers.postgres_objects_install(
            bucket=bucket,
            name_prefix=root + layout.prefix,
            root=root,
            function=function,
            triggers=(write, update),
            quote=quote,
            target=target,
        )
        installed.append(
            Installed(
                function=f"{target.schema}.{quote(function)}",
                table=OBJECTS_TABLE,
                triggers=(write, update),
                what=f"{OBJECTS_TABLE} for bucket {bucket!r} (names under "
                f"{(root + layout.prefix) or '/'!r})",
            )
        )
    return Plan(statements=statements, installed=installed)


def install(catalog: Catalog, settings: Settings, *, bucket: str | None = None) -> list[str]:
    """Run all setup steps; returns one line per thing done, for the CLI."""
    messages = []
    applied = schema.migrate(catalog.engine)
    messages += [f"applied migration {step}" for step in applied]
    if not applied:
        messages.append(f"schema is up to date (version {schema.LATEST})")
    try:
        with catalog.engine.begin() as conn:
            driver = _driver(conn)
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('portfolio_sync_setup'))"))
            created = pq.apply_schema_if_missing(driver)
            where = _queue_schema(conn)
            state = "created" if created else "present"
            messages.append(f"procrastinate schema {state} in {where}")
            if not pq.lock_index_exists(driver):
                messages.append(
                    f"warning: could not create index {pq.LOCK_INDEX} (not the owner of "
                    "procrastinate_jobs?): job fetches slow down as the queue deepens"
                )
            if bucket and not _exists(conn, OBJECTS_TABLE):
                raise CatalogError(
                    f"--storage-objects: there is no table {OBJECTS_TABLE} "
                    "(it exists on Supabase databases)"
                )
            todo = plan(catalog, settings, install_schema=where, bucket=bucket)
            _run(driver, _changed_only(conn, todo.statements))
            _remember(conn, todo.installed, _digests(todo.statements))
    except (sa.exc.SQLAlchemyError, psycopg.Error) as exc:
        raise CatalogError(f"installing the job triggers failed: {exc}") from exc
    messages += [f"installed job triggers on {item.what}" for item in todo.installed]
    return messages


def uninstall_plan(catalog: Catalog, settings: Settings, *, bucket: str | None) -> list[str]:
    """DROP statements for what setup recorded (or, without a record, what it would install)."""
    with catalog.engine.connect() as conn:
        recorded = _recorded(conn)
        if not recorded:
            where = _queue_schema(conn)
            recorded = [
                i.as_json()
                for i in plan(catalog, settings, install_schema=where, bucket=bucket).installed
            ]
    return [
        stmt
        for item in recorded
        for stmt in triggers.postgres_uninstall(
            function=item["function"],
            triggers=item["triggers"],
            table_sql=item["table"],
            owned=item["table"] != OBJECTS_TABLE,
        )
    ]


def uninstall(catalog: Catalog, settings: Settings, *, bucket: str | None = None) -> list[str]:
    """Drop the triggers and functions setup installed; data tables and jobs stay."""
    statements = uninstall_plan(catalog, settings, bucket=bucket)
    try:
        with catalog.engine.begin() as conn:
            if _exists(conn, OBJECTS_TABLE) or not any(OBJECTS_TABLE in s for s in statements):
                _run(_driver(conn), statements)
            else:  # storage.objects is gone: only our functions remain to drop
                _run(_driver(conn), [s for s in statements if OBJECTS_TABLE not in s])
            if _exists(conn, schema.meta.name):
                conn.execute(sa.delete(schema.meta).where(schema.meta.c.name == META_KEY))
    except (sa.exc.SQLAlchemyError, psycopg.Error) as exc:
        raise CatalogError(f"removing the job triggers failed: {exc}") from exc
    functions = sum(1 for s in statements if s.startswith("DROP FUNCTION"))
    # each function has two triggers; CASCADE drops them with it (see postgres_uninstall)
    triggers_ = sum(1 for s in statements if s.startswith("DROP TRIGGER")) + 2 * sum(
        1 for s in statements if s.endswith(" CASCADE")
    )
    return [f"removed {triggers_} trigger(s) and {functions} function(s)"]


def installed_triggers(catalog: Catalog) -> list[str]:
    """What `setup` recorded and is still in place (for `check`)."""
    with catalog.engine.connect() as conn:
        return [
            item["what"]
            for item in _recorded(conn)
            if _exists(conn, item["table"])
            and all(_trigger_exists(conn, item["table"], name) for name in item["triggers"])
        ]


def _trigger_exists(conn: sa.Connection, table: str, name: str) -> bool:
    return bool(
        conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_trigger "
                "WHERE tgrelid = to_regclass(:t) AND tgname = :n)"
            ),
            {"t": table, "n": name},
        ).scalar()
    )


def print_sql(
    catalog: Catalog, settings: Settings, *, bucket: str | None, remove: bool = False
) -> str:
    """The SQL setup (or ``--uninstall``) would run, for reviewers; changes nothing."""
    if remove:
        return "".join(f"{s};\n" for s in uninstall_plan(catalog, settings, bucket=bucket))
    with catalog.engine.connect() as conn:
        where = _queue_schema(conn)
    todo = plan(catalog, settings, install_schema=where, bucket=bucket)
    header = (
        f"-- portfolio-sync setup for PostgreSQL; functions go to schema {where!r}.\n"
        "-- 1. procrastinate's schema, only if procrastinate_jobs is missing\n"
        "--    (print it with: procrastinate schema --read), and an index the job fetch\n"
        f"--    needs (kept by --uninstall, like the queue's tables):\n--    {pq.LOCK_INDEX_SQL};\n"
        f"-- 2. portfolio-sync's tables (portfolio_sync_meta, _state, _history, _outbox,\n"
        "--    _webhook_ids),\n"
        f"--    migrations 1..{schema.LATEST}.\n"
        "-- 3. job triggers, in the same transaction as step 1:\n"
    )
    return header + "".join(f"{s};\n" for s in todo.statements)


# ---- helpers -------------------------------------------------------------------------------
def _qualified(name: str, quote: Any) -> str:
    return ".".join(quote(part) for part in name.split("."))


def _driver(conn: sa.Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy one, in the same transaction.

    DDL goes through it directly: SQLAlchemy would treat `%` in function bodies (and in
    procrastinate's schema script) as parameter markers.
    """
    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    return driver


def _run(driver: psycopg.Connection[Any], statements: list[str]) -> None:
    with driver.cursor() as cursor:
        for statement in statements:
            cursor.execute(statement.encode())


def _queue_schema(conn: sa.Connection) -> str:
    """Schema of procrastinate_jobs, or where it would be created (current_schema())."""
    found = conn.execute(
        sa.text(
            "SELECT COALESCE((SELECT n.nspname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.oid = to_regclass('procrastinate_jobs')), current_schema())"
        )
    ).scalar_one()
    if found is None:
        raise CatalogError("the database has no current schema (check the search_path)")
    return str(found)


def _exists(conn: sa.Connection, name: str) -> bool:
    return bool(conn.execute(sa.text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar())


def outdated(catalog: Catalog) -> bool:
    """Whether setup recorded triggers of an older version (re-running setup replaces them)."""
    with catalog.engine.connect() as conn:
        if not _exists(conn, schema.meta.name):
            return False
        value = conn.execute(
            sa.select(schema.meta.c.value).where(schema.meta.c.name == META_KEY)
        ).scalar()
    return value is not None and int(json.loads(value).get("version", 0)) < VERSION


def _recorded(conn: sa.Connection) -> list[dict[str, Any]]:
    if not _exists(conn, schema.meta.name):
        return []
    value = conn.execute(
        sa.select(schema.meta.c.value).where(schema.meta.c.name == META_KEY)
    ).scalar()
    if value is None:
        return []
    items: list[dict[str, Any]] = json.loads(value).get("installed", [])
    return items


_TRIGGER = "CREATE OR REPLACE TRIGGER "


def _digests(statements: list[str]) -> dict[str, str]:
    """Trigger name → digest of the statement that creates it."""
    return {
        s.removeprefix(_TRIGGER).split()[0]: hashlib.sha256(s.encode()).hexdigest()[:32]
        for s in statements
        if s.startswith(_TRIGGER)
    }


def _changed_only(conn: sa.Connection, statements: list[str]) -> list[str]:
    """`statements` less the triggers already installed from the same statement: an
    unchanged trigger is left alone (not even locked: storage.objects is busy)."""
    recorded: dict[str, str] = {}
    for item in _recorded(conn):
        recorded.update(item.get("digests", {}))
    kept = []
    for statement in statements:
        if statement.startswith(_TRIGGER):
            ((name, digest),) = _digests([statement]).items()
            table = statement.partition(" ON ")[2].split()[0]
            if recorded.get(name) == digest and _trigger_exists(conn, table, name):
                continue
        kept.append(statement)
    return kept


def _remember(
    conn: sa.Connection, installed: list[Installed], digests: dict[str, str] | None = None
) -> None:
    """Merge into the record: functions installed earlier (another bucket) stay listed."""
    merged = {item["function"]: item for item in _recorded(conn)}
    for item in installed:
        merged[item.function] = {
            **item.as_json(),
            "digests": {name: (digests or {}).get(name, "") for name in item.triggers},
        }
    value = json.dumps({"version": VERSION, "installed": list(merged.values())})
    conn.execute(sa.delete(schema.meta).where(schema.meta.c.name == META_KEY))
    conn.execute(sa.insert(schema.meta).values(name=META_KEY, value=value))
