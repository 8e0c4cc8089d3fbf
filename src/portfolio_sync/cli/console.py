"""Human (rich) and machine (--json) output of the CLI; no sync logic here."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from cronsim import CronSim
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from portfolio_sync.backends import schema
from portfolio_sync.models import PassReport, SyncResult
from portfolio_sync.wiring import Service

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def dump_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


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
            out.print(f"{r.key}: {label}{detail}")


def _print_change(r: SyncResult, *, diff: bool) -> None:
    if r.status != "changed":
        return
    verb = "would change" if r.dry_run and not diff else "differs" if diff else "updated"
    out.print(f"[bold]{r.key}[/]: {verb} (+{len(r.added)} -{len(r.removed)})")
    for value in r.added:
        out.print(f"  [green]+ {value}[/]")
    for value in r.removed:
        out.print(f"  [red]- {value}[/]")


def print_report(report: PassReport, *, as_json: bool, diff: bool = False) -> None:
    if as_json:
        dump_json(
            {
                "ok": report.ok,
                "dry_run": report.dry_run,
                "rows": report.rows,
                "folders": report.folders,
                "changed": [_result_dict(r) for r in report.changed],
                "unchanged": report.unchanged,
                "orphans": report.orphans,
                "errors": [_result_dict(r) for r in report.errors],
                "conflicts": report.conflicts,
                "held": report.held,
                "aborted": report.aborted,
                "duration_ms": round(report.duration_ms, 1),
            }
        )
        return
    for r in report.changed:
        _print_change(r, diff=diff)
    for r in report.errors:
        err.print(f"[red]error[/] {r.key}: {r.error}")
    if report.orphans:
        shown = ", ".join(report.orphans[:10]) + (" …" if len(report.orphans) > 10 else "")
        out.print(f"orphan folders (no row): {shown}")
    if report.held:
        shown = ", ".join(report.held[:10]) + (" …" if len(report.held) > 10 else "")
        err.print(f"[yellow]held writes left for `portfolio-sync release`:[/] {shown}")
    if report.aborted:
        err.print(f"[red bold]aborted:[/] {report.aborted}")
    verb = "would change" if report.dry_run else "changed"
    out.print(
        f"{len(report.changed)} {verb}, {report.unchanged} unchanged, "
        f"{len(report.orphans)} orphans, {len(report.errors)} errors "
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
        grid.add_row(label.replace("_", " "), str(info[label]))
    for column, template in info["columns"].items():
        grid.add_row(f"column {column}", f"← {template}")
    last = info["last_full_pass"]
    grid.add_row(
        "last full pass",
        "never"
        if not last
        else f"{last['at']} ({last['changed']} changed, {last['errors']} errors, "
        f"{last['duration_ms'] / 1000:.2f} s)",
    )
    grid.add_row("keys with errors", str(len(info["errors"])))
    grid.add_row("held writes", str(len(info["held"])))
    out.print(grid)
    for e in info["errors"]:
        out.print(f"  [red]{e['key']}[/] ({e['attempts']} attempts): {e['last_error']}")
    if info["held"]:
        out.print(
            "[yellow]held by the mass-deletion guard[/] "
            "(check storage, then run `portfolio-sync release`):"
        )
        for h in info["held"]:
            removed = len((h["held_write"] or {}).get("removed", []))
            out.print(f"  [yellow]{h['key']}[/] since {str(h['held_at'])[:19]}: -{removed} images")
    if info["recent"]:
        table = Table("at", "key", "trigger", "+", "-", title="recent changes")
        for h in info["recent"]:
            table.add_row(
                str(h["at"])[:19],
                h["key"],
                h["trigger"],
                str(len(h["added"])),
                str(len(h["removed"])),
            )
        out.print(table)


def print_history(
    key: str, entries: list[dict[str, Any]], state: dict[str, Any] | None, *, as_json: bool
) -> None:
    if as_json:
        dump_json({"key": key, "state": state, "history": entries})
        return
    if state:
        out.print(f"last synced {state['last_synced_at']}, fingerprint {state['fingerprint']}")
        if state["last_error"]:
            out.print(f"[red]last error[/] ({state['attempts']} attempts): {state['last_error']}")
    if not entries:
        out.print(f"no recorded changes for {key}")
        return
    table = Table("at", "trigger", "added", "removed", "ms", title=f"history of {key}")
    for h in entries:
        table.add_row(
            str(h["at"])[:19],
            h["trigger"],
            "\n".join(h["added"]) or "-",
            "\n".join(h["removed"]) or "-",
            f"{h['duration_ms']:.1f}",
        )
    out.print(table)
