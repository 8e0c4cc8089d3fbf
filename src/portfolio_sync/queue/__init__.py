"""The work queue: where sources hand over keys and the reconciler picks them up.

Sources only ever call :meth:`WorkQueue.request`; what runs for a key is decided by whoever
built the queue. Every backend keeps invariant 3 of the architecture (coalescing):

- a key is queued at most once;
- a key requested while it runs is marked dirty and runs exactly once more afterwards;
- never two runs of one key at the same time;
- a request for an idle key runs as soon as a worker is free (no debounce); only the
  follow-up run of a dirty key waits for the settle time.

Backends: :mod:`portfolio_sync.queue.local` (asyncio, one process, embedded mode). Import a
backend module explicitly; importing this package loads none of them.
"""

from __future__ import annotations

from typing import Protocol

from portfolio_sync.errors import PortfolioSyncError

__all__ = ["ALL", "QueueClosed", "WorkQueue"]

ALL = "*"
"""The key meaning "a full pass". It coalesces like any other key."""


class QueueClosed(PortfolioSyncError, RuntimeError):
    """The work queue is stopped and accepts no new work."""


class WorkQueue(Protocol):
    """What sources see of a queue: a way to ask for a key to be synced soon."""

    async def request(self, key: str, trigger: str) -> bool:
        """Ask for ``key`` to be synced; ``trigger`` says why (for logs and history).

        Returns ``True`` when the request created new work (a new queue entry, or the
        follow-up run of a key that is running now), ``False`` when it was coalesced into
        work already planned for that key. Either way the key will be synced after this
        call, so callers need not act on the result. Raises :class:`QueueClosed` once the
        queue is stopped.
        """
        ...

    async def request_all(self, trigger: str) -> bool:
        """Same as ``request(ALL, trigger)``: ask for a full pass."""
        ...
