"""`portfolio-sync check`: the effective settings, where each came from, and one line per
thing that must work (database, table, columns, our tables, storage, triggers), each with
✓ or ✗ and, when ✗, what to do.

It goes step by step rather than through `open_service`, which stops at the first error:
a user fixing a setup wants every problem that can be seen at once. Exit codes follow the
CLI's: 2 when the configuration is wrong (settings, table, columns), 1 when a backend
cannot be used, 0 when everything needed works (triggers are optional: `!` only).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from portfolio_sync.backends import outbox, schema
from portfolio_sync.backends.catalog import Catalog, check_sqlite_file, create_engine
from portfolio_sync.backends.storage import open_storage
from portfolio_sync.config import DEFAULT_CONFIG_FILE, Settings
from portfolio_sync.errors import ConfigError, PortfolioSyncError
from portfolio_sync.explain import database_error
from portfolio_sync.layout import Layout

Origin = Literal["flag", "env", "file", "default"]
Mark = Literal["ok", "fail", "warn"]
SECRETS = frozenset({"aws_secret_access_key", "aws_session_token", "webhook_secret"})
_ALIASES = {
    "aws_access_key_id": ("AWS_ACCESS_KEY_ID",),
    "aws_secret_access_key": ("AWS_SECRET_ACCESS_KEY",),
    "aws_session_token": ("AWS_SESSION_TOKEN",),
    "aws_region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: str
    mark: Mark
    detail: str
    fix: str | None = None
    config: bool = False  # a failure here is the configuration's (exit 2)


def shown(name: str, value: Any) -> str:
    """A setting as it may be printed: secrets and database passwords hidden."""
    if value is None:
        return "(not set)"
    if name in SECRETS:
        return "(set, hidden)"
    if name in ("database_url", "storage_database_url"):
        return sa.make_url(str(value)).render_as_string(hide_password=True)
    if name == "aws_access_key_id":
        return f"{str(value)[:4]}… (hidden)"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def origins(
    settings: Settings,
    *,
    flags: set[str],
    config_file: Path | None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, Origin]:
    """Where each setting's value came from, by the precedence `load_settings` applies."""
    env = os.environ if environ is None else environ
    in_file: set[str] = set()
    path = config_file or (DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None)
    if path is not None and path.is_file():
        import tomllib

        with path.open("rb") as handle:
            in_file = set(tomllib.load(handle))
    found: dict[str, Origin] = {}
    for name in type(settings).model_fields:
        names = ("PORTFOLIO_SYNC_" + name.upper(), *_ALIASES.get(name, ()))
        if name in flags:
            found[name] = "flag"
        elif any(n in env for n in names):
            found[name] = "env"
        elif name in in_file:
            found[name] = "file"
        else:
            found[name] = "default"
    return found


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in the order a user would fix them."""
    checks: list[Check] = []
    layout = Layout.from_settings(settings)
    shown_url = shown("database_url", settings.database_url)
    try:
        check_sqlite_file(settings.database_url)
        engine = create_engine(settings.database_url)
    except ConfigError as exc:
        checks.append(Check(name="database", mark="fail", detail=exc.message, fix=exc.hint,
                            config=True))  # fmt: skip
        return checks + _storage_checks(settings, None)
    try:
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
            checks.append(Check(name="database", mark="ok", detail=f"connected to {shown_url}"))
        except sa.exc.SQLAlchemyError as exc:
            failure = database_error(exc, engine.url)
            checks.append(
                Check(name="database", mark="fail", detail=failure.message, fix=failure.hint)
            )
            return checks + _storage_checks(settings, None)
        catalog = _table_checks(engine, settings, layout, checks)
        checks.append(_schema_check(engine))
        if catalog is not None:
            checks.append(_trigger_check(catalog, settings))
        return checks + _storage_checks(settings, engine)
    finally:
        engine.dispose()


def _table_checks(
    engine: sa.Engine, settings: Settings, layout: Layout, checks: list[Check]
) -> Catalog | None:
    try:
        catalog = Catalog(
            engine, table=settings.table, key_column=settings.key_column, columns=layout.columns
        )
    except PortfolioSyncError as exc:
        config = isinstance(exc, ConfigError)
        name = "table" if "does not exist" in exc.message else "columns"
        if name == "columns":
            checks.append(Check(name="table", mark="ok", detail=f"{settings.table} exists"))
        checks.append(
            Check(name=name, mark="fail", detail=exc.message, fix=exc.hint, config=config)
        )
        return None
    rows = catalog.count_rows()
    checks.append(Check(name="table", mark="ok", detail=f"{settings.table}: {rows} rows"))
    kinds = ", ".join(f"{c.name} ({c.sql_type})" for c in catalog.columns)
    checks.append(
        Check(
            name="columns",
            mark="ok",
            detail=f"key {catalog.key_column} ({catalog.key_kind}); images {kinds}",
        )
    )
    return catalog


def _schema_check(engine: sa.Engine) -> Check:
    try:
        version = schema.current_version_of(engine)
    except sa.exc.SQLAlchemyError as exc:
        failure = database_error(exc, engine.url)
        return Check(name="own tables", mark="fail", detail=failure.message, fix=failure.hint)
    if version >= schema.LATEST:
        return Check(name="own tables", mark="ok", detail=f"schema version {version}")
    return Check(
        name="own tables",
        mark="warn",
        detail=f"schema version {version} of {schema.LATEST}",
        fix="run `portfolio-sync setup` (sync and serve also create them)",
    )


def _trigger_check(catalog: Catalog, settings: Settings) -> Check:
    if settings.is_postgres:
        from portfolio_sync.backends import pg_setup

        installed = pg_setup.installed_triggers(catalog)
        if installed:
            return Check(name="triggers", mark="ok", detail="; ".join(installed))
    elif outbox.installed(catalog):
        return Check(name="triggers", mark="ok", detail=f"row triggers on {catalog.table_name}")
    return Check(
        name="triggers",
        mark="warn",
        detail="no row triggers: row changes are synced by webhooks or the scheduled pass",
        fix="run `portfolio-sync setup` to sync rows as soon as the app changes them",
    )


def _storage_checks(settings: Settings, engine: sa.Engine | None) -> list[Check]:
    """`engine`: the database's, which `supabase-db://` storage reads (None: unreachable)."""
    try:
        storage = open_storage(settings, database=engine)
    except PortfolioSyncError as exc:
        config = isinstance(exc, ConfigError)
        return [Check(name="storage", mark="fail", detail=exc.message, fix=exc.hint, config=config)]
    try:
        storage.check()
    except PortfolioSyncError as exc:
        return [Check(name="storage", mark="fail", detail=exc.message, fix=exc.hint)]
    finally:
        storage.close()
    return [Check(name="storage", mark="ok", detail=f"{storage.description} can be listed")]


def exit_code(checks: list[Check]) -> int:
    failed = [c for c in checks if c.mark == "fail"]
    if any(c.config for c in failed):
        return 2
    return 1 if failed else 0


def report(
    settings: Settings,
    found: Mapping[str, Origin],
    checks: list[Check],
    echo: Callable[[str], None],
) -> None:
    echo("settings (value, from flag / env / file / default):")
    width = max(map(len, found))
    for name, origin in found.items():
        echo(f"  {name:<{width}}  {shown(name, getattr(settings, name))}  [{origin}]")
    echo("checks:")
    symbols = {"ok": "✓", "fail": "✗", "warn": "!"}
    for check in checks:
        line = f"  {symbols[check.mark]} {check.name}: {check.detail}"
        echo(line + (f" — fix: {check.fix}" if check.fix and check.mark != "ok" else ""))
