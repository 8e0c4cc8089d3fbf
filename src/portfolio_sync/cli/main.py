"""The `portfolio-sync` command. Exit codes: 0 ok, 1 sync errors/differences/abort, 2 bad usage
or configuration.
"""

from __future__ import annotations

import signal
import sys
import traceback
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer

from portfolio_sync import __version__
from portfolio_sync.backends import schema
from portfolio_sync.cli import console
from portfolio_sync.config import Settings, load_settings
from portfolio_sync.errors import ConfigError, PortfolioSyncError
from portfolio_sync.logs import LogFormat, configure_logging
from portfolio_sync.wiring import Service, open_service

app = typer.Typer(
    name="portfolio-sync",
    help="Keep a table's image lists equal to what object storage holds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    # Help texts are rich markup: escape a literal `[` (an unescaped `[/prefix]` crashed --help).
    rich_markup_mode="rich",
)

_ENV = "PORTFOLIO_SYNC_"
_verbosity = 0  # -v count of this run; -vv shows tracebacks of reported errors


def _opt(name: str, help: str, default: str | None = None, **kwargs: Any) -> Any:
    """A global option whose value is None unless given, so that the environment and the TOML
    file keep their say; `default` is only what `--help` shows (config.py applies it)."""
    return typer.Option(
        f"--{name}",
        envvar=_ENV + name.upper().replace("-", "_"),
        help=help,
        show_envvar=True,
        show_default=default if default is not None else False,
        **kwargs,
    )


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="TOML file (default: ./portfolio-sync.toml if present)."
        ),
    ] = None,
    database_url: Annotated[
        str | None, _opt("database-url", "sqlite:///file.db or postgresql://user:pass@host/db.")
    ] = None,
    storage_url: Annotated[
        str | None,
        _opt(
            "storage-url",
            "A folder path, file://…, s3://bucket\\[/prefix] or supabase-db://bucket\\[/prefix].",
        ),
    ] = None,
    s3_endpoint: Annotated[
        str | None, _opt("s3-endpoint", "S3-compatible endpoint URL (MinIO, Supabase, R2).")
    ] = None,
    table: Annotated[str | None, _opt("table", "Portfolio table.", "portfolios")] = None,
    key_column: Annotated[str | None, _opt("key-column", "Key column.", "id")] = None,
    images_column: Annotated[str | None, _opt("images-column", "Images column.", "images")] = None,
    folder: Annotated[str | None, _opt("folder", "Folder template.", "{key}/")] = None,
    collections: Annotated[
        str | None, _opt("collections", "Several columns: col={key}/sub/,col2={key}/other/.")
    ] = None,
    public_url: Annotated[
        str | None, _opt("public-url", "Store URLs: template with {path}.")
    ] = None,
    order: Annotated[str | None, _opt("order", "name | uploaded | preserve.")] = None,
    extensions: Annotated[
        str | None, _opt("extensions", "Image extensions, comma-separated.")
    ] = None,
    recursive: Annotated[
        bool | None,
        typer.Option(
            "--recursive/--no-recursive",
            envvar=_ENV + "RECURSIVE",
            show_envvar=True,
            help="Include images in sub-folders.",
        ),
    ] = None,
    log_format: Annotated[str, typer.Option("--log-format", help="text | json.")] = "text",
    verbose: Annotated[
        int, typer.Option("--verbose", "-v", count=True, help="-v: info, -vv: debug.")
    ] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version.", callback=_print_version, is_eager=True
        ),
    ] = False,
) -> None:
    if log_format not in ("text", "json"):
        raise typer.BadParameter("must be text or json", param_hint="--log-format")
    fmt: LogFormat = "json" if log_format == "json" else "text"
    global _verbosity
    _verbosity = verbose
    configure_logging(fmt, verbose, service=ctx.invoked_subcommand in ("serve", "worker"))
    ctx.obj = {
        "config": config,
        "overrides": {
            "database_url": database_url,
            "storage_url": storage_url,
            "s3_endpoint": s3_endpoint,
            "table": table,
            "key_column": key_column,
            "images_column": images_column,
            "folder": folder,
            "collections": collections,
            "public_url": public_url,
            "order": order,
            "extensions": extensions,
            "recursive": recursive,
        },
    }


def settings_of(ctx: typer.Context, **more: Any) -> Settings:
    obj = ctx.find_root().obj or {}
    return load_settings(obj.get("config"), **{**obj.get("overrides", {}), **more})


@app.command()
def sync(
    ctx: typer.Context,
    keys: Annotated[list[str] | None, typer.Argument(help="Portfolio keys to sync.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Full pass over every portfolio.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would change; write nothing.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Apply even if the mass-deletion guard trips.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Sync the given portfolios, or all of them with --all."""
    if bool(keys) == all_:
        raise typer.BadParameter("give portfolio keys or --all (not both)")
    settings = settings_of(ctx)
    with open_service(settings, migrate=not dry_run) as svc:
        if keys:
            results = [svc.reconciler.sync_one(k, "manual", dry_run=dry_run) for k in keys]
            console.print_results(results, as_json=as_json)
            # A key without a row was probably mistyped: nothing could be synced for it.
            failed = any(
                r.status in ("error", "conflict", "held", "missing", "orphan") for r in results
            )
        else:
            report = console.run_pass(
                svc, trigger="manual", dry_run=dry_run, force=force, quiet=as_json
            )
            console.print_report(report, as_json=as_json)
            failed = not report.ok
    raise typer.Exit(1 if failed else 0)


@app.command()
def diff(
    ctx: typer.Context,
    keys: Annotated[list[str] | None, typer.Argument(help="Keys (default: all).")] = None,
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 1 if anything differs.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Show how rows differ from storage, without writing anything."""
    with open_service(settings_of(ctx), migrate=False) as svc:
        if keys:
            results = [svc.reconciler.sync_one(k, "diff", dry_run=True) for k in keys]
            console.print_results(results, as_json=as_json, diff=True)
            differs = any(r.status == "changed" for r in results)
            failed = any(r.status == "error" for r in results)
        else:
            report = console.run_pass(svc, trigger="diff", dry_run=True, quiet=as_json)
            console.print_report(report, as_json=as_json, diff=True)
            # a pass that would be refused is never "in sync", whatever else differs
            differs = bool(report.changed) or report.aborted is not None
            failed = bool(report.errors)
    raise typer.Exit(1 if failed or (exit_code and differs) else 0)


@app.command()
def release(
    ctx: typer.Context,
    keys: Annotated[
        list[str] | None, typer.Argument(help="Portfolio keys (default: every held write).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON report.")] = False,
) -> None:
    """Apply emptying writes the mass-deletion guard held, after checking storage.

    Each held portfolio is synced again: its row is re-read and its folder re-listed, and
    the result is written through the usual compare-and-set, bypassing only the guard's
    window (the storage root must still be healthy). Exits 1 if any sync failed.
    """
    with open_service(settings_of(ctx)) as svc:
        results = svc.reconciler.release(keys)
    if not results and not as_json:
        console.out.print("no held writes" + (f" for {', '.join(keys)}" if keys else ""))
    console.print_results(results, as_json=as_json)
    raise typer.Exit(1 if any(r.status in ("error", "conflict") for r in results) else 0)


@app.command()
def status(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Where the data lives, the last full pass, errors and recent changes."""
    settings = settings_of(ctx)
    with open_service(settings, migrate=False) as svc:
        info = console.gather_status(svc)
    console.print_status(info, as_json=as_json)


@app.command()
def history(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Portfolio key.")],
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many entries.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """The recorded changes of one portfolio, newest first."""
    with open_service(settings_of(ctx), migrate=False) as svc:
        entries = schema.read_history(svc.catalog.engine, key, limit)
        state = schema.read_state(svc.catalog.engine, key)
    console.print_history(key, entries, state, as_json=as_json)


@app.command()
def setup(
    ctx: typer.Context,
    print_sql: Annotated[
        bool, typer.Option("--print-sql", help="Print the trigger SQL instead of running it.")
    ] = False,
    uninstall: Annotated[
        bool, typer.Option("--uninstall", help="Remove the row triggers this command installed.")
    ] = False,
    storage_objects: Annotated[
        str | None,
        typer.Option(
            "--storage-objects",
            metavar="BUCKET",
            help="PostgreSQL (Supabase): also sync on uploads to BUCKET (storage.objects "
            "trigger); the default with a supabase-db://BUCKET storage URL.",
        ),
    ] = None,
) -> None:
    """Create or upgrade our own tables and install row triggers (idempotent).

    On SQLite the triggers fill an outbox that `serve` drains, so rows the app creates,
    edits or deletes are synced without any webhook. On PostgreSQL they defer a job in the
    same transaction (see `worker`), after creating the job queue's schema if missing.
    """
    from portfolio_sync.backends import outbox

    with open_service(settings_of(ctx), migrate=False) as svc:
        if svc.settings.is_postgres:
            _setup_postgres(svc, print_sql=print_sql, uninstall=uninstall, bucket=storage_objects)
            return
        if storage_objects:
            raise typer.BadParameter("needs a PostgreSQL database", param_hint="--storage-objects")
        catalog = svc.catalog
        statements = outbox.uninstall_sql(catalog) if uninstall else outbox.install_sql(catalog)
        if print_sql:
            typer.echo(";\n".join(statements) + (";" if statements else ""))
            return
        if uninstall:
            outbox.run(catalog, statements)
            typer.echo(f"removed {len(statements)} trigger(s) from {catalog.table_name}")
            return
        applied = schema.migrate(catalog.engine)
        for step in applied:
            typer.echo(f"applied migration {step}")
        if not applied:
            typer.echo(f"schema is up to date (version {schema.LATEST})")
        if statements:
            outbox.run(catalog, statements)
            typer.echo(
                f"installed row triggers on {catalog.table_name} "
                "(INSERT, DELETE, and UPDATE by anyone but portfolio-sync)"
            )


def _setup_postgres(svc: Service, *, print_sql: bool, uninstall: bool, bucket: str | None) -> None:
    from portfolio_sync.backends import pg_setup

    bucket = bucket or pg_setup.storage_bucket(svc.settings)
    if print_sql:
        sql = pg_setup.print_sql(svc.catalog, svc.settings, bucket=bucket, remove=uninstall)
        typer.echo(sql, nl=False)
        return
    run = pg_setup.uninstall if uninstall else pg_setup.install
    for line in run(svc.catalog, svc.settings, bucket=bucket):
        typer.echo(line)


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[
        str,
        typer.Option(
            "--host", envvar=_ENV + "HOST", show_envvar=True, help="Address to listen on."
        ),
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option("--port", envvar=_ENV + "PORT", show_envvar=True, help="Port to listen on."),
    ] = 8080,
    watch: Annotated[
        bool, typer.Option("--watch/--no-watch", help="Watch a local storage folder for changes.")
    ] = True,
) -> None:
    """Run the service: HTTP hooks and API, work queue, scheduler, folder watcher."""
    from portfolio_sync.web.serve import run_server

    run_server(settings_of(ctx), host=host, port=port, watch=watch)


@app.command()
def worker(
    ctx: typer.Context,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency", min=1, help="Syncs run at once (default: PORTFOLIO_SYNC_WORKERS, 4)."
        ),
    ] = None,
    stall_timeout: Annotated[
        float,
        typer.Option(
            "--stall-timeout",
            min=1.0,
            envvar=_ENV + "STALL_TIMEOUT",
            show_envvar=True,
            help="Seconds without a heartbeat before a worker's jobs are retried elsewhere.",
        ),
    ] = 30.0,
) -> None:
    """Run queue workers only, no HTTP (PostgreSQL). Start as many as needed, anywhere."""
    from portfolio_sync.worker import run_worker

    run_worker(settings_of(ctx, workers=concurrency), stall_timeout=stall_timeout)


@app.command()
def check(ctx: typer.Context) -> None:
    """Show the effective settings and where each came from, then check the database, the
    table and its columns, our tables, triggers and storage: one line each, with the fix.

    Exit 0 when everything needed works, 1 when a backend cannot be used, 2 when the
    configuration is wrong.
    """
    from portfolio_sync.cli import doctor

    root = ctx.find_root()
    obj = root.obj or {}
    try:
        settings = settings_of(ctx)
    except ConfigError as exc:
        typer.echo(f"✗ configuration: {exc}")
        raise typer.Exit(2) from None
    flags = {
        name
        for name in obj.get("overrides", {})
        if getattr(root.get_parameter_source(name), "name", None) == "COMMANDLINE"
    }
    found = doctor.origins(settings, flags=flags, config_file=obj.get("config"))
    checks = doctor.run_checks(settings)
    doctor.report(settings, found, checks, typer.echo)
    raise typer.Exit(doctor.exit_code(checks))


@app.command()
def init(
    path: Annotated[Path, typer.Option("--path", help="Where to write.")] = Path(
        "portfolio-sync.toml"
    ),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented portfolio-sync.toml to start from."""
    from portfolio_sync.cli.init_file import TEMPLATE

    if path.exists() and not force:
        raise ConfigError(f"{path} exists; use --force to overwrite")
    path.write_text(TEMPLATE, encoding="utf-8")
    typer.echo(
        f"wrote {path}; edit it, then run: portfolio-sync setup && portfolio-sync sync --all"
    )


@app.command()
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where to create the demo.")] = Path(
        "demo"
    ),
    portfolios: Annotated[int, typer.Option("--portfolios", help="How many.")] = 20,
    serve: Annotated[bool, typer.Option("--serve", help="Then run the service on it.")] = False,
    port: Annotated[
        int,
        typer.Option("--port", envvar=_ENV + "PORT", show_envvar=True, help="Port for --serve."),
    ] = 8080,
) -> None:
    """Create a demo (SQLite table + folder of generated images) and sync it."""
    from portfolio_sync.cli.demo import run_demo

    run_demo(directory, portfolios=portfolios, serve=serve, port=port)


def main() -> None:
    """Console-script entry: PortfolioSyncError becomes one line and an exit code.

    Click handles usage errors and exit codes itself (standalone mode); our own errors
    propagate out of it and are printed here as `error: <what>; <what to do>`, once: the
    driver's text is already summarised in it (explain.py). `-vv` adds the traceback.
    """
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except ConfigError as exc:
        _fail(exc, 2)
    except PortfolioSyncError as exc:
        _fail(exc, 1)


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM until a command installs its own stop (`serve` and `worker` do once running).

    As a container's PID 1 the process gets no default action for SIGTERM: the kernel drops
    it, and a start-up or a one-shot `sync` could only be SIGKILLed after the grace period.
    Raising here unwinds the command (connections closed, nothing half-written: every
    write is a compare-and-set) and exits with 143, the status a shell shows for SIGTERM.
    """
    raise SystemExit(128 + signum)


def _fail(exc: BaseException, code: int) -> None:
    if _verbosity >= 2:
        traceback.print_exception(exc, file=sys.stderr)
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(code)
