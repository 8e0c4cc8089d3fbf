"""Group commit of sync requests: one database statement for all requests that arrive
while the previous one is being written.

A webhook may only be answered 202 once its key's job is durably queued, or its
expectations merged into the key's waiting job. One statement per request costs a round
trip and a WAL flush each, and concurrent requests then queue for the few pooled
connections: seen at 53 to 115 requests/s with the database idle and the server at 22% CPU.
Here the first request of an idle batcher is written at once (no added latency); requests
arriving meanwhile are merged per key in memory and go out together in the next statement,
so the cost is a round trip and a flush per batch, whatever the request rate. Every caller
still waits until the statement holding its request has committed, and gets its error if
it failed: nothing is acknowledged that is not in the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from portfolio_sync.queue import QueueClosed

__all__ = ["GroupCommit", "Pending"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Pending:
    """The requests for one key waiting for the next statement, merged.

    ``trigger`` is the first request's (a waiting job keeps the reason it was queued
    for); ``expect`` is the union of the requests' expectations, a later request's word on
    a path replacing an earlier one's, as events are applied in order.
    """

    key: str
    trigger: str
    expect: dict[str, bool] = field(default_factory=dict)
    waiters: list[asyncio.Future[bool]] = field(default_factory=list)


Writer = Callable[[list[Pending]], Awaitable[Mapping[str, bool]]]
"""Writes a batch (distinct keys) in one statement; returns, per key, whether it created
new work. Raising fails every request of the batch."""


class GroupCommit:
    """Batches :meth:`submit` calls into calls of ``write``.

    Up to ``in_flight`` statements run at once (each on its own pooled connection): a
    request arriving while fewer run starts one at once; otherwise it waits for the next
    free slot together with every request that arrives meanwhile. A key may then be in two
    statements at once (an earlier request in flight, a later one queued); that is what
    two processes deferring the same key do too, and the writer must be atomic per key.
    ``max_batch`` bounds the keys per statement.
    """

    def __init__(self, write: Writer, *, in_flight: int = 4, max_batch: int = 1000) -> None:
        self._write = write
        self.in_flight = in_flight
        self.max_batch = max_batch
        self._pending: dict[str, Pending] = {}
        self._running: set[asyncio.Task[None]] = set()
        self._closed = False

    async def submit(self, key: str, trigger: str, expect: Mapping[str, bool]) -> bool:
        """Queue ``key`` in the next statement; returns once that statement committed.

        True when this request created new work, False when it was coalesced (into a
        waiting job, or into an earlier request of the same batch).
        """
        if self._closed:
            raise QueueClosed()
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        entry = self._pending.get(key)
        if entry is None:
            entry = self._pending[key] = Pending(key=key, trigger=trigger)
        entry.expect.update(expect)
        entry.waiters.append(waiter)
        self._start()
        return await waiter

    def _start(self) -> None:
        while self._pending and len(self._running) < self.in_flight:
            batch = [self._pending.pop(key) for key in list(self._pending)[: self.max_batch]]
            task = asyncio.ensure_future(self._write_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not self._closed or not task.cancelled():
            self._start()

    async def _write_batch(self, batch: list[Pending]) -> None:
        try:
            created = await self._write(batch)
        except BaseException as exc:
            failure = QueueClosed() if isinstance(exc, asyncio.CancelledError) else exc
            for entry in batch:
                _fail(entry.waiters, failure)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for entry in batch:
            first, *rest = entry.waiters
            _resolve(first, bool(created.get(entry.key, False)))
            for waiter in rest:
                _resolve(waiter, False)

    async def close(self, timeout: float) -> None:
        """Refuse new requests; let the statements in flight and the backlog be written
        (within ``timeout`` seconds, then fail what is left with :class:`QueueClosed`)."""
        self._closed = True
        try:
            async with asyncio.timeout(timeout):
                while self._running:
                    await asyncio.wait(set(self._running))
        except TimeoutError:
            logger.warning(
                "queued requests not written before stop",
                extra={"action": "group_commit_timeout", "keys": len(self._pending)},
            )
            for task in self._running:
                task.cancel()
        for entry in self._pending.values():
            _fail(entry.waiters, QueueClosed())
        self._pending.clear()


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():  # a caller that went away (cancelled) leaves a done future
        waiter.set_result(value)


def _fail(waiters: list[asyncio.Future[bool]], exc: BaseException) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(exc)
