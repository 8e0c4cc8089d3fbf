"""The only code that writes portfolio rows: `plan()`, `sync_one()` and `sync_all()`.

Correctness comes from re-reading both sides, never from an event's content: read the row,
then list its folder, then compare-and-set against the value read first. The bulk pass
does the same for the whole table as one streaming merge of two ordered streams (folders
from one listing of the tree, rows from one ordered read), writing only drifted rows in
batches, so its cost is one listing plus one table read and its memory one batch.

Writes that empty a row pass the checks of `safety.py` first, on every path: a healthy
storage root, and the mass-deletion guard (the pass's own count, or for single syncs the
streaming window, past which they are held for an operator).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from operator import attrgetter
from typing import Any

from portfolio_sync import image_objects
from portfolio_sync.backends import schema
from portfolio_sync.backends.catalog import Catalog
from portfolio_sync.backends.image_cache import ImageCache
from portfolio_sync.backends.storage import FolderFault, SnapshotListing, Storage, folder_order
from portfolio_sync.errors import CatalogError, PortfolioSyncError, StorageError
from portfolio_sync.layout import Layout
from portfolio_sync.models import ImageMeta, ObjectInfo, PassReport, Plan, Row, SyncResult
from portfolio_sync.safety import Guard, RootHealth, StreamingGuard

__all__ = ["Guard", "Reconciler", "fingerprint", "plan"]

logger = logging.getLogger(__name__)

CAS_ATTEMPTS = 3
ORPHANS_KEPT = 200  # orphan folder names the last full pass keeps (the count is exact)
LOOKUP_ROWS = 200  # rows of a bulk pass that share one image metadata lookup
_path_of = attrgetter("path")


def plan(
    row: Row,
    images: Sequence[Sequence[ObjectInfo]],
    layout: Layout,
    meta: Mapping[str, ImageMeta] | None = None,
) -> Plan | None:
    """The write that makes `row` equal its listing, or None when it already does.

    `images` holds each collection's images (from `Layout.select`). A NULL column with no
    images becomes `[]`, so every synced row holds a list. With `layout.image_fields`,
    elements are objects and `meta` holds what reading each image (by path) told.
    """
    values = row.values
    changed: list[list[Any] | None]
    if layout.image_fields:
        known = meta or {}
        changed = [
            image_objects.rendering_if_changed(found, current, known, layout)
            for found, current in zip(images, values, strict=True)
        ]
    else:
        changed = [
            layout.rendering_if_changed(found, current)
            for found, current in zip(images, values, strict=True)
        ]
    if all(rendering is None for rendering in changed):
        return None
    new = tuple(
        list(current or ()) if rendering is None else rendering
        for rendering, current in zip(changed, values, strict=True)
    )
    name = image_objects.identity if layout.image_fields else _same
    old_values = [name(v) for values in row.values if values for v in values]
    new_values = [name(v) for values in new for v in values]
    old_set, new_set = set(old_values), set(new_values)
    return Plan(
        key=row.key,
        fingerprint=fingerprint([obj for found in images for obj in found]),
        key_value=row.key_value,
        expected=row.raw,
        replaced=row.values,
        new=new,
        added=tuple(dict.fromkeys(v for v in new_values if v not in old_set)),
        removed=tuple(dict.fromkeys(v for v in old_values if v not in new_set)),
        before=len(old_set),
        invalid=row.invalid,
    )


def _same(value: Any) -> Any:
    return value


def fingerprint(objects: Sequence[ObjectInfo]) -> str:
    """A short digest of a listing, kept in state to tell when a folder last changed."""
    text = "".join(
        f"{obj.path}\0{obj.size}\0{obj.mtime:.3f}\n" for obj in sorted(objects, key=_path_of)
    )  # one update of the concatenation: the same digest as one update per object
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


class Reconciler:
    """Binds a catalog, a storage and the layout rules; safe to share between threads."""

    def __init__(
        self,
        catalog: Catalog,
        storage: Storage,
        layout: Layout,
        *,
        guard: Guard | None = None,
        batch_size: int = 500,
        guard_window: float = 600.0,
        images: ImageCache | None = None,
    ) -> None:
        self.catalog = catalog
        self.storage = storage
        self.layout = layout
        self.guard = guard or Guard()
        self.batch_size = batch_size
        self._joint = (
            storage
            if isinstance(storage, SnapshotListing) and storage.shares(catalog.engine)
            else None
        )
        self.health = RootHealth.for_storage(storage, catalog.engine, layout.prefix)
        self.streaming = StreamingGuard(
            self.guard, catalog.engine, catalog.count_nonempty, window=guard_window
        )
        self.images = images  # metadata of image objects (`image_fields`), if configured

    def plan(
        self, row: Row, images: Sequence[Sequence[ObjectInfo]], *, dry_run: bool = False
    ) -> Plan | None:
        """`plan()` with the metadata image objects need (cached, else read; a dry run
        caches nothing)."""
        meta = None
        if self.images is not None:
            found = (obj for collection in images for obj in collection)
            meta = self.images.lookup(found, remember=not dry_run)
        return plan(row, images, self.layout, meta)

    # ---- one portfolio ------------------------------------------------------------------
    def sync_one(
        self, key: str, trigger: str, *, dry_run: bool = False, release: bool = False
    ) -> SyncResult:
        """Make one row equal its folder. Errors are returned (and recorded), not raised.

        A write that would empty the row (or remove more than half of it) needs a healthy
        storage root (else an error), and a place in the streaming guard's window (else it
        is held: status "held", recorded for `release`). `release` is the operator's
        release of a held write: the window is not consulted, root health still is.
        """
        started = time.perf_counter()
        try:
            result = self._sync_one(key, trigger, dry_run=dry_run, started=started, release=release)
        except PortfolioSyncError as exc:
            result = SyncResult(
                key=key, status="error", error=str(exc), duration_ms=_ms(started), dry_run=dry_run
            )
        if result.status == "error" and not dry_run:
            self._record_error(key, result.error or "error")
        log_result(result, trigger)
        return result

    def release(
        self, keys: Sequence[str] | None = None, trigger: str = "release"
    ) -> list[SyncResult]:
        """The operator's release of held writes (all, or of `keys`): each key is synced
        again, so what is written is what storage lists now, not what was held."""
        held = schema.read_held(self.catalog.engine, keys or None)
        return [self.sync_one(h["key"], trigger, release=True) for h in held]

    def _sync_one(
        self, key: str, trigger: str, *, dry_run: bool, started: float, release: bool
    ) -> SyncResult:
        admitted = release
        for _ in range(CAS_ATTEMPTS):
            row, objects = self._read(key)
            listed = frozenset(o.path for o in objects)

            done = functools.partial(SyncResult, key=key, dry_run=dry_run, listed=listed)
            if row is None:
                return done(status="orphan" if objects else "missing", duration_ms=_ms(started))
            images = self.layout.select(key, objects)
            change = self.plan(row, images, dry_run=dry_run)
            if change is None:
                if not dry_run:
                    found = [o for collection in images for o in collection]
                    schema.record_checked(self.catalog.autocommit_engine, key, fingerprint(found))
                return done(status="unchanged", duration_ms=_ms(started))
            if dry_run:
                return _changed(change, started, dry_run=True, listed=listed)
            if change.drastic:
                self.health.check()
                if not admitted:
                    reason = self.streaming.admit(key)
                    if reason is not None:
                        return self._hold(change, trigger, reason, listed, started)
                    admitted = True
            written = self.catalog.apply([change], trigger=trigger, durations={key: _ms(started)})
            if key in written:
                _log_replaced(change)
                return _changed(change, started, listed=listed)
            logger.info(
                "row changed during sync, retrying", extra={"action": "cas_retry", "key": key}
            )
        return SyncResult(
            key=key,
            status="conflict",
            duration_ms=_ms(started),
            error="the row kept changing while it was synced",
        )

    def _read(self, key: str) -> tuple[Row | None, list[ObjectInfo]]:
        """The row, read strictly before the listing (invariant 1); or both from one
        snapshot, when the storage is a table of the catalog's database."""
        folder = self.layout.folder(key)
        if self._joint is not None:
            with self.catalog.snapshot() as conn:
                return self.catalog.read_row(key, conn=conn), self._joint.list_prefix_in(
                    conn, folder
                )
        row = self.catalog.read_row(key)
        return row, self.storage.list_prefix(folder)

    def _hold(
        self, change: Plan, trigger: str, reason: str, listed: frozenset[str], started: float
    ) -> SyncResult:
        write = {
            "trigger": trigger,
            "new": [list(values) for values in change.new],
            "removed": list(change.removed),
            "added": list(change.added),
            "listed": sorted(listed)[:1000],
        }
        schema.record_held(self.catalog.engine, change.key, reason, write)
        logger.warning(
            "emptying write held",
            extra={"action": "write_held", "key": change.key, "removed": len(change.removed)},
        )
        return SyncResult(
            key=change.key,
            status="held",
            added=change.added,
            removed=change.removed,
            error=reason,
            duration_ms=_ms(started),
            listed=listed,
        )

    def _record_error(self, key: str, error: str) -> None:
        try:
            schema.record_error(self.catalog.engine, key, error)
        except Exception:  # bookkeeping must not hide the original error
            logger.exception(
                "could not record sync error", extra={"action": "state_error", "key": key}
            )

    # ---- the whole table ----------------------------------------------------------------
    def sync_all(
        self,
        trigger: str,
        *,
        dry_run: bool = False,
        force: bool = False,
        progress: Callable[[int], None] | None = None,
        on_conflict: Callable[[str], None] | None = None,
    ) -> PassReport:
        """One streaming merge of the tree listing with the ordered table read.

        Writes go out in batches as the merge proceeds, except writes that would empty a
        non-empty row: those wait for the end, where the mass-deletion guard decides. A
        storage or database error stops the pass; nothing not yet written is written.
        Rows whose compare-and-set failed are handed to `on_conflict` (default: synced
        again one by one after the pass).
        """
        started = time.perf_counter()
        started_at = schema.now()
        report = PassReport(dry_run=dry_run)
        held: set[str] = set()  # filled below, where a database error stops the pass
        merge = _Merge(self, report, trigger=trigger, dry_run=dry_run, progress=progress, held=held)
        try:
            # writes held for an operator stay held: only --force (or `release`) applies them
            if not force:
                held.update(h["key"] for h in schema.read_held(self.catalog.engine))
            with self.catalog.stream_rows() as rows:
                folders = self.storage.iter_folders(self.layout.prefix)
                merge.run(rows, folders)
            merge.flush()
            merge.finish(force=force)
        except (StorageError, CatalogError) as exc:
            report.aborted = str(exc)
            report.errors.append(SyncResult(key="*", status="error", error=str(exc)))
            logger.warning("full pass stopped", extra={"action": "pass_aborted", "error": str(exc)})
        for key in merge.conflicts:
            report.conflicts.append(key)
            if on_conflict is not None:
                on_conflict(key)
            else:
                result = self.sync_one(key, trigger)
                (report.errors if result.status == "error" else report.changed).append(result)
        report.duration_ms = _ms(started)
        if not dry_run:
            self._record_pass(report, trigger, started_at)
        if not dry_run and report.aborted is None:
            self.health.remember_device(replace=force)  # --force accepts a new device
            schema.put_meta(
                self.catalog.engine,
                "last_full_pass",
                {
                    "at": schema.now().isoformat(),
                    "trigger": trigger,
                    "rows": report.rows,
                    "changed": len(report.changed),
                    "orphans": len(report.orphans),
                    "orphan_keys": report.orphans[:ORPHANS_KEPT],  # for the console
                    "errors": len(report.errors),
                    "duration_ms": round(report.duration_ms, 1),
                },
            )
        logger.log(
            logging.DEBUG if report.aborted else logging.INFO,  # the abort was the WARNING
            "full pass done",
            extra={
                "action": "pass_done",
                "trigger": trigger,
                "rows": report.rows,
                "changed": len(report.changed),
                "unchanged": report.unchanged,
                "orphans": len(report.orphans),
                "errors": len(report.errors),
                "dry_run": dry_run,
                "duration_ms": round(report.duration_ms, 1),
            },
        )
        return report

    def _record_pass(self, report: PassReport, trigger: str, started_at: datetime) -> None:
        try:
            schema.record_pass(
                self.catalog.engine,
                started_at=started_at,
                trigger=trigger,
                outcome=pass_outcome(report),
                reason=report.aborted,
                rows=report.rows,
                changed=len(report.changed),
                errors=len([r for r in report.errors if r.key != "*"]),
                orphans=len(report.orphans),
                duration_ms=report.duration_ms,
            )
        except Exception as exc:  # the database may be what stopped the pass
            logger.warning(
                "could not record the full pass",
                extra={"action": "pass_not_recorded", "error": str(exc)},
            )


def pass_outcome(report: PassReport) -> schema.PassOutcome:
    if report.aborted is not None:
        return "aborted"
    return "errors" if report.errors else "ok"


def _log_replaced(change: Plan) -> None:
    if change.invalid is not None:
        logger.warning(
            "unreadable images value replaced by the listing (old value kept in history)",
            extra={"action": "invalid_value_replaced", "key": change.key, "error": change.invalid},
        )


class _Merge:
    """State of one bulk pass: the merge loop, the write batch and the held-back empties."""

    def __init__(
        self,
        rec: Reconciler,
        report: PassReport,
        *,
        trigger: str,
        dry_run: bool,
        progress: Callable[[int], None] | None,
        held: set[str],
    ) -> None:
        self.rec = rec
        self.held = held
        self.report = report
        self.trigger = trigger
        self.dry_run = dry_run
        self.progress = progress
        self.batch: list[Plan] = []
        self.emptying: list[Plan] = []
        self.nonempty_before = 0
        self.conflicts: list[str] = []
        self.root_checked = False
        self.waiting: list[tuple[Row, list[list[ObjectInfo]]]] = []  # for image metadata

    def run(
        self, rows: Iterator[Row], folders: Iterator[tuple[str, list[ObjectInfo] | FolderFault]]
    ) -> None:
        layout, report, visit = self.rec.layout, self.report, self.visit
        named = (folder for folder in folders if layout.is_key(folder[0]))
        folder = next(named, None)
        folder_key = None if folder is None else folder_order(folder[0])
        last_row = last_folder = b""
        for row in rows:
            row_key = folder_order(row.key)
            while folder is not None and folder_key < row_key:  # type: ignore[operator]
                last_folder = _check_order(last_folder, folder_key, "storage")
                if not isinstance(folder[1], FolderFault):  # not a folder: no orphan either
                    report.orphans.append(folder[0])
                report.folders += 1
                folder = next(named, None)
                folder_key = None if folder is None else folder_order(folder[0])
            if last_row and row_key <= last_row:
                _check_order(last_row, row_key, "database")
            last_row = row_key
            if folder is not None and folder_key == row_key:
                report.folders += 1
                visit(row, folder[1])
                folder = next(named, None)
                folder_key = None if folder is None else folder_order(folder[0])
            else:
                visit(row, [])
        while folder is not None:  # folders after the last row
            last_folder = _check_order(last_folder, folder_key, "storage")
            if not isinstance(folder[1], FolderFault):
                report.orphans.append(folder[0])
            report.folders += 1
            folder = next(named, None)
            folder_key = None if folder is None else folder_order(folder[0])
        self.drain()

    def visit(self, row: Row, objects: list[ObjectInfo] | FolderFault) -> None:
        report = self.report
        report.rows += 1
        if self.progress is not None and report.rows % 500 == 0:
            self.progress(report.rows)
        if any(row.values):
            self.nonempty_before += 1
        if isinstance(objects, FolderFault):  # that portfolio's error, not the pass's
            report.errors.append(SyncResult(key=row.key, status="error", error=str(objects)))
            report.faulted.append(row.key)
            if not self.dry_run:
                self.rec._record_error(row.key, str(objects))
            return
        selected = self.rec.layout.select(row.key, objects)
        if self.rec.images is None:
            self.decide(plan(row, selected, self.rec.layout))
            return
        self.waiting.append((row, selected))
        if len(self.waiting) >= LOOKUP_ROWS:
            self.drain()

    def drain(self) -> None:
        """Plan the rows that wait for image metadata, with one cache lookup for all."""
        if not self.waiting:
            return
        images = self.rec.images
        assert images is not None
        found = (obj for _, selected in self.waiting for group in selected for obj in group)
        meta = images.lookup(found, remember=not self.dry_run)
        for row, selected in self.waiting:
            self.decide(plan(row, selected, self.rec.layout, meta))
        self.waiting.clear()

    def decide(self, change: Plan | None) -> None:
        """Count a row in sync, hold back an emptying write, or batch the write."""
        report = self.report
        if change is None:
            report.unchanged += 1
            return
        if change.drastic and change.key in self.held:
            report.held.append(change.key)
            return
        if change.empties:
            self.emptying.append(change)
            return
        if change.drastic and not self.root_checked:  # removes most of a row: root first
            self.rec.health.check(record=not self.dry_run)
            self.root_checked = True
        self.batch.append(change)
        if len(self.batch) >= self.rec.batch_size:
            self.flush()

    def flush(self, plans: list[Plan] | None = None) -> None:
        plans = self.batch if plans is None else plans
        if not plans:
            return
        if self.dry_run:
            written = {p.key for p in plans}
        else:
            written = self.rec.catalog.apply(plans, trigger=self.trigger)
        for change in plans:
            if change.key in written:
                if not self.dry_run:
                    _log_replaced(change)
                self.report.changed.append(_changed(change, 0.0, dry_run=self.dry_run))
            else:
                self.conflicts.append(change.key)
        plans.clear()

    def finish(self, *, force: bool) -> None:
        if self.progress is not None:
            self.progress(self.report.rows)
        emptied = len(self.emptying)
        if emptied and not force and self.rec.guard.trips(emptied, self.nonempty_before):
            self.report.aborted = (
                f"refusing to empty {emptied} of {self.nonempty_before} non-empty rows "
                f"(limit: {self.rec.guard.max_share:.0%} and at least {self.rec.guard.min_rows} "
                "rows); check the storage URL and folder template, or use --force"
            )
            logger.warning(
                "mass-deletion guard tripped",
                extra={
                    "action": "guard_tripped",
                    "emptied": emptied,
                    "nonempty": self.nonempty_before,
                    "keys": [p.key for p in self.emptying[:20]],
                },
            )
            return
        if emptied:  # StorageError: the pass stops here (a dry run reports it the same)
            self.rec.health.check(allow_empty=force, record=not self.dry_run)
        for start in range(0, emptied, self.rec.batch_size):
            self.flush(self.emptying[start : start + self.rec.batch_size])


def _check_order(previous: bytes, current: bytes | None, side: str) -> bytes:
    """The merge is only sound if both streams are sorted alike; refuse otherwise."""
    assert current is not None
    if current <= previous and previous:
        raise CatalogError(
            f"the {side} stream is not in byte order of 'key/' ({previous!r} then {current!r}); "
            "stopping the pass without further writes"
        )
    return current


def _changed(
    change: Plan, started: float, *, dry_run: bool = False, listed: frozenset[str] = frozenset()
) -> SyncResult:
    return SyncResult(
        key=change.key,
        status="changed",
        added=change.added,
        removed=change.removed,
        duration_ms=_ms(started) if started else 0.0,
        dry_run=dry_run,
        listed=listed,
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


_LOG_OF_STATUS = {
    # status: (level, message, action)
    "changed": (logging.INFO, "portfolio updated", "row_updated"),
    "unchanged": (logging.DEBUG, "portfolio already in sync", "row_in_sync"),
    "orphan": (logging.DEBUG, "folder has no row", "orphan_folder_seen"),
    "missing": (logging.DEBUG, "no row and no folder", "nothing_to_sync"),
    "error": (logging.WARNING, "sync failed", "sync_failed"),
    "conflict": (logging.WARNING, "row kept changing during the sync", "sync_conflict"),
    "held": (logging.WARNING, "emptying write held for an operator", "write_held"),
}


def log_result(result: SyncResult, trigger: str) -> None:
    """One line per sync: INFO when a row was written, WARNING when it failed, else DEBUG."""
    level, message, action = _LOG_OF_STATUS[result.status]
    if result.dry_run:
        level, action = logging.DEBUG, action + "_dry_run"
    extra: dict[str, object] = {
        "action": action,
        "key": result.key,
        "trigger": trigger,
        "duration_ms": round(result.duration_ms, 1),
    }
    if result.status == "changed":
        extra["added"], extra["removed"] = len(result.added), len(result.removed)
    if result.error:
        extra["error"] = result.error
    logger.log(level, message, extra=extra)
