"""In-process work queue for embedded mode (asyncio, one process, nothing persisted).

Each key known to the queue has exactly one entry, in exactly one state; a key without an
entry is idle::

    idle ──request──▶ queued ──worker free──▶ running ──ok, not dirty──▶ idle
                        ▲                      │
                        │                      ├─ ok and dirty ─────▶ delayed (debounce)
                        └──── timer fires ─────┴─ failed, may retry ▶ delayed (backoff)

One entry per key is what makes rules 1-3 of invariant 3 hold by construction: a key cannot
be queued twice, and a key cannot be handed to a second worker while its entry says
``running``. Requests for a key that has an entry only set the ``dirty`` flag (when it is
running) or do nothing (queued, delayed), so any number of requests during a run costs
one extra run.

Delays are ``loop.call_later`` timers, not sleeping workers: a key waiting for its debounce
or its retry holds no worker, and other keys keep flowing.

Nothing survives the process: pending work is dropped at :meth:`LocalQueue.stop` (and
returned), because the full pass on the next start re-reads both sides anyway.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Self

from portfolio_sync.errors import PortfolioSyncError
from portfolio_sync.queue import ALL, QueueClosed

__all__ = ["FailureHook", "LocalQueue", "Runner", "SuccessHook", "backoff_delay", "settle_time"]

logger = logging.getLogger(__name__)

Runner = Callable[[str, str], Awaitable[None]]
"""``run(key, trigger)``: sync one key; raising an ``Exception`` means "retry later"."""
FailureHook = Callable[[str, BaseException, int], Awaitable[None]]
"""``on_failure(key, exc, attempt)``, after each failed attempt (``attempt`` is 1-based)."""
SuccessHook = Callable[[str, int], Awaitable[None]]
"""``on_success(key, attempts)``, after a run succeeded on attempt number ``attempts``."""


@dataclass(slots=True)
class _Entry:
    state: Literal["queued", "running", "delayed"]
    trigger: str
    failures: int = 0
    dirty: bool = False
    dirty_trigger: str = ""
    timer: asyncio.TimerHandle | None = None
    streak: int = 0  # follow-up runs in a row; grows the settle time of a long burst


def settle_time(streak: int, *, debounce: float, settle_max: float) -> float:
    """The wait before follow-up number ``streak`` (1, 2, …) of a key in a burst: debounce
    doubled per consecutive follow-up, capped at ``settle_max``. Both queues use it.

    A key that is still busy after its follow-up run is in a long burst (a bulk upload):
    waiting longer each time keeps such a burst at a handful of runs (about
    log2(burst / debounce) + burst / settle_max), while the cap bounds how long after the
    last event the final run starts.
    """
    return min(debounce * 2.0 ** (streak - 1), max(debounce, settle_max))


def backoff_delay(failures: int, *, initial: float, maximum: float, jitter: float) -> float:
    """Seconds to wait before retrying a key that has failed ``failures`` times in a row.

    Same formula as ``stamina.retry``: ``min(maximum, initial * 2 ** (failures - 1) +
    uniform(0, jitter))``. It is re-implemented rather than borrowed because stamina has
    no public function for it: its jittered delay is computed only inside its retry loop,
    which sleeps in the calling task (here that would hold a worker for the whole wait),
    and its ``Attempt`` context manager swallows every exception, ``CancelledError``
    included, which would break :meth:`LocalQueue.stop`.
    """
    try:
        base = initial * 2.0 ** (failures - 1)
    except OverflowError:
        return maximum
    return min(maximum, base + random.uniform(0.0, jitter))


class LocalQueue:
    """Coalescing, per-key serial work queue with retries, run by ``workers`` tasks.

    Contract beyond :class:`~portfolio_sync.queue.WorkQueue`:

    - At most ``workers`` runs at once; different keys run in parallel.
    - A failed run is retried after :func:`backoff_delay`, up to ``max_attempts`` runs in a
      row; then the key is given up (logged at ERROR) until it is requested again. A
      success resets the count. A request for a key waiting on its backoff is coalesced
      and does not cut the wait short: retrying a failing store sooner helps nobody, and
      the retry re-reads both sides anyway. A request during a failing run is folded into
      the retry; during the final failing run it earns one fresh series after the debounce.
    - The trigger of a run is the one of the request that created its entry (or, for the
      follow-up run, the first request that marked it dirty); later triggers are dropped.
    - ``on_failure`` / ``on_success`` run in the worker while the key still counts as
      running, so keep them short; their exceptions are logged and otherwise ignored.
    - Requests made before :meth:`start` are kept and run once workers start. After
      :meth:`stop`, :meth:`request` raises :class:`~portfolio_sync.queue.QueueClosed`
      (rather than returning ``False``, which would claim the key will be synced). A
      stopped queue cannot be started again.
    """

    def __init__(
        self,
        run: Runner,
        *,
        workers: int = 4,
        debounce: float = 0.25,
        max_attempts: int = 5,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        backoff_jitter: float = 1.0,
        settle_max: float = 1.0,
        on_failure: FailureHook | None = None,
        on_success: SuccessHook | None = None,
    ) -> None:
        if workers < 1 or max_attempts < 1:
            raise ValueError("workers and max_attempts must be at least 1")
        if min(debounce, backoff_initial, backoff_max, backoff_jitter) < 0:
            raise ValueError("delays must not be negative")
        self._run = run
        self._n_workers = workers
        self._debounce = debounce
        self._max_attempts = max_attempts
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._backoff_jitter = backoff_jitter
        self._settle_max = settle_max
        self._on_failure = on_failure
        self._on_success = on_success
        self._entries: dict[str, _Entry] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False
        self._dropped: set[str] = set()
        self._recent: dict[str, tuple[float, int]] = {}  # key -> (went idle at, streak)

    @property
    def pending(self) -> int:
        """Runs waiting to happen: queued, delayed (debounce or backoff) or dirty keys."""
        return sum(1 for e in self._entries.values() if e.state != "running" or e.dirty)

    @property
    def running(self) -> frozenset[str]:
        """Keys being synced right now."""
        return frozenset(k for k, e in self._entries.items() if e.state == "running")

    def health(self) -> str:
        """ "ok", or how many worker tasks ended (for /readyz): they never should."""
        stopped = sum(1 for task in self._workers if task.done())
        if stopped and not self._closed:
            return f"down: {stopped} of {len(self._workers)} workers stopped"
        return "ok"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the worker tasks; calling it again while running does nothing."""
        if self._closed:
            raise QueueClosed("a stopped queue cannot be started again")
        if self._workers:
            return
        self._workers = [
            asyncio.create_task(self._work(), name=f"portfolio-sync-queue-worker-{i}")
            for i in range(self._n_workers)
        ]
        logger.info(
            "Work queue started", extra={"action": "queue_started", "workers": self._n_workers}
        )

    async def stop(self, *, timeout: float = 10.0) -> list[str]:
        """Refuse new work, let running syncs finish for up to ``timeout`` seconds, then
        cancel them. Returns the keys whose planned work was dropped (sorted): queued,
        delayed, dirty, awaiting a retry, or cancelled mid-run.
        """
        if self._closed:
            return []
        self._closed = True
        for key, entry in list(self._entries.items()):
            if entry.state == "running":
                if entry.dirty:
                    entry.dirty = False
                    self._dropped.add(key)
                continue
            if entry.timer is not None:
                entry.timer.cancel()
            del self._entries[key]
            self._dropped.add(key)
        while not self._ready.empty():
            self._ready.get_nowait()
        if not self._entries:
            self._idle.set()
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            logger.warning(
                "Running syncs cancelled at stop",
                extra={"action": "queue_stop_timeout", "keys": sorted(self._entries)},
            )
            self._dropped.update(self._entries)
        finally:  # also when stop() itself is cancelled: never leave workers behind
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers.clear()
        self._entries.clear()
        self._idle.set()
        dropped = sorted(self._dropped)
        logger.info(
            "Work queue stopped",
            extra={"action": "queue_stopped", "dropped": len(dropped), "keys": dropped[:100]},
        )
        return dropped

    async def request(self, key: str, trigger: str) -> bool:
        """See :meth:`portfolio_sync.queue.WorkQueue.request`."""
        if self._closed:
            raise QueueClosed()
        entry = self._entries.get(key)
        if entry is None and (cooling := self._cooling(key)) is not None:
            wait, streak = cooling
            entry = self._entries[key] = _Entry(state="delayed", trigger=trigger, streak=streak)
            self._delay(key, entry, wait)
            self._idle.clear()
            return True
        if entry is None:
            self._entries[key] = _Entry(state="queued", trigger=trigger)
            self._ready.put_nowait(key)
            self._idle.clear()
            logger.debug(
                "Sync queued", extra={"action": "sync_queued", "key": key, "trigger": trigger}
            )
            return True
        if entry.state == "running" and not entry.dirty:
            entry.dirty = True
            entry.dirty_trigger = trigger
            logger.debug(
                "Sync marked dirty", extra={"action": "sync_dirty", "key": key, "trigger": trigger}
            )
            return True
        return False

    async def request_all(self, trigger: str) -> bool:
        """Same as ``request(ALL, trigger)``."""
        return await self.request(ALL, trigger)

    async def join(self) -> None:
        """Wait until no key is queued, running, dirty or waiting for a retry or debounce."""
        if self._entries and not self._workers:
            raise RuntimeError("join() before start() would wait forever")
        await self._idle.wait()

    async def _work(self) -> None:
        while True:
            key = await self._ready.get()
            entry = self._entries.get(key)
            if entry is None or entry.state != "queued":
                continue
            entry.state = "running"
            attempt = entry.failures + 1
            extra = {"key": key, "trigger": entry.trigger, "attempt": attempt}
            logger.debug("Sync started", extra={"action": "sync_started", **extra})
            try:
                await self._run(key, entry.trigger)
            except Exception as exc:
                await self._call_hook("on_failure", self._on_failure, key, exc, attempt)
                self._failed(key, entry, exc, attempt)
            else:
                await self._call_hook("on_success", self._on_success, key, attempt)
                entry.failures = 0
                logger.debug("Sync succeeded", extra={"action": "sync_succeeded", **extra})
                self._settle(key, entry, retry_in=None)

    def _failed(self, key: str, entry: _Entry, exc: Exception, attempt: int) -> None:
        extra = {"key": key, "trigger": entry.trigger, "attempt": attempt, "error": _describe(exc)}
        if attempt >= self._max_attempts:
            expected = isinstance(exc, PortfolioSyncError)
            logger.log(
                logging.WARNING if expected else logging.ERROR,
                "sync gave up after retries",
                exc_info=None if expected else exc,
                extra={"action": "sync_gave_up", **extra},
            )
            entry.failures = 0
            self._settle(key, entry, retry_in=None)
            return
        entry.failures = attempt
        delay = backoff_delay(
            attempt,
            initial=self._backoff_initial,
            maximum=self._backoff_max,
            jitter=self._backoff_jitter,
        )
        # An expected failure was logged as one line where it happened (the reconciler's
        # sync_failed); the retry itself is routine.
        expected = isinstance(exc, PortfolioSyncError)
        logger.log(
            logging.INFO if expected else logging.WARNING,
            "sync will be retried",
            exc_info=None if expected else exc,
            extra={"action": "sync_retry_scheduled", "retry_in": round(delay, 2), **extra},
        )
        self._settle(key, entry, retry_in=delay)

    def _settle(self, key: str, entry: _Entry, *, retry_in: float | None) -> None:
        """Move a key out of ``running``: to a timer (retry or follow-up) or to idle."""
        if self._closed:
            del self._entries[key]
            if entry.dirty or retry_in is not None:
                self._dropped.add(key)
        elif retry_in is not None:
            # The retry re-reads both sides, so it also serves requests made during the run.
            entry.dirty = False
            self._delay(key, entry, retry_in)
        elif entry.dirty:
            entry.dirty = False
            entry.trigger = entry.dirty_trigger
            entry.streak += 1
            self._delay(key, entry, self._settle_time(entry.streak))
        else:
            del self._entries[key]
            self._remember(key, entry.streak)
        if not self._entries:
            self._idle.set()

    def _remember(self, key: str, streak: int) -> None:
        """Note when `key` went idle, so a request right after counts as a follow-up."""
        now = asyncio.get_running_loop().time()
        self._recent[key] = (now, streak)
        if len(self._recent) > 10_000:  # forget keys idle for longer than any settle time
            horizon = now - max(self._debounce, self._settle_max)
            self._recent = {k: v for k, v in self._recent.items() if v[0] >= horizon}

    def _cooling(self, key: str) -> tuple[float, int] | None:
        """(delay, streak) when `key` finished a run within its settle time, else None.

        Events that trickle in slightly slower than a sync lasts (a watcher delivering an
        upload batch every 50 ms, each sync 10 ms) would otherwise find the key idle every
        time and cost one sync each; treating them as follow-ups keeps a burst at a handful
        of syncs. A key idle for longer than its settle time still runs at once.
        """
        recent = self._recent.pop(key, None)
        if recent is None:
            return None
        ended, streak = recent
        wait = self._settle_time(streak + 1) - (asyncio.get_running_loop().time() - ended)
        return (wait, streak + 1) if wait > 0 else None

    def _settle_time(self, streak: int) -> float:
        """See :func:`settle_time`; the entry, and so the streak, ends when the key goes
        idle."""
        return settle_time(streak, debounce=self._debounce, settle_max=self._settle_max)

    def _delay(self, key: str, entry: _Entry, seconds: float) -> None:
        entry.state = "delayed"
        entry.timer = asyncio.get_running_loop().call_later(seconds, self._release, key)

    def _release(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None or entry.state != "delayed":
            return
        entry.state = "queued"
        entry.timer = None
        self._ready.put_nowait(key)

    async def _call_hook(
        self, name: str, hook: Callable[..., Awaitable[None]] | None, key: str, *args: object
    ) -> None:
        """Await a caller's hook; a broken metrics hook must not take a worker down."""
        if hook is None:
            return
        try:
            await hook(key, *args)
        except Exception:
            logger.exception(
                "Queue callback failed",
                extra={"action": "callback_failed", "callback": name, "key": key},
            )


def _describe(exc: BaseException) -> str:
    """Our errors are one readable line already; others keep their type."""
    return str(exc) if isinstance(exc, PortfolioSyncError) else repr(exc)
