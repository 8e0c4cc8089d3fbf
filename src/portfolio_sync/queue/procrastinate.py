"""Work queue on procrastinate: jobs in PostgreSQL, drained by workers on any number of machines.

Chosen automatically when the database is PostgreSQL. Invariant 3 holds across machines
because procrastinate enforces it in the database: every ``sync_portfolio`` job of a key
carries ``lock`` and ``queueing_lock`` = ``portfolio_sync:<key>``, so at most one job of a
key runs (``lock``) and at most one more waits (``queueing_lock``). Requests made while
one waits are coalesced into it (``INSERT … ON CONFLICT`` on the queueing lock, here and
in the trigger SQL: success, not an error; requests arriving together share one statement,
:mod:`portfolio_sync.queue.group_commit`), and a job deferred while its key runs starts
the settle time (``PORTFOLIO_SYNC_DEBOUNCE``) after that run ends, the dirty rule. Events
that trickle in just after a run (a watcher delivering an upload batch every 50 ms) are
follow-ups too: the requesting process schedules them a growing settle time after the
key's previous job, as the local queue does, so a bulk upload costs a handful of syncs,
not one per batch.
A scheduled job is started by a notification sent when it falls due, not by the next poll.
The full pass is the periodic task ``sync_all`` on ``PORTFOLIO_SYNC_SCHEDULE`` with the lock
``portfolio_sync:*``; procrastinate's ``periodic_defers`` table makes one worker of the
cluster defer it per tick. Locks are prefixed so they cannot collide with the jobs of
another application sharing the procrastinate tables (or with a portfolio named ``*``).

What procrastinate 3.10 leaves to the application, done here:

- **Stalled jobs.** A killed worker leaves its jobs in ``doing``, holding their key's lock
  forever. Every worker checks every ``stall_timeout / 2`` seconds for jobs of workers
  whose heartbeat is older than ``stall_timeout`` and retries them. This is a side loop,
  not a periodic task, because a periodic "retry stalled jobs" job can itself be stalled
  by the kill it is meant to repair (procrastinate issue #1408).
- **Retries against a queued job.** A failed job cannot go back to ``todo`` while a job
  of its key waits there (procrastinate issue #1446);
  :class:`~portfolio_sync.queue.jobs.QueueJobManager` finishes it instead, so the
  key's lock is never held for ever.
- **Pruning.** Finished jobs older than ``prune_after_hours`` are deleted hourly.

Jobs deferred by the database triggers of ``portfolio-sync setup`` use the same queue, task
name, locks and argument names (:mod:`portfolio_sync.queue.jobs`,
:mod:`portfolio_sync.sources.triggers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import psycopg_pool
from procrastinate import App, JobContext, PsycopgConnector, RetryStrategy
from procrastinate import exceptions as pexc

from portfolio_sync.config import Settings
from portfolio_sync.errors import CatalogError
from portfolio_sync.queue import ALL, QueueClosed
from portfolio_sync.queue.group_commit import GroupCommit, Pending
from portfolio_sync.queue.jobs import (
    LOCK_PREFIX,
    PASS_TASK,
    PRUNE_TASK,
    QUEUE,
    SYNC_TASK,
    Deferred,
    JobRequest,
    QueueJobManager,
    apply_schema_if_missing,
    conninfo,
    croniter_expression,
    lock_for,
)
from portfolio_sync.queue.local import FailureHook, Runner, settle_time

__all__ = ["ExpectHook", "ProcrastinateQueue", "QueueOptions", "RowDeletedHook"]

logger = logging.getLogger(__name__)

ExpectHook = Callable[[str, Mapping[str, bool]], None]
"""``on_expect(key, {path: present})``: what a storage event said, before its sync runs."""
RowDeletedHook = Callable[[str, list[str] | None, str], Awaitable[Any]]
"""``on_row_deleted(key, old_images, trigger)``: a row trigger reported a DELETE."""


async def _autocommit(conn: psycopg.AsyncConnection[Any]) -> None:
    """Pool connections in autocommit: every query here is one statement, and the pool
    would otherwise add a COMMIT round trip to each (a request costs one round trip)."""
    await conn.set_autocommit(True)


_DUE_MARGIN = 0.05  # seconds: a scheduled job this close to due may be starting


class _IdleConnectionCheck:
    """The pool's connection check, for connections not used in the last few seconds.

    procrastinate's pool checks every connection it hands out with an empty query: a
    round trip before each of the queue's queries (fetch, finish, defer), about a third
    of a job's queue overhead. A connection used a moment ago is alive unless the server
    went away in that moment, and then the one failing query is retried like any other
    database error; a connection idle for longer is checked as before.
    """

    def __init__(self, fresh_for: float = 5.0) -> None:
        self.fresh_for = fresh_for
        self._used: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], float] = (
            weakref.WeakKeyDictionary()
        )

    async def __call__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        now = time.monotonic()
        last = self._used.get(conn)
        if last is None or now - last > self.fresh_for:
            await psycopg_pool.AsyncConnectionPool.check_connection(conn)
        self._used[conn] = now


def _pool_checking_idle_connections(**kwargs: Any) -> psycopg_pool.AsyncConnectionPool:
    """procrastinate's pool, with :class:`_IdleConnectionCheck` as its check."""
    kwargs["check"] = _IdleConnectionCheck()
    return psycopg_pool.AsyncConnectionPool(**kwargs)


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueOptions:
    """Tuning of the procrastinate queue; defaults suit production.

    ``stall_timeout``: seconds without a heartbeat after which a worker's running jobs are
    retried elsewhere (heartbeats go out every third of it). ``poll_interval``: how often
    workers look for jobs nobody announced (procrastinate only notifies new jobs): a job
    whose key was busy, or whose settle time or retry backoff just ended, starts within it.
    ``max_attempts`` runs per job, waiting ``backoff ** attempt`` seconds between them
    (procrastinate's exponential wait). ``settle_max`` caps the growing settle time of a
    key in a burst of requests (as in the local queue). ``defer_statements``: statements
    deferring requested jobs that may run at once, each a batch of every request that
    arrived meanwhile (:mod:`portfolio_sync.queue.group_commit`); the pool has a connection
    for each beside the worker's.
    """

    concurrency: int | None = None  # None: settings.workers
    run_worker: bool = True
    stall_timeout: float = 30.0
    poll_interval: float = 0.5
    max_attempts: int = 8
    backoff: int = 2
    prune_after_hours: int = 24
    shutdown_timeout: float = 10.0
    settle_max: float = 1.0
    defer_statements: int = 4


class ProcrastinateQueue:
    """:class:`~portfolio_sync.queue.WorkQueue` on procrastinate, plus an optional worker.

    ``run(key, trigger)`` is called for every job (``ALL`` for a full pass); raising means
    "retry with backoff". With ``run_worker`` (default) :meth:`start` also runs a worker in
    this process; without it the queue only defers jobs. Requests survive the process:
    :meth:`stop` drops nothing.
    """

    def __init__(
        self,
        run: Runner,
        settings: Settings,
        *,
        options: QueueOptions | None = None,
        on_failure: FailureHook | None = None,
        on_expect: ExpectHook | None = None,
        on_row_deleted: RowDeletedHook | None = None,
    ) -> None:
        self._run = run
        self.settings = settings
        self.options = options or QueueOptions()
        self.concurrency = self.options.concurrency or settings.workers
        self._on_failure = on_failure
        self._on_expect = on_expect
        self._on_row_deleted = on_row_deleted
        self._conninfo = conninfo(settings.database_url)
        connector = PsycopgConnector(
            conninfo=self._conninfo,
            min_size=1,
            max_size=self.concurrency + 4 + self.options.defer_statements,
            configure=_autocommit,
            pool_factory=_pool_checking_idle_connections,
        )
        self.app = App(connector=connector)
        self._jobs = self.app.job_manager = QueueJobManager(connector=connector)
        self._register_tasks()
        self._running: dict[str, int] = {}
        self._pending = 0
        self._opened = False
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._wakers: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._open_lock = asyncio.Lock()
        self._recent: dict[str, tuple[float, int]] = {}  # key -> (last job due at, streak)
        self._worker_state = "ok"
        self._batch = GroupCommit(self._defer_batch, in_flight=self.options.defer_statements)

    # ---- tasks --------------------------------------------------------------------------
    def _register_tasks(self) -> None:
        retry = RetryStrategy(
            max_attempts=self.options.max_attempts, exponential_wait=self.options.backoff
        )

        @self.app.task(name=SYNC_TASK, queue=QUEUE, pass_context=True, retry=retry)
        async def sync_portfolio(
            context: JobContext,
            key: str,
            trigger: str = "queue",
            expect: dict[str, bool] | None = None,
            old_images: list[Any] | None = None,
        ) -> None:
            if expect and self._on_expect is not None:
                self._on_expect(key, {str(p): bool(v) for p, v in expect.items()})
            if trigger == "database:DELETE" and context.job.attempts == 0:
                if self._on_row_deleted is not None:
                    images = [v for v in old_images or [] if isinstance(v, str)]
                    await self._on_row_deleted(key, images or None, trigger)
            await self._call(key, trigger, context)

        @self.app.periodic(
            cron=croniter_expression(self.settings.schedule),
            periodic_id="full-pass",
            task_kwargs={"trigger": "schedule"},
        )
        @self.app.task(
            name=PASS_TASK,
            queue=QUEUE,
            pass_context=True,
            retry=retry,
            lock=lock_for(ALL),
            queueing_lock=lock_for(ALL),
        )
        async def sync_all(
            context: JobContext, timestamp: int | None = None, trigger: str = "schedule"
        ) -> None:
            await self._call(ALL, trigger, context)

        prune_lock = LOCK_PREFIX + "prune"

        @self.app.periodic(cron="23 * * * *", periodic_id="prune")
        @self.app.task(name=PRUNE_TASK, queue=QUEUE, lock=prune_lock, queueing_lock=prune_lock)
        async def prune_jobs(timestamp: int) -> None:
            await self.prune(self.options.prune_after_hours)

        self._sync_task = sync_portfolio
        self._pass_task = sync_all

    async def _call(self, key: str, trigger: str, context: JobContext) -> None:
        self._running[key] = self._running.get(key, 0) + 1
        try:
            await self._run(key, trigger)
        except Exception as exc:
            if self._on_failure is not None:
                try:
                    await self._on_failure(key, exc, context.job.attempts + 1)
                except Exception:
                    logger.exception(
                        "queue callback failed", extra={"action": "callback_failed", "key": key}
                    )
            raise
        finally:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]
            await self._settle(lock_for(key))

    async def _settle(self, lock: str) -> None:
        """Start the settle time of a follow-up job when the run it waited for ends.

        A job deferred while its key ran is marked by a ``scheduled_at`` (see
        :meth:`request` and the triggers); moving that to ``debounce`` seconds after *this*
        moment makes the follow-up wait for changes to settle after the run, as the dirty
        rule of invariant 3 says, rather than start the instant the lock frees up.
        """
        with contextlib.suppress(pexc.ProcrastinateException):
            if await self._jobs.delay_follow_up(lock, float(self.settings.debounce)):
                self._wake_in(float(self.settings.debounce))

    def _wake_in(self, seconds: float) -> None:
        """Notify the workers of every machine when a scheduled job falls due.

        procrastinate notifies a job when it is inserted, when it is not due yet; without
        this, a follow-up would wait for the next poll (``poll_interval``) after its
        settle time.
        """
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        self._timers.add(loop.call_later(max(0.0, seconds), self._spawn_wake))

    def _spawn_wake(self) -> None:
        if self._closed:
            return
        now = asyncio.get_running_loop().time()
        self._timers = {t for t in self._timers if t.when() > now}  # forget fired timers
        task = asyncio.ensure_future(self._wake())
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    async def _wake(self) -> None:
        with contextlib.suppress(pexc.ProcrastinateException):
            await self._jobs.notify_due()

    def _follow_up_delay(self, key: str, *, running: bool) -> tuple[float | None, int]:
        """(seconds until a new job of ``key`` may start, None for at once; its streak).

        While the key runs, the job waits the settle time after the run (moved there by
        :meth:`_settle`). A key whose previous job, requested here, was due less than a
        settle time ago is in a burst: its job is due that settle time after the previous
        one, doubled per follow-up up to ``settle_max``, as in the local queue. The memory
        is per process; other processes' requests still coalesce through the database.
        """
        now = time.monotonic()
        last = self._recent.get(key)
        streak = last[1] + 1 if last is not None else 0
        delay: float | None = None
        if last is not None:
            due = last[0] + self._settle_time(streak)
            if due > now:
                delay = due - now
        if running:
            delay = max(delay or 0.0, float(self.settings.debounce))
            streak = max(streak, 1)
        return delay, streak if delay is not None else 0

    def _scheduled_here(self, key: str) -> bool:
        """True while a job this process deferred for ``key`` is not due yet.

        Such a job cannot have started (workers only fetch due jobs; its ``scheduled_at``
        is on the database's clock, read just before it was deferred, so clock skew
        between machines does not matter), so it still waits and a request is coalesced
        into it without a database round trip: the events of a burst then cost nothing
        between the key's runs. ``_DUE_MARGIN`` covers the time between reading that clock
        and this process's own.
        """
        last = self._recent.get(key)
        return last is not None and last[0] - time.monotonic() > _DUE_MARGIN

    def _settle_time(self, streak: int) -> float:
        return settle_time(
            streak, debounce=float(self.settings.debounce), settle_max=self.options.settle_max
        )

    def _remember(self, key: str, due: float, streak: int) -> None:
        self._recent[key] = (due, streak)
        if len(self._recent) > 10_000:  # forget keys whose last job is long past
            horizon = time.monotonic() - 2 * max(
                float(self.settings.debounce), self.options.settle_max
            )
            self._recent = {k: v for k, v in self._recent.items() if v[0] >= horizon}

    # ---- state --------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Jobs waiting in the queue, cluster-wide (refreshed every few seconds)."""
        return self._pending

    @property
    def running(self) -> frozenset[str]:
        """Keys being synced by this process right now."""
        return frozenset(self._running)

    def health(self) -> str:
        """ "ok", or why this process's worker is not taking jobs (for /readyz)."""
        return self._worker_state

    # ---- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Open the pool (creating procrastinate's schema if missing) and run the worker."""
        if self._closed:
            raise QueueClosed("a stopped queue cannot be started again")
        await self._open()
        if self._tasks:
            return
        self._spawn(self._refresh_pending(), "pending")
        if self.options.run_worker:
            self._spawn(self._supervise_worker(), "worker")
            self._spawn(self._retry_stalled_loop(), "stalled")
        logger.info(
            "procrastinate queue started",
            extra={
                "action": "queue_started",
                "worker": self.options.run_worker,
                "concurrency": self.concurrency,
            },
        )

    async def stop(self, *, timeout: float = 10.0) -> list[str]:
        """Stop the worker (running jobs get ``shutdown_timeout`` to finish, then are
        retried by the next worker) and close the pool. Queued jobs stay in the database,
        so nothing is dropped: the returned list is always empty.
        """
        if self._closed:
            return []
        self._closed = True
        await self._batch.close(timeout)  # requests already taken are written, not dropped
        for timer in self._timers:
            timer.cancel()
        for task in [*self._tasks, *self._wakers]:
            task.cancel()
        try:
            async with asyncio.timeout(timeout + self.options.shutdown_timeout):
                await asyncio.gather(*self._tasks, return_exceptions=True)
        except TimeoutError:
            logger.warning("worker did not stop in time", extra={"action": "queue_stop_timeout"})
        self._tasks.clear()
        if self._opened:
            await self.app.close_async()
        logger.info("procrastinate queue stopped", extra={"action": "queue_stopped"})
        return []

    async def _open(self) -> None:
        if self._opened:
            return
        async with self._open_lock:
            if self._opened:
                return
            await asyncio.to_thread(self._ensure_schema)
            await self.app.open_async()
            self._opened = True

    def _ensure_schema(self) -> None:
        try:
            with psycopg.connect(self._conninfo, connect_timeout=10) as conn:
                if apply_schema_if_missing(conn):
                    logger.info("procrastinate schema created", extra={"action": "schema_created"})
        except psycopg.Error as exc:
            raise CatalogError(f"cannot prepare the job queue: {exc}") from exc

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(f"portfolio-sync-procrastinate-{name}")

    # ---- intake -------------------------------------------------------------------------
    async def request(
        self, key: str, trigger: str, *, expect: Mapping[str, bool] | None = None
    ) -> bool:
        """Queue a job for ``key``, or coalesce into its waiting one (False).

        Requests go to the database in batches (:mod:`portfolio_sync.queue.group_commit`):
        this returns once the statement holding this request has committed, so a caller
        that answers "accepted" afterwards has the job durably queued. A request without
        expectations for a key whose job, deferred here, is not due yet is coalesced
        without a round trip (:meth:`_scheduled_here`).

        ``expect`` (a storage event's paths, present or gone) travels in the job, so the
        worker that runs it, on any machine, re-checks a listing that does not show them
        yet; a waiting job absorbs the expectations of the requests coalesced into it, as
        the database triggers do.
        """
        if self._closed:
            raise QueueClosed()
        await self._open()
        hint = {str(path): bool(present) for path, present in (expect or {}).items()}
        if not hint and self._scheduled_here(key):
            logger.debug("sync coalesced", extra={"action": "sync_coalesced", "key": key})
            return False
        return await self._batch.submit(key, trigger, hint)

    async def _defer_batch(self, batch: list[Pending]) -> dict[str, bool]:
        """The group commit's writer: one ``defer_many`` statement for a batch of keys.

        Each key's settle time is worked out here both ways (its key idle, its key busy:
        :meth:`_follow_up_delay`) and the statement picks by what it finds in the queue.
        """
        asked = time.monotonic()  # no later than the database clock reading
        plans: dict[str, tuple[tuple[float | None, int], tuple[float | None, int]]] = {}
        requests = []
        for entry in batch:
            idle = self._follow_up_delay(entry.key, running=False)
            busy = self._follow_up_delay(entry.key, running=True)
            plans[entry.key] = (idle, busy)
            args: dict[str, Any] = {"trigger": entry.trigger}
            if entry.key != ALL:
                args["key"] = entry.key
            if entry.expect:
                args["expect"] = entry.expect
            requests.append(
                JobRequest(
                    lock=lock_for(entry.key),
                    task=PASS_TASK if entry.key == ALL else SYNC_TASK,
                    args=args,
                    idle_delay=idle[0],
                    busy_delay=busy[0] or 0.0,
                )
            )
        done = await self._defer_many(requests)
        created: dict[str, bool] = {}
        for entry in batch:
            outcome = done[lock_for(entry.key)]
            created[entry.key] = outcome.inserted
            if not outcome.inserted:
                logger.debug("sync coalesced", extra={"action": "sync_coalesced", "key": entry.key})
                continue
            delay, streak = plans[entry.key][1 if outcome.busy else 0]
            self._remember(entry.key, asked + (delay or 0.0), streak)
            if delay is not None:
                self._wake_in(delay)
            logger.debug(
                "sync queued",
                extra={"action": "sync_queued", "key": entry.key, "trigger": entry.trigger},
            )
        return created

    async def _defer_many(self, requests: list[JobRequest]) -> dict[str, Deferred]:
        """``defer_many``, tried again when PostgreSQL broke a deadlock by failing it.

        Batches take their row locks in key order, so they cannot deadlock each other;
        an application transaction changing several rows (whose triggers defer jobs in
        its own order) can, and then losing once is no reason to fail the requests.
        """
        for attempt in range(3):
            try:
                return await self._jobs.defer_many(requests)
            except pexc.ProcrastinateException as exc:
                if attempt < 2 and isinstance(exc.__cause__, psycopg.errors.DeadlockDetected):
                    continue
                raise CatalogError(f"cannot queue syncs in the job queue: {exc}") from exc
        raise AssertionError("unreachable")

    async def request_all(self, trigger: str) -> bool:
        return await self.request(ALL, trigger)

    async def join(self, *, poll: float = 0.05) -> None:
        """Wait until no job of this queue waits or runs, on any worker."""
        await self._open()
        while await self._jobs.count("todo", "doing"):
            await asyncio.sleep(poll)

    async def prune(self, max_hours: int) -> None:
        """Delete this queue's jobs (and their events) finished more than ``max_hours`` ago."""
        await self.app.job_manager.delete_old_jobs(
            nb_hours=max_hours,
            queue=QUEUE,
            include_failed=True,
            include_cancelled=True,
            include_aborted=True,
        )

    # ---- background ---------------------------------------------------------------------
    async def _supervise_worker(self) -> None:
        """Run procrastinate's worker; restart it (with backoff) if it ever ends by itself,
        e.g. after its listener lost the database connection.
        """
        delay = 1.0
        while True:
            self._worker_state = "ok"
            try:
                await self.app.run_worker_async(
                    queues=[QUEUE],
                    name=f"portfolio-sync@{socket.gethostname()}:{os.getpid()}",
                    concurrency=self.concurrency,
                    wait=True,
                    fetch_job_polling_interval=self.options.poll_interval,
                    abort_job_polling_interval=max(self.options.poll_interval, 5.0),
                    shutdown_graceful_timeout=self.options.shutdown_timeout,
                    listen_notify=True,
                    install_signal_handlers=False,
                    update_heartbeat_interval=self.options.stall_timeout / 3,
                    stalled_worker_timeout=self.options.stall_timeout,
                )
                logger.error("worker ended, restarting", extra={"action": "worker_restart"})
                self._worker_state = "down: the worker ended by itself; restarting"
            except Exception as exc:
                logger.error(
                    "worker failed, restarting",
                    exc_info=exc,
                    extra={"action": "worker_failed", "error": repr(exc), "retry_in": delay},
                )
                self._worker_state = f"down: {type(exc).__name__}: {exc}"[:500]
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    async def _retry_stalled_loop(self) -> None:
        interval = max(0.5, self.options.stall_timeout / 2)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.retry_stalled()
            except Exception as exc:  # a lost connection must not end the loop
                logger.warning(
                    "stalled-job check failed",
                    extra={"action": "stall_check_failed", "error": repr(exc)},
                )

    async def retry_stalled(self) -> int:
        """Retry jobs of workers silent for ``stall_timeout``; returns how many."""
        return await self._jobs.retry_stalled(self.options.stall_timeout)

    async def _refresh_pending(self) -> None:
        while True:
            try:
                self._pending = await self._jobs.count("todo")
            except Exception as exc:  # a lost connection must not end the loop
                logger.debug(
                    "pending count failed", extra={"action": "pending_failed", "error": repr(exc)}
                )
            await asyncio.sleep(2.0)
