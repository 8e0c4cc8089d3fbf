"""SQL that `portfolio-sync setup` installs on the user's table so row changes become work.

SQLite (embedded default): triggers append the key to `portfolio_sync_outbox`, which the
service drains. PostgreSQL: triggers defer a procrastinate job in the same transaction as the
change, on the portfolio table and optionally on Supabase's `storage.objects` (see below).

Both fire on INSERT, DELETE and any UPDATE, images columns included (an editor's or another
program's edit of the images is drift, corrected at once), except UPDATEs made inside
portfolio-sync's own compare-and-set transaction (architecture invariant 5). That
transaction marks itself, and the mark is visible to nobody else:

- PostgreSQL: ``set_config('portfolio_sync.writer', 'on', true)``, a transaction-local
  setting; any other session reads '' or NULL.
- SQLite: a ``portfolio_sync_meta`` row inserted before the writes and deleted before the
  commit. SQLite has one writer at a time and readers only see commits, so only our own
  transaction ever sees the row. (A function registered on our connections would not do:
  the application's connections lack it, and their UPDATEs would fail; a trigger on a main
  table cannot read a connection's TEMP table.)

Writes cascading from ours (a user trigger stamping ``updated_at``) are part of the same
transaction, so they do not loop either.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TRIGGER_PREFIX = "portfolio_sync_"
#: PostgreSQL: the transaction-local setting our compare-and-set transaction turns 'on'.
OWN_WRITE_SETTING = "portfolio_sync.writer"
#: SQLite: the `portfolio_sync_meta` name of the row that marks our own write transaction.
OWN_WRITE_MARKER = "own_write_in_progress"


def literal(value: str) -> str:
    """A SQL string literal: SQLite, and PostgreSQL with standard_conforming_strings (the
    default since 9.1), read a doubled quote as one and nothing else specially."""
    return "'" + value.replace("'", "''") + "'"


def sqlite_trigger_names(table: str) -> list[str]:
    base = TRIGGER_PREFIX + table.replace(".", "_")
    return [f"{base}_insert", f"{base}_update", f"{base}_delete"]


def sqlite_install(
    *,
    table: str,
    key: str,
    images: Sequence[str],
    quote: Callable[[str], str],
) -> list[str]:
    """Statements (drop + create, so re-running `setup` replaces older versions)."""
    t, k = quote(table), quote(key)
    ins, upd, dele = sqlite_trigger_names(table)
    old_images = "json_object(" + ", ".join(f"{literal(c)}, OLD.{quote(c)}" for c in images) + ")"
    not_ours = (
        f"NOT EXISTS (SELECT 1 FROM portfolio_sync_meta WHERE name = {literal(OWN_WRITE_MARKER)})"
    )
    return [
        *(f"DROP TRIGGER IF EXISTS {quote(name)}" for name in (ins, upd, dele)),
        f"CREATE TRIGGER {quote(ins)} AFTER INSERT ON {t} BEGIN "
        f"INSERT INTO portfolio_sync_outbox (key, op) VALUES (CAST(NEW.{k} AS TEXT), 'INSERT'); "
        "END",
        f"CREATE TRIGGER {quote(upd)} AFTER UPDATE ON {t} WHEN {not_ours} BEGIN "
        f"INSERT INTO portfolio_sync_outbox (key, op) VALUES (CAST(NEW.{k} AS TEXT), 'UPDATE'); "
        f"INSERT INTO portfolio_sync_outbox (key, op, old_images) SELECT CAST(OLD.{k} AS TEXT), "
        f"'DELETE', {old_images} WHERE OLD.{k} IS NOT NEW.{k}; "
        "END",
        f"CREATE TRIGGER {quote(dele)} AFTER DELETE ON {t} BEGIN "
        f"INSERT INTO portfolio_sync_outbox (key, op, old_images) "
        f"VALUES (CAST(OLD.{k} AS TEXT), 'DELETE', {old_images}); "
        "END",
    ]


def sqlite_uninstall(*, table: str, quote: Callable[[str], str]) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {quote(name)}" for name in sqlite_trigger_names(table)]


# ---- PostgreSQL ----------------------------------------------------------------------------
# Row and storage.objects triggers insert a procrastinate job in the same transaction as the
# change. The job row is written directly (not through procrastinate_defer_jobs_v1) because
# only a plain INSERT can say `ON CONFLICT …`: a second change of a key whose job still
# waits is absorbed by procrastinate's queueing-lock index instead of failing the user's
# transaction. (A concurrent transaction deferring the same key waits for the first to
# commit, as it would on the row lock of the row both change.)
#
# Functions are SECURITY DEFINER with a fixed search_path naming the schema that holds
# procrastinate's tables: the roles that change rows (an app role behind PostgREST, Supabase
# Storage's own role) need no rights on the jobs table, and procrastinate's own triggers on
# that table resolve their unqualified names in the right schema whatever the caller's
# search_path is.


@dataclass(frozen=True, slots=True, kw_only=True)
class JobTarget:
    """Where trigger-deferred jobs go; must match the worker's task (queue/procrastinate.py)."""

    schema: str  # quoted identifier of the schema holding procrastinate_jobs
    queue: str
    task: str
    lock_prefix: str
    debounce: float = 0.0  # settle time of a job deferred while its key runs


def slug(*parts: str) -> str:
    """A short identifier tail for names derived from config values (table, bucket)."""
    text = "_".join(parts)
    clean = re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_")[:24]
    digest = hashlib.sha256(text.encode()).hexdigest()[:6]
    return f"{clean}_{digest}" if clean else digest


def _defer(target: JobTarget, key: str, trigger: str, extra: str | None = None) -> str:
    """`INSERT` of one sync job for the text expression `key` (coalesced in SQL).

    While a job of the key runs, the new one waits `debounce` seconds, so a burst of
    changes during a sync costs one more sync after it settles (invariant 3). With `extra`
    arguments (a storage event's `expect`, a deleted row's `old_images`), a waiting job
    absorbs them (expectations are merged) rather than dropping them; this row lock on the
    waiting job is held until the changing transaction ends, and workers skip the job
    meanwhile (they fetch with SKIP LOCKED).
    """
    args = f"jsonb_build_object('key', {key}, 'trigger', {trigger})"
    if extra:
        args += f" || {extra}"
    lock = f"{literal(target.lock_prefix)} || {key}"
    settle = "NULL"
    if target.debounce > 0:
        settle = (
            f"(SELECT clock_timestamp() + make_interval(secs => {target.debounce!r}) "
            f"FROM procrastinate_jobs WHERE lock = {lock} AND status = 'doing' LIMIT 1)"
        )
    action = "DO NOTHING"
    if extra:
        action = (
            "DO UPDATE SET args = procrastinate_jobs.args || EXCLUDED.args || "
            "jsonb_build_object('expect', COALESCE(procrastinate_jobs.args -> 'expect', "
            "'{}'::jsonb) || COALESCE(EXCLUDED.args -> 'expect', '{}'::jsonb))"
        )
    return (
        "INSERT INTO procrastinate_jobs "
        "(queue_name, task_name, lock, queueing_lock, args, scheduled_at) "
        f"VALUES ({literal(target.queue)}, {literal(target.task)}, {lock}, {lock}, {args}, "
        f"{settle}) ON CONFLICT (queueing_lock) WHERE status = 'todo' {action};"
    )


def _function_header(name: str, target: JobTarget) -> str:
    return (
        f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
        f"SECURITY DEFINER SET search_path = {target.schema}, pg_catalog, pg_temp AS $fn$\n"
    )


def _old_images(columns: Sequence[tuple[str, str]], quote: Callable[[str], str]) -> str:
    """All images of the deleted row as one jsonb array; never raises (JSON text is skipped)."""
    parts = []
    for name, kind in columns:
        col = f"OLD.{quote(name)}"
        if kind == "array":
            parts.append(f"COALESCE(to_jsonb({col}), '[]'::jsonb)")
        elif kind in ("json", "jsonb"):
            parts.append(
                f"CASE WHEN jsonb_typeof({col}::jsonb) = 'array' "
                f"THEN {col}::jsonb ELSE '[]'::jsonb END"
            )
    return " || ".join(parts) or "'[]'::jsonb"


def postgres_row_names(table: str) -> tuple[str, str, str]:
    """(function, insert/delete trigger, update trigger); triggers are per table in PG."""
    return (
        f"portfolio_sync_defer_{slug(table)}",
        "portfolio_sync_write",
        "portfolio_sync_update",
    )


def postgres_row_install(
    *,
    table_sql: str,
    table: str,
    key: str,
    images: Sequence[tuple[str, str]],
    quote: Callable[[str], str],
    target: JobTarget,
) -> list[str]:
    """Function + triggers deferring `sync_portfolio` for INSERT, DELETE and real UPDATEs.

    An UPDATE counts when it changed the row (any column, images included: a foreign edit
    is drift) and was not made by portfolio-sync's own write transaction (which sets
    `OWN_WRITE_SETTING`), so the service's own writes are not new work (invariant 5).
    `images` (name and kind pairs) are the columns reported for a deleted row. A key change
    syncs the old key as a DELETE.
    """
    function, write, update = postgres_row_names(table)
    fn = f"{target.schema}.{quote(function)}"
    k = quote(key)
    body = (
        _function_header(fn, target)
        + "BEGIN\n"
        + f"  IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND OLD.{k} IS DISTINCT FROM NEW.{k}) THEN\n"
        + "    "
        + _defer(
            target,
            f"OLD.{k}::text",
            "'database:DELETE'",
            f"jsonb_build_object('old_images', {_old_images(images, quote)})",
        )
        + "\n  END IF;\n"
        + "  IF TG_OP <> 'DELETE' THEN\n"
        + "    "
        + _defer(target, f"NEW.{k}::text", "'database:' || TG_OP")
        + "\n  END IF;\n  RETURN NULL;\nEND\n$fn$"
    )
    return _install(
        body,
        fn,
        table_sql,
        (write, update),
        "UPDATE",
        f"current_setting({literal(OWN_WRITE_SETTING)}, true) IS DISTINCT FROM 'on' "
        "AND to_jsonb(OLD.*) IS DISTINCT FROM to_jsonb(NEW.*)",
    )


def _install(
    body: str, fn: str, table_sql: str, triggers: tuple[str, str], on_update: str, when: str
) -> list[str]:
    """The function, then the triggers calling it: one AFTER INSERT OR DELETE, one AFTER
    ``on_update`` (e.g. ``UPDATE OF a, b``) for rows where ``when`` holds.

    ``CREATE OR REPLACE TRIGGER`` (PostgreSQL 14+) needs only the TRIGGER privilege on the
    table, where ``DROP TRIGGER`` needs its ownership: on Supabase, ``postgres`` may add
    triggers to ``storage.objects`` but does not own it (``supabase_storage_admin`` does).
    """
    write, update = triggers
    return [
        body,
        f"CREATE OR REPLACE TRIGGER {write} AFTER INSERT OR DELETE ON {table_sql} "
        f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
        f"CREATE OR REPLACE TRIGGER {update} AFTER {on_update} ON {table_sql} FOR EACH ROW "
        f"WHEN ({when}) EXECUTE FUNCTION {fn}()",
    ]


def postgres_objects_names(bucket: str, schema: str) -> tuple[str, str, str]:
    """(function, insert/delete trigger, update trigger) for one bucket of storage.objects.

    Trigger names carry a digest of the installing schema and bucket, so two installations
    (or two test runs) sharing one `storage.objects` never replace each other's triggers.
    """
    tail = slug(bucket, schema)
    return (
        f"portfolio_sync_objects_{tail}",
        f"portfolio_sync_{tail}_write",
        f"portfolio_sync_{tail}_update",
    )


def postgres_objects_install(
    *,
    bucket: str,
    name_prefix: str,
    root: str,
    function: str,
    triggers: tuple[str, str],
    quote: Callable[[str], str],
    target: JobTarget,
    table_sql: str = "storage.objects",
) -> list[str]:
    """Function + triggers on Supabase's `storage.objects` for one bucket.

    `name_prefix` is what object names start with before the key (the storage URL's prefix
    plus the folder template's static part); the key is the next path segment, and names
    not under the layout are ignored. `root` (the storage URL's prefix) is cut from names
    to get the paths the job's `expect` hint refers to. An UPDATE counts when the name, the
    bucket or the metadata changed (an overwrite), not for `last_accessed_at`. A rename
    within one portfolio is one job expecting the new path present and the old one absent.
    """
    fn = f"{target.schema}.{quote(function)}"
    n = len(name_prefix)
    r = len(root)

    def key_of(name: str) -> str:
        rest = f"substr({name}, {n + 1})"
        segment = f"split_part({rest}, '/', 1)"
        return (
            f"CASE WHEN left({name}, {n}) = {literal(name_prefix)} AND strpos({rest}, '/') > 1 "
            f"AND left({segment}, 1) <> '.' THEN {segment} END"
        )

    trigger = "'storage.objects:' || TG_OP"
    b = literal(bucket)
    body = (
        _function_header(fn, target)
        + "DECLARE\n  old_key text;\n  new_key text;\n  expect jsonb;\nBEGIN\n"
        + f"  IF TG_OP <> 'INSERT' AND OLD.bucket_id = {b} THEN\n"
        + f"    old_key := {key_of('OLD.name')};\n  END IF;\n"
        + f"  IF TG_OP <> 'DELETE' AND NEW.bucket_id = {b} THEN\n"
        + f"    new_key := {key_of('NEW.name')};\n  END IF;\n"
        + "  IF new_key IS NOT NULL THEN\n"
        + f"    expect := jsonb_build_object(substr(NEW.name, {r + 1}), true);\n"
        + "    IF old_key = new_key THEN\n"
        + "      IF OLD.name <> NEW.name THEN\n"
        + f"        expect := expect || jsonb_build_object(substr(OLD.name, {r + 1}), false);\n"
        + "      END IF;\n    END IF;\n"
        + "    "
        + _defer(target, "new_key", trigger, "jsonb_build_object('expect', expect)")
        + "\n  END IF;\n"
        + "  IF old_key IS NOT NULL AND old_key IS DISTINCT FROM new_key THEN\n"
        + f"    expect := jsonb_build_object(substr(OLD.name, {r + 1}), false);\n"
        + "    "
        + _defer(target, "old_key", trigger, "jsonb_build_object('expect', expect)")
        + "\n  END IF;\n  RETURN NULL;\nEND\n$fn$"
    )
    return _install(
        body,
        fn,
        table_sql,
        triggers,
        "UPDATE OF name, bucket_id, metadata",
        "OLD.name IS DISTINCT FROM NEW.name OR OLD.bucket_id IS DISTINCT FROM NEW.bucket_id "
        "OR OLD.metadata IS DISTINCT FROM NEW.metadata",
    )


def postgres_uninstall(
    *, function: str, triggers: Sequence[str], table_sql: str, owned: bool = True
) -> list[str]:
    """Drop the triggers, then their function. On a table the role does not own
    (``owned=False``: ``storage.objects`` on Supabase), ``DROP TRIGGER`` is refused; dropping
    our own function with CASCADE removes the triggers that call it, and only those."""
    if not owned:
        return [f"DROP FUNCTION IF EXISTS {function}() CASCADE"]
    return [
        *(f"DROP TRIGGER IF EXISTS {name} ON {table_sql}" for name in triggers),
        f"DROP FUNCTION IF EXISTS {function}()",
    ]
