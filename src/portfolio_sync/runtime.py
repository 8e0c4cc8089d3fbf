"""The always-on service: sources turn into keys, the queue turns keys into syncs.

`Runtime` owns the work queue and the background sources of one `serve` process: the
catch-up pass at start, the cron scheduler, the folder watcher (local storage) and the
outbox drainer (SQLite row triggers). The HTTP layer (`server.py`) only calls `request`,
`request_all`, `row_deleted` and the read helpers here; it never touches rows.

Events are hints: a sync requested by an event re-reads both sides. When storage lags its
events (the listing does not yet show a created object, or still shows a deleted one), the
key is retried with backoff for a bounded time (`Expectations`); not with a storage read
from `storage.objects`, which cannot lag the transaction that fired the event.

Background sources run supervised: one that raises is logged (with its traceback, once per
distinct error), reported down by `check_ready`, and restarted with backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import sqlalchemy as sa
from cronsim import CronSim

from portfolio_sync import paging
from portfolio_sync.backends import outbox, schema
from portfolio_sync.backends.storage import LocalStorage, SnapshotListing
from portfolio_sync.errors import PortfolioSyncError, StorageError
from portfolio_sync.explain import database_error
from portfolio_sync.feed import SyncFeed
from portfolio_sync.layout import natural_key
from portfolio_sync.metrics import Metrics
from portfolio_sync.queue import ALL
from portfolio_sync.queue.local import LocalQueue
from portfolio_sync.wiring import Service

if TYPE_CHECKING:
    from portfolio_sync.queue.procrastinate import ProcrastinateQueue, QueueOptions

logger = logging.getLogger(__name__)

EXPECT_SECONDS = 30.0  # how long a storage event may run ahead of the listing
RESTART_INITIAL, RESTART_MAX = 0.5, 30.0  # backoff of a background source that failed
HEALTHY_AFTER = 2.0  # seconds a restarted source must run before it counts as up again


class SyncFailed(PortfolioSyncError):
    """The sync failed; the queue retries it with backoff."""


class StorageLagging(PortfolioSyncError):
    """Storage does not show an event's change yet; retried with backoff."""


class Expectations:
    """Per key, what recent storage events said each path should be (present or not)."""

    def __init__(self) -> None:
        self._by_key: dict[str, dict[str, tuple[bool, float]]] = {}

    def add(self, key: str, expect: Mapping[str, bool]) -> None:
        deadline = time.monotonic() + EXPECT_SECONDS
        paths = self._by_key.setdefault(key, {})
        for path, present in expect.items():
            paths[path] = (present, deadline)

    def unmet(self, key: str, listed: frozenset[str]) -> list[str]:
        """Drop met or expired expectations; return the paths storage has not caught up on."""
        paths = self._by_key.get(key)
        if not paths:
            return []
        now = time.monotonic()
        waiting = []
        for path, (present, deadline) in list(paths.items()):
            if (path in listed) == present:
                del paths[path]
            elif now > deadline:
                del paths[path]
                logger.warning(
                    "storage never showed an event's change",
                    extra={
                        "action": "expectation_expired",
                        "key": key,
                        "path": path,
                        "present": present,
                    },
                )
            else:
                waiting.append(path)
        if not paths:
            del self._by_key[key]
        return waiting


class Runtime:
    """One service process: queue + sources around an open `Service`."""

    def __init__(
        self,
        service: Service,
        *,
        watch: bool = True,
        catch_up: bool = True,
        outbox_interval: float = 0.5,
        queue_options: QueueOptions | None = None,
    ) -> None:
        self.service = service
        self.settings = service.settings
        self.layout = service.layout
        self.metrics = Metrics()
        self.expectations = Expectations()
        # A listing that is a query of storage.objects shows a change as soon as the
        # event's transaction commits: an unmet expectation there means a later change
        # superseded the event (uploaded, then deleted), not a lagging listing.
        self.storage_lags = not isinstance(service.storage, SnapshotListing)
        self.feed = SyncFeed()  # finished syncs, for the console's live pages
        self.queue: LocalQueue | ProcrastinateQueue
        if self.settings.is_postgres:  # jobs in the database; its periodic task is the cron
            from portfolio_sync.queue.procrastinate import ProcrastinateQueue

            self.queue = ProcrastinateQueue(
                self._run,
                self.settings,
                options=queue_options,
                on_failure=self._on_failure,
                on_expect=self.expectations.add if self.storage_lags else None,
                on_row_deleted=self.row_deleted,
            )
        else:
            self.queue = LocalQueue(
                self._run,
                workers=self.settings.workers,
                debounce=self.settings.debounce,
                on_failure=self._on_failure,
                max_attempts=8,
                backoff_initial=0.25,
                backoff_max=10.0,
                backoff_jitter=0.25,
            )
        self.metrics.queue_pending.set_function(lambda: self.queue.pending)
        self.metrics.queue_running.set_function(lambda: len(self.queue.running))
        storage = service.storage
        if isinstance(storage, LocalStorage):
            self.metrics.count_skipped_names(lambda: storage.skipped_names)
        self.watch = watch and isinstance(service.storage, LocalStorage)
        self.catch_up = catch_up
        self.outbox_interval = outbox_interval
        self.next_full_pass: datetime | None = None
        self.started_at = datetime.now(UTC)
        self._tasks: list[asyncio.Task[None]] = []
        self.sources: dict[str, str] = {}  # background source -> "ok" or why it is down
        self._stop = asyncio.Event()
        self._wake_outbox = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lifecycle ----------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.queue.start()
        await self._refresh_pass_metrics()
        if self.catch_up:
            await self.queue.request_all("startup")
        self._spawn(self._schedule_loop, "scheduler")
        if self.watch:
            # events missed while the watcher was down are caught by a full pass
            self._spawn(self._watch_loop, "watcher", on_restart=self._catch_up_after_restart)
        if await asyncio.to_thread(outbox.installed, self.service.catalog):
            self._spawn(self._outbox_loop, "outbox")
        await asyncio.to_thread(self._check_triggers)
        logger.info(
            "service started",
            extra={
                "action": "service_started",
                "watch": self.watch,
                "schedule": self.settings.schedule,
            },
        )

    def _check_triggers(self) -> None:
        """Warn when the installed row triggers are older than this version: they miss
        foreign edits of the images columns until `setup` is run again."""
        catalog = self.service.catalog
        if self.settings.is_postgres:
            from portfolio_sync.backends import pg_setup

            stale = pg_setup.outdated(catalog)
        else:
            stale = outbox.outdated(catalog)
        if stale:
            logger.warning(
                "row triggers are from an older version: run `portfolio-sync setup` again",
                extra={"action": "triggers_outdated", "table": catalog.table_name},
            )

    async def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.feed.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        dropped = await self.queue.stop(timeout=timeout)
        logger.info("service stopped", extra={"action": "service_stopped", "dropped": len(dropped)})

    def _spawn(
        self,
        loop: Callable[[], Awaitable[None]],
        name: str,
        *,
        on_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.sources[name] = "ok"
        task = asyncio.create_task(
            self._supervise(loop, name, on_restart), name=f"portfolio-sync-{name}"
        )
        self._tasks.append(task)

    async def _supervise(
        self,
        loop: Callable[[], Awaitable[None]],
        name: str,
        on_restart: Callable[[], Awaitable[None]] | None,
    ) -> None:
        """Run `loop` until stop; when it raises (or ends by itself), report the source
        down, log the error, and restart it with backoff (calling `on_restart` first)."""
        delay = RESTART_INITIAL
        last_error = ""
        first = True
        while not self._stop.is_set():
            if not first and on_restart is not None:
                try:
                    await on_restart()
                except Exception:
                    logger.exception("restart hook failed", extra={"action": "restart_failed"})
            first = False
            started = time.monotonic()
            up = asyncio.get_running_loop().call_later(
                HEALTHY_AFTER, self.sources.__setitem__, name, "ok"
            )
            try:
                await loop()
                if self._stop.is_set():
                    return
                raise RuntimeError(f"the {name} stopped by itself")
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
                self.sources[name] = f"down: {error}"[:500]
                if time.monotonic() - started > 60.0:
                    delay = RESTART_INITIAL  # it ran for a while: a new failure
                extra = {"action": "source_failed", "source": name, "retry_in": delay}
                if error != last_error:  # the traceback once, not at every restart
                    logger.error("background source failed, restarting", exc_info=exc, extra=extra)
                else:
                    logger.warning("background source failed again, restarting", extra=extra)
                last_error = error
            finally:
                up.cancel()
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass
            delay = min(delay * 2.0, RESTART_MAX)

    # ---- intake -------------------------------------------------------------------------
    async def request(
        self, key: str, trigger: str, *, expect: Mapping[str, bool] | None = None
    ) -> bool:
        """Ask for a sync of `key`; `expect` says which paths the event saw appear/vanish."""
        if expect and self.storage_lags:
            self.expectations.add(key, expect)
        if isinstance(self.queue, LocalQueue):
            return await self.queue.request(key, trigger)
        return await self.queue.request(key, trigger, expect=expect)  # may run elsewhere

    async def request_all(self, trigger: str) -> bool:
        return await self.queue.request_all(trigger)

    async def seen_before(self, message_id: str) -> bool:
        """True if this webhook-id was already processed, by this or any other instance on
        the database in the last ``schema.WEBHOOK_ID_TTL``; else remembers it."""
        claimed = await asyncio.to_thread(
            schema.claim_webhook_id, self.service.catalog.autocommit_engine, message_id
        )
        return not claimed

    async def row_deleted(self, key: str, old_images: list[str] | None, trigger: str) -> bool:
        """A portfolio row was deleted: record it, report its folder if it still has one.

        Returns True when the folder still holds objects (an orphan now).
        """

        def work() -> bool:
            schema.record_event(
                self.service.catalog.engine,
                key,
                trigger=trigger,
                added=[],
                removed=list(old_images or []),
            )
            try:
                objects = self.service.storage.list_prefix(self.layout.folder(key))
            except StorageError as exc:  # the deletion is recorded; the orphan check can wait
                logger.warning(
                    "could not check a deleted row's folder",
                    extra={"action": "orphan_unknown", "key": key, "error": str(exc)},
                )
                return False
            return bool(objects)

        orphan = await asyncio.to_thread(work)
        if orphan:
            logger.warning(
                "row deleted, folder kept (orphan)",
                extra={"action": "orphan_folder", "key": key, "folder": self.layout.folder(key)},
            )
        return orphan

    def wake_outbox(self) -> None:
        self._wake_outbox.set()

    # ---- the runner the queue calls -----------------------------------------------------
    async def _run(self, key: str, trigger: str) -> None:
        try:
            await self._sync(key, trigger)
        finally:
            self.feed.publish(key)

    async def _sync(self, key: str, trigger: str) -> None:
        rec = self.service.reconciler
        if key == ALL:
            report = await asyncio.to_thread(
                rec.sync_all, trigger, on_conflict=self._requeue_from_thread
            )
            self.metrics.pass_done(report, time.time())
            await self._refresh_pass_metrics()
            if report.aborted and report.errors:
                raise SyncFailed(report.aborted)
            for faulted in report.faulted:  # their own retries, with backoff
                await self.request(faulted, "retry")
            return
        result = await asyncio.to_thread(rec.sync_one, key, trigger)
        self.metrics.sync_done(result, trigger)
        if result.status in ("error", "conflict"):
            raise SyncFailed(result.error or result.status)
        waiting = self.expectations.unmet(key, result.listed)
        if waiting:
            raise StorageLagging(
                f"storage does not show {len(waiting)} change(s) yet: {waiting[0]}"
            )

    async def _catch_up_after_restart(self) -> None:
        await self.queue.request_all("restart")

    async def _refresh_pass_metrics(self) -> None:
        try:
            summary = await asyncio.to_thread(self.pass_summary)
        except PortfolioSyncError as exc:  # the database may be why the pass failed
            logger.warning(
                "cannot read the recorded passes",
                extra={"action": "pass_summary_failed", "error": str(exc)},
            )
            return
        self.metrics.passes_known(summary)

    def pass_summary(self) -> dict[str, Any]:
        """The last full pass (ok or not), the last good one and the failures since."""
        engine = self.service.catalog.engine
        try:
            return schema.pass_summary(engine)
        except sa.exc.SQLAlchemyError as exc:
            raise database_error(exc, engine.url, doing="reading the recorded passes") from exc

    def _requeue_from_thread(self, key: str) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self.queue.request(key, "conflict"), self._loop)

    async def _on_failure(self, key: str, exc: BaseException, attempt: int) -> None:
        reason = "lagging" if isinstance(exc, StorageLagging) else "error"
        self.metrics.retries.labels(reason).inc()

    # ---- sources ------------------------------------------------------------------------
    async def _schedule_loop(self) -> None:
        while not self._stop.is_set():
            now = datetime.now(UTC)
            self.next_full_pass = next(iter(CronSim(self.settings.schedule, now)))
            await asyncio.sleep(max(0.0, (self.next_full_pass - now).total_seconds()))
            if not self.settings.is_postgres:  # there, procrastinate's periodic task defers it
                await self.queue.request_all("schedule")

    async def _watch_loop(self) -> None:
        from watchfiles import Change, awatch

        storage = self.service.storage
        assert isinstance(storage, LocalStorage)
        root = str(storage.root.resolve())
        identity = _identity(root)
        async for changes in awatch(
            root,
            watch_filter=None,
            debounce=30,
            step=10,
            stop_event=self._stop,
            recursive=True,
            rust_timeout=1000,
            yield_on_timeout=True,  # an empty batch every second: time to check the root
        ):
            if _identity(root) != identity:  # inotify stays silent on a removed root
                raise StorageError(f"the watched folder {root} was removed or replaced")
            keys: dict[str, dict[str, bool]] = {}
            for change, full in changes:
                rel = os.path.relpath(full, root).replace(os.sep, "/")
                key = self._key_for_watch(rel, full, deleted=change == Change.deleted)
                if key is not None:
                    keys.setdefault(key, {})
            for key in keys:
                self.metrics.events.labels("watcher", "accepted").inc()
                await self.request(key, "watcher")

    def _key_for_watch(self, rel: str, full: str, *, deleted: bool) -> str | None:
        """Image files, and folders (created, deleted, moved) under a portfolio folder."""
        key = self.layout.affects(rel)
        if key is not None:
            return key
        prefix = self.layout.prefix
        if not rel.startswith(prefix):
            return None
        name, sep, rest = rel[len(prefix) :].partition("/")
        if not self.layout.is_key(name):
            return None
        if not sep:  # the portfolio folder itself appeared, vanished or was renamed
            return name
        last = rest.rpartition("/")[2]
        if last.startswith("."):
            return None
        is_dir = os.path.isdir(full) if not deleted else "." not in last
        return name if is_dir else None

    async def _outbox_loop(self) -> None:
        catalog = self.service.catalog
        while not self._stop.is_set():
            try:
                entries = await asyncio.to_thread(outbox.take, catalog)
                for entry in entries:
                    self.metrics.events.labels("outbox", "accepted").inc()
                    if entry.op == "DELETE":
                        await self.row_deleted(entry.key, entry.old_images, "database:DELETE")
                    await self.request(entry.key, f"database:{entry.op}")
            except PortfolioSyncError as exc:
                logger.error(
                    "outbox drain failed", extra={"action": "outbox_failed", "error": str(exc)}
                )
            try:
                async with asyncio.timeout(self.outbox_interval):
                    await self._wake_outbox.wait()
            except TimeoutError:
                pass
            self._wake_outbox.clear()

    # ---- reads for the HTTP layer -------------------------------------------------------
    def portfolio(
        self, key: str, *, limit: int | None = None, after: str | None = None
    ) -> dict[str, Any] | None:
        """Row images, folder listing, in-sync flag, last sync and last error (blocking).

        With ``limit``, ``columns`` and ``listing`` hold one page (`paging`): the paths
        after ``after``, at most ``limit`` of them; ``next`` is the cursor of the next
        page (None on the last). ``in_sync`` and ``totals`` always cover everything.
        """
        svc = self.service
        row = svc.catalog.read_row(key)
        objects = svc.storage.list_prefix(self.layout.folder(key))
        state = schema.read_state(svc.catalog.engine, key)
        if row is None and not objects:
            return None
        selected = self.layout.select(key, objects)
        listing = {
            c.column: sorted((o.path for o in found), key=natural_key)
            for c, found in zip(self.layout.collections, selected, strict=True)
        }
        columns = {
            c.column: (row.values[i] if row else None)
            for i, c in enumerate(self.layout.collections)
        }
        in_sync = (
            row is not None
            and not row.invalid
            and svc.reconciler.plan(row, selected, dry_run=True) is None
        )
        every = [p for paths in (*listing.values(), *columns.values()) for p in paths or ()]
        page = paging.page_range(every, after=after, limit=limit)
        return {
            "key": key,
            "row_exists": row is not None,
            "columns": {c: page.cut(v) for c, v in columns.items()},
            "listing": {c: page.cut(v) or [] for c, v in listing.items()},
            "in_sync": in_sync,
            "invalid": row.invalid if row else None,
            "last_synced_at": state and state["last_synced_at"],
            "last_error": state and state["last_error"],
            "attempts": state["attempts"] if state else 0,
            "held": _held(state),
            "skipped_names": self._skipped_in(key),
            "totals": {
                c: {"row": None if columns[c] is None else len(columns[c] or ()), "listing": len(v)}
                for c, v in listing.items()
            },
            "next": page.last if page.more else None,
        }

    def _skipped_in(self, key: str) -> list[str]:
        """Names in the key's folder skipped as not UTF-8, as its last listing found them."""
        storage = self.service.storage
        if not isinstance(storage, LocalStorage):
            return []  # object keys are always valid UTF-8
        return storage.skipped_in.get(self.layout.folder(key), [])

    def check_ready(self) -> dict[str, str]:
        """ "ok" or the problem, for the database, the storage, each background source,
        and writes held by the streaming guard (blocking)."""
        checks: dict[str, str] = {}
        try:
            self.service.catalog.count_rows()
            checks["database"] = "ok"
        except PortfolioSyncError as exc:
            checks["database"] = str(exc)
        try:
            self.service.storage.check()
            checks["storage"] = "ok"
        except PortfolioSyncError as exc:
            checks["storage"] = str(exc)
        else:
            checks["storage_root"] = self._root_health()
        checks["queue"] = self.queue.health()
        checks.update(self.sources)
        held = self.refresh_held()
        checks["held_writes"] = (
            "ok"
            if not held
            else f"{held} emptying write(s) held by the mass-deletion guard: check storage, "
            "then `portfolio-sync release`"
        )
        return checks

    def _root_health(self) -> str:
        """Whether an emptying write could go ahead now; an empty root is only a problem
        while rows hold images (counted only then: it reads the whole table)."""
        try:
            self.service.reconciler.health.check(record=False)
        except PortfolioSyncError as exc:
            try:
                if self.service.catalog.count_nonempty() == 0:
                    return "ok"
            except PortfolioSyncError:
                pass  # the database check reports that
            return str(exc)
        return "ok"

    def refresh_held(self) -> int:
        """Count held writes into the metrics gauge (blocking); 0 if they cannot be read."""
        try:
            held = schema.count_held(self.service.catalog.engine)
        except Exception:  # the database check above reports the outage itself
            logger.warning("could not count held writes", extra={"action": "held_unknown"})
            return 0
        self.metrics.held.set(held)
        return held


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _held(state: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The write held for an operator, if any, as the HTTP API shows it."""
    if not state or state.get("held_at") is None:
        return None
    write = state.get("held_write") or {}
    return {
        "at": state["held_at"],
        "reason": state.get("held_reason"),
        "trigger": write.get("trigger"),
        "removed": write.get("removed", []),
        "added": write.get("added", []),
        "new": write.get("new", []),
        "listed": write.get("listed", []),
    }


def storage_root(service: Service) -> Path | None:
    storage = service.storage
    return storage.root if isinstance(storage, LocalStorage) else None
