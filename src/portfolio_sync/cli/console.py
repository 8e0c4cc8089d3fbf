"""Human (rich) and machine (--json) output of the CLI; no sync logic here."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TextIO

from cronsim import CronSim
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from portfolio_sync.backends import schema
from portfolio_sync.layout import natural_key
from portfolio_sync.models import PassReport, SyncResult
from portfolio_sync.wiring import Service


def _console(stream: TextIO) -> Console:
    """A console that wraps for a terminal, and never for a pipe or a file: a consumer of
    redirected output reads whole lines (rich would otherwise wrap at 80 columns)."""
    if stream.isatty():
        return Console(file=stream, highlight=False)
    return Console(file=stream, highlight=False, soft_wrap=True, width=_UNWRAPPED)


_UNWRAPPED = 100_000
out = _console(sys.stdout)
err = _console(sys.stderr)


def _json_value(value: object) -> object:
    """The documented JSON forms: timestamps in ISO 8601, sets as naturally sorted lists."""
    if isinstance(value, datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return aware.isoformat()
    if isinstance(value, frozenset | set):
        return sorted(value, key=natural_key)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} has no JSON form")


def dump_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_value, ensure_ascii=False) + "\n")


def by_key(results: list[SyncResult]) -> list[SyncResult]:
    """Natural order of keys (1, 2, 10), as people number portfolios."""
    return sorted(results, key=lambda r: natural_key(r.key))


def run_pass(
    svc: Service, *, trigger: str, dry_run: bool, force: bool = False, quiet: bool = False
) -> PassReport:
    """A full pass with a progress bar when stderr is a terminal."""
    if quiet or not err.is_terminal:
        return svc.reconciler.sync_all(trigger, dry_run=dry_run, force=force)
    total = svc.catalog.count_rows()
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("dry run" if dry_run else "syncing", total=total)
        return svc.reconciler.sync_all(
            trigger,
            dry_run=dry_run,
            force=force,
            progress=lambda done: progress.update(task, completed=done),
        )


def _result_dict(result: SyncResult) -> dict[str, Any]:
    data = asdict(result)
    data["added"], data["removed"] = list(result.added), list(result.removed)
    data["listed"] = sorted(result.listed, key=natural_key)
    data["duration_ms"] = round(result.duration_ms, 2)
    return data


def print_results(results: list[SyncResult], *, as_json: bool, diff: bool = False) -> None:
    if as_json:
        dump_json([_result_dict(r) for r in results])
        return
    for r in results:
        _print_change(r, diff=diff)
        if r.status != "changed":
            detail = f": {r.error}" if r.error else ""
            label = {
                "missing": "no row and no folder",
                "orphan": "folder without a row",
                "held": f"held (-{len(r.removed)})",
            }.get(r.status, r.status)
            out.print(escape(f"{r.key}: {label}{detail}"))


def _print_change(r: SyncResult, *, diff: bool) -> None:
    if r.status != "changed":
        return
    verb = "would change" if r.dry_run and not diff else "differs" if diff else "updated"
    if r.added or r.removed:
        what = f"+{len(r.added)} -{len(r.removed)}"
    else:  # same images: NULL became [], or the order or an unreadable value was fixed
        what = "same images, value rewritten"
    out.print(f"[bold]{escape(r.key)}[/]: {verb} ({what})")
    for value in r.added:
        out.print(f"  [green]+ {escape(value)}[/]")
    for value in r.removed:
        out.print(f"  [red]- {escape(value)}[/]")


def print_report(report: PassReport, *, as_json: bool, diff: bool = False) -> None:
    if as_json:
        dump_json(
            {
                "ok": report.ok,
                "dry_run": report.dry_run,
                "rows": report.rows,
                "folders": report.folders,
                "changed": [_result_dict(r) for r in by_key(report.changed)],
                "unchanged": report.unchanged,
                "orphans": sorted(report.orphans, key=natural_key),
                "errors": [_result_dict(r) for r in by_key(report.errors)],
                "conflicts": report.conflicts,
                "held": report.held,
                "aborted": report.aborted,
                "duration_ms": round(report.duration_ms, 1),
            }
        )
        return
    for r in by_key(report.changed):
        _print_change(r, diff=diff)
    for r in by_key(report.errors):
        if r.key != "*":  # the pass's own error is the abort reason, printed once below
            err.print(f"[red]error[/] {escape(r.key)}: {escape(r.error or '')}")
    if report.orphans:
        orphans = sorted(report.orphans, key=natural_key)
        shown = ", ".join(orphans[:10]) + (" …" if len(orphans) > 10 else "")
        out.print(escape(f"orphan folders (no row): {shown}"))
    if report.held:
        held = sorted(report.held, key=natural_key)
        shown = ", ".join(held[:10]) + (" …" if len(held) > 10 else "")
        err.print(f"[yellow]held writes left for `portfolio-sync release`:[/] {escape(shown)}")
    if report.aborted:
        err.print(f"[red bold]aborted:[/] {escape(report.aborted)}")
    verb = "would change" if report.dry_run else "changed"
    key_errors = len([r for r in report.errors if r.key != "*"])
    out.print(
        f"{len(report.changed)} {verb}, {report.unchanged} unchanged, "
        f"{len(report.orphans)} orphans, {key_errors} errors "
        f"({report.rows} rows, {report.folders} folders, {report.duration_ms / 1000:.2f} s)"
    )


def gather_status(svc: Service) -> dict[str, Any]:
    engine = svc.catalog.engine
    now = datetime.now(UTC)
    return {
        "database": svc.catalog.describe(),
        "table": svc.settings.table,
        "columns": {
            c.column: svc.layout.folder("{key}") + c.subfolder for c in svc.layout.collections
        },
        "storage": svc.storage.description,
        "rows": svc.catalog.count_rows(),
        "schema_version": schema.current_version_of(engine),
        "last_full_pass": schema.get_meta(engine, "last_full_pass"),
        "passes": schema.pass_summary(engine),
        "schedule": svc.settings.schedule,
        "next_full_pass": next(iter(CronSim(svc.settings.schedule, now))).isoformat(),
        "errors": schema.read_errors(engine),
        "held": schema.read_held(engine),
        "recent": schema.recent_history(engine, 10),
    }


def print_status(info: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        dump_json(info)
        return
    grid = Table.grid(padding=(0, 2))
    for label in (
        "database",
        "table",
        "storage",
        "rows",
        "schema_version",
        "schedule",
        "next_full_pass",
    ):
        grid.add_row(label.replace("_", " "), escape(str(info[label])))
    for column, template in info["columns"].items():
        grid.add_row(f"column {column}", f"← {template}")
    passes = info["passes"]
    last, last_ok = passes["last"], passes["last_ok"]
    grid.add_row("last full pass", escape(_pass_line(last)) if last else "never")
    if last and last["outcome"] != "ok":
        grid.add_row("last good pass", escape(_pass_line(last_ok)) if last_ok else "never")
        grid.add_row("failed passes in a row", str(passes["consecutive_failures"]))
    if last and last["outcome"] == "aborted":
        # Rows were not compared, so "0 keys with errors" would claim too much.
        grid.add_row("keys with errors", f"{len(info['errors'])} recorded; unknown since the pass")
    else:
        grid.add_row("keys with errors", str(len(info["errors"])))
    grid.add_row("held writes", str(len(info["held"])))
    out.print(grid)
    for e in sorted(info["errors"], key=lambda e: natural_key(e["key"])):
        out.print(
            f"  [red]{escape(e['key'])}[/] ({e['attempts']} attempts): "
            f"{escape(str(e['last_error']))}"
        )
    if info["held"]:
        out.print(
            "[yellow]held by the mass-deletion guard[/] "
            "(check storage, then run `portfolio-sync release`):"
        )
        for h in info["held"]:
            removed = len((h["held_write"] or {}).get("removed", []))
            out.print(
                f"  [yellow]{escape(h['key'])}[/] since {str(h['held_at'])[:19]}: -{removed} images"
            )
    if info["recent"]:
        table = Table("at", "key", "trigger", "+", "-", title="recent changes")
        by_name = sorted(info["recent"], key=lambda h: natural_key(h["key"]))
        for h in sorted(by_name, key=lambda h: h["at"], reverse=True):
            table.add_row(
                str(h["at"])[:19],
                escape(h["key"]),
                escape(h["trigger"]),
                str(len(h["added"])),
                str(len(h["removed"])),
            )
        out.print(table)


def _pass_line(entry: dict[str, Any]) -> str:
    at = entry["finished_at"].isoformat(timespec="seconds")
    counts = (
        f"{entry['rows']} rows, {entry['changed']} changed, {entry['errors']} errors, "
        f"{entry['duration_ms'] / 1000:.2f} s"
    )
    if entry["outcome"] == "aborted":
        return f"FAILED {at} ({entry['trigger']}): {entry['reason']}"
    label = "ok" if entry["outcome"] == "ok" else "completed with errors"
    return f"{label} {at} ({entry['trigger']}; {counts})"


def print_history(
    key: str, entries: list[dict[str, Any]], state: dict[str, Any] | None, *, as_json: bool
) -> None:
    if as_json:
        dump_json({"key": key, "state": state, "history": entries})
        return
    if state:
        out.print(f"last synced {state['last_synced_at']}, fingerprint {state['fingerprint']}")
        if state["last_error"]:
            out.print(
                f"[red]last error[/] ({state['attempts']} attempts): {escape(state['last_error'])}"
            )
    if not entries:
        out.print(escape(f"no recorded changes for {key}"))
        return
    table = Table("at", "trigger", "added", "removed", "ms", title=escape(f"history of {key}"))
    for h in entries:
        removed = "\n".join(h["removed"]) or (
            f"was {json.dumps(h['replaced'], ensure_ascii=False)}" if h.get("replaced") else "-"
        )
        table.add_row(
            str(h["at"])[:19],
            escape(h["trigger"]),
            escape("\n".join(h["added"]) or "-"),
            escape(removed),
            f"{h['duration_ms']:.1f}",
        )
    out.print(table)
