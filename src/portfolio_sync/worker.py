"""`portfolio-sync worker`: drain the PostgreSQL job queue, without HTTP.

Run one per machine, or several: procrastinate's locks keep one sync of a key at a time
across all of them, and its periodic task runs the full pass once per tick however many
workers run. SIGTERM or SIGINT stops the process gracefully: no new jobs are taken,
running syncs get ``shutdown_timeout`` seconds to finish (a job cut short is retried by
another worker), and the exit status is 0. A worker killed outright (``kill -9``) loses
nothing either: its jobs are retried once its heartbeat is ``stall_timeout`` seconds old.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from portfolio_sync.config import Settings
from portfolio_sync.errors import ConfigError
from portfolio_sync.queue.procrastinate import QueueOptions
from portfolio_sync.runtime import Runtime
from portfolio_sync.wiring import open_service

logger = logging.getLogger(__name__)


def run_worker(settings: Settings, *, stall_timeout: float = 30.0) -> None:
    """Blocking entry point of the `worker` command."""
    if not settings.is_postgres:
        raise ConfigError(
            "`worker` needs a PostgreSQL database (the job queue lives there); "
            "with SQLite, `serve` runs the work queue in its own process"
        )
    options = QueueOptions(concurrency=settings.workers, stall_timeout=stall_timeout)
    asyncio.run(work(settings, options))


async def work(
    settings: Settings, options: QueueOptions, stop: asyncio.Event | None = None
) -> None:
    """Run a worker until ``stop`` is set, or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        with open_service(settings) as svc:
            runtime = Runtime(svc, watch=False, catch_up=False, queue_options=options)
            async with runtime:
                print(
                    f"portfolio-sync worker running (database {svc.catalog.describe()}, "
                    f"storage {svc.storage.description}, concurrency {options.concurrency})",
                    flush=True,
                )
                await stop.wait()
                logger.info("worker stopping", extra={"action": "worker_stopping"})
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
