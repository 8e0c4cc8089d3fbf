"""The contract of the PostgreSQL job queue, shared by the workers and the SQL triggers.

Queue and task names, the lock of a key, how the schedule reads to procrastinate, the
schema check, and the job manager fix-up. Kept apart from the queue class so that
``setup`` (and the trigger SQL it generates) depends on the contract, not on the worker.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from procrastinate import exceptions as pexc
from procrastinate import jobs as pjobs
from procrastinate import manager as pmanager
from procrastinate.schema import SchemaManager

from portfolio_sync.errors import CatalogError

__all__ = [
    "LOCK_PREFIX",
    "PASS_TASK",
    "PRUNE_TASK",
    "QUEUE",
    "SYNC_TASK",
    "Deferred",
    "JobRequest",
    "QueueJobManager",
    "apply_schema_if_missing",
    "conninfo",
    "croniter_expression",
    "ensure_lock_index",
    "lock_for",
    "lock_index_exists",
    "missing_functions",
]

logger = logging.getLogger(__name__)

QUEUE = "portfolio_sync"
SYNC_TASK = "portfolio_sync.sync_portfolio"
PASS_TASK = "portfolio_sync.sync_all"
PRUNE_TASK = "portfolio_sync.prune_jobs"
LOCK_PREFIX = "portfolio_sync:"
#: Functions of procrastinate's schema this code calls; missing ones mean an older schema.
REQUIRED_FUNCTIONS = (
    "procrastinate_defer_jobs_v1",
    "procrastinate_fetch_job_v2",
    "procrastinate_retry_job_v2",
    "procrastinate_finish_job_v1",
    "procrastinate_register_worker_v1",
    "procrastinate_prune_stalled_workers_v1",
)


def lock_for(key: str) -> str:
    """The ``lock`` and ``queueing_lock`` of a key's jobs (``ALL`` for the full pass)."""
    return LOCK_PREFIX + key


def croniter_expression(schedule: str) -> str:
    """The schedule as procrastinate's croniter reads it.

    Settings validate the schedule with cronsim, whose optional sixth field (seconds) comes
    first; croniter expects it last. Five-field expressions read the same in both.
    """
    fields = schedule.split()
    return " ".join([*fields[1:], fields[0]]) if len(fields) == 6 else schedule


def conninfo(database_url: str) -> str:
    """libpq form of a ``postgresql+psycopg://`` settings URL (query options kept)."""
    return "postgresql://" + database_url.partition("://")[2]


def apply_schema_if_missing(conn: psycopg.Connection[Any]) -> bool:
    """Create procrastinate's schema unless ``procrastinate_jobs`` resolves; True if created.

    procrastinate's schema script is not idempotent (``CREATE TYPE`` without ``IF NOT
    EXISTS``), so it is only run when the table is missing, under an advisory lock so two
    workers starting together do not both run it. Objects land in the first schema of the
    connection's ``search_path``. Runs in the caller's transaction; the caller commits.
    """
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('portfolio_sync_procrastinate'))")
    row = conn.execute("SELECT to_regclass('procrastinate_jobs') IS NULL").fetchone()
    created = bool(row and row[0])
    if created:
        conn.execute(SchemaManager.get_schema())
    missing = missing_functions(conn)
    if missing:
        raise CatalogError(
            f"procrastinate's schema in this database is older than procrastinate "
            f"{_procrastinate_version()} expects (missing {', '.join(missing)}); "
            "apply procrastinate's migrations, then run setup again"
        )
    try:
        with conn.transaction():  # a savepoint: a refusal leaves the caller's work intact
            ensure_lock_index(conn)
    except psycopg.errors.InsufficientPrivilege as exc:
        # A worker running as a role that may not index procrastinate_jobs: the queue works,
        # only slower as it deepens. `setup`, run as the owner, creates the index.
        logger.warning(
            "cannot create the job queue's lock index; run `portfolio-sync setup` as the "
            "owner of procrastinate_jobs",
            extra={"action": "lock_index_missing", "error": str(exc).strip()},
        )
    return created


LOCK_INDEX = "portfolio_sync_jobs_lock_idx"
LOCK_INDEX_SQL = (
    f"CREATE INDEX IF NOT EXISTS {LOCK_INDEX} ON procrastinate_jobs (lock) "
    "WHERE status IN ('todo', 'doing')"
)


def ensure_lock_index(conn: psycopg.Connection[Any]) -> bool:
    """Index the lock of waiting and running jobs, unless done; True if created now.

    procrastinate's job fetch skips jobs whose lock is taken with a ``NOT EXISTS`` lookup
    of other jobs by lock, which its own indexes (lock of running jobs only; (id, lock))
    cannot answer: each fetch then reads every waiting job, and draining a queue of n
    jobs costs n² (seen: 0.6 ms per fetch with this index, 30 ms with 1,000 jobs queued
    without it). Looked up first, so a worker start takes no lock on the jobs table.
    """
    if lock_index_exists(conn):
        return False
    conn.execute(LOCK_INDEX_SQL)
    return True


def lock_index_exists(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``LOCK_INDEX`` exists beside ``procrastinate_jobs`` (False if neither)."""
    row = conn.execute(
        "SELECT to_regclass(quote_ident(n.nspname) || '.' || %s) IS NOT NULL FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass('procrastinate_jobs')",
        (LOCK_INDEX,),
    ).fetchone()
    return bool(row and row[0])


def missing_functions(conn: psycopg.Connection[Any]) -> list[str]:
    """Required procrastinate functions absent from the schema holding ``procrastinate_jobs``."""
    rows = conn.execute(
        "SELECT proname FROM pg_proc WHERE proname = ANY(%s) AND pronamespace = "
        "(SELECT relnamespace FROM pg_class WHERE oid = to_regclass('procrastinate_jobs'))",
        (list(REQUIRED_FUNCTIONS),),
    ).fetchall()
    found = {r[0] for r in rows}
    return [name for name in REQUIRED_FUNCTIONS if name not in found]


def _procrastinate_version() -> str:
    import procrastinate

    return str(procrastinate.__version__)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRequest:
    """One lock's share of :meth:`QueueJobManager.defer_many`."""

    lock: str
    task: str
    args: Mapping[str, Any]
    idle_delay: float | None  # seconds until due if the lock is idle; None: at once
    busy_delay: float  # seconds until due if a job of the lock runs or just started


@dataclass(frozen=True, slots=True, kw_only=True)
class Deferred:
    """What :meth:`QueueJobManager.defer_many` did for one lock."""

    inserted: bool  # a new job; False: merged into (or coalesced with) a waiting one
    busy: bool  # a job of the lock ran or waited when the statement started


# Both states are read before the insert, from the two partial unique indexes. A request
# whose lock has a waiting job that already expects everything it says (or it says
# nothing) is left out of the insert: that job has not started, so it will list storage
# after this request, and locking it would make a worker's fetch, which skips locked jobs,
# pass it over. Repeated events for one object then cost a read, not a write. A job that
# waited then and has started by the time the insert meets it is waited for by ON
# CONFLICT, which then inserts (the row left the `todo` index): the new job is its
# follow-up. `xmax = 0` tells an inserted row from an updated one.
_DEFER_MANY = """
WITH request AS (
    SELECT r.lock, r.task, r.args::jsonb AS args, r.idle, r.busy_delay,
           EXISTS (SELECT 1 FROM procrastinate_jobs j
                   WHERE j.lock = r.lock AND j.status = 'doing') AS running,
           w.id IS NOT NULL AS waiting,
           COALESCE(w.args -> 'expect', '{}'::jsonb)
               @> COALESCE(r.args::jsonb -> 'expect', '{}'::jsonb) AS covered
    FROM unnest(%(locks)s::text[], %(tasks)s::text[], %(args)s::text[], %(idle)s::float8[],
                %(busy)s::float8[]) AS r(lock, task, args, idle, busy_delay)
    LEFT JOIN LATERAL (SELECT j.id, j.args FROM procrastinate_jobs j
                       WHERE j.queueing_lock = r.lock AND j.status = 'todo') AS w ON true
), written AS (
    INSERT INTO procrastinate_jobs (queue_name, task_name, lock, queueing_lock, args,
                                    scheduled_at)
    SELECT %(queue)s, task, lock, lock, args, clock_timestamp()
           + make_interval(secs => CASE WHEN running OR waiting THEN busy_delay ELSE idle END)
    FROM request WHERE NOT (waiting AND covered)
    ORDER BY lock
    ON CONFLICT (queueing_lock) WHERE status = 'todo'
    DO UPDATE SET args = jsonb_set(procrastinate_jobs.args, '{expect}',
        COALESCE(procrastinate_jobs.args -> 'expect', '{}'::jsonb) || (EXCLUDED.args -> 'expect'))
    WHERE NOT COALESCE(procrastinate_jobs.args -> 'expect', '{}'::jsonb)
              @> COALESCE(EXCLUDED.args -> 'expect', '{}'::jsonb)
    RETURNING procrastinate_jobs.lock, xmax = 0 AS inserted
)
SELECT request.lock, request.running OR request.waiting AS busy,
       COALESCE(written.inserted, false) AS inserted
FROM request LEFT JOIN written ON written.lock = request.lock
"""


class QueueJobManager(pmanager.JobManager):
    """procrastinate's manager, plus the few queries of this queue, and retries that cannot
    leave a job stuck in ``doing``.

    ``retry_job`` moves a job back to ``todo``; when a job of the same key already waits
    there, the queueing-lock index refuses, and procrastinate would leave the failed job in
    ``doing``, holding its key's lock for ever (procrastinate issue #1446; the same happens
    to a stalled job retried by the recipe in its docs). The job is then finished as
    ``failed`` instead: the waiting job re-reads both sides, so nothing is lost.
    """

    async def retry_job(
        self,
        job: pjobs.Job,
        retry_at: datetime.datetime | None = None,
        priority: int | None = None,
        queue: str | None = None,
        lock: str | None = None,
    ) -> None:
        try:
            await super().retry_job(
                job, retry_at=retry_at, priority=priority, queue=queue, lock=lock
            )
        except pexc.UniqueViolation as exc:
            if exc.constraint_name != pmanager.QUEUEING_LOCK_CONSTRAINT or job.id is None:
                raise
            # A job of the same key waits in the queue and will re-read both sides.
            logger.info(
                "retry superseded by a queued job",
                extra={"action": "retry_superseded", "job_id": job.id, "lock": job.lock},
            )
            await self.finish_job_by_id_async(
                job_id=job.id, status=pjobs.Status.FAILED, delete_job=False
            )

    async def defer_many(self, jobs: Sequence[JobRequest]) -> dict[str, Deferred]:
        """Queue one job per lock, or merge each into the lock's waiting job; one statement.

        Atomic per lock, like the trigger SQL (``INSERT … ON CONFLICT`` on procrastinate's
        queueing-lock index): a lock gets a new job when none waits, else the waiting job
        absorbs the request's ``expect`` (a request without one changes nothing). The new
        job of a lock that is busy (a job of it runs, or one waited when the statement
        started and ran meanwhile) waits ``busy_delay`` seconds, else ``idle_delay`` (None:
        due at once), on the database's clock. Locks must be distinct; rows are written in
        lock order, so two batches from two processes cannot deadlock on each other.
        """
        ordered = sorted(jobs, key=lambda job: job.lock)
        rows = await self.connector.execute_query_all_async(
            query=_DEFER_MANY,
            queue=QUEUE,
            locks=[job.lock for job in ordered],
            tasks=[job.task for job in ordered],
            args=[json.dumps(job.args) for job in ordered],
            idle=[job.idle_delay for job in ordered],
            busy=[job.busy_delay for job in ordered],
        )
        return {
            row["lock"]: Deferred(inserted=bool(row["inserted"]), busy=bool(row["busy"]))
            for row in rows
        }

    async def count(self, *statuses: str) -> int:
        """Jobs of this queue in any of ``statuses``, on every worker."""
        row = await self.connector.execute_query_one_async(
            query="SELECT count(*) AS n FROM procrastinate_jobs "
            "WHERE queue_name = %(queue)s AND status::text = ANY(%(statuses)s)",
            queue=QUEUE,
            statuses=list(statuses),
        )
        return int(row["n"])

    async def delay_follow_up(self, lock: str, seconds: float) -> bool:
        """Move the waiting job of ``lock``, if it was deferred while the key ran (it has a
        ``scheduled_at``), to ``seconds`` from now; True if there was one."""
        row = await self.connector.execute_query_one_async(
            query="WITH moved AS (UPDATE procrastinate_jobs SET scheduled_at = "
            "GREATEST(scheduled_at, clock_timestamp() + make_interval(secs => %(seconds)s)) "
            "WHERE queueing_lock = %(lock)s AND status = 'todo' AND scheduled_at IS NOT NULL "
            "RETURNING 1) SELECT count(*) AS n FROM moved",
            lock=lock,
            seconds=seconds,
        )
        return bool(row["n"])

    async def notify_due(self) -> None:
        """Wake the workers listening on this queue, as procrastinate does for a new job."""
        await self.connector.execute_query_async(
            query="SELECT pg_notify('procrastinate_queue_v1#' || %(queue)s, "
            "json_build_object('type', 'job_inserted', 'job_id', 0)::text)",
            queue=QUEUE,
        )

    async def retry_stalled(self, stall_timeout: float) -> int:
        """Retry this queue's jobs of workers silent for ``stall_timeout`` seconds (or
        pruned); returns how many were retried."""
        stalled = await self.get_stalled_jobs(queue=QUEUE, seconds_since_heartbeat=stall_timeout)
        retried = 0
        for job in stalled:
            try:
                await self.retry_job(job)
            except pexc.ConnectorException:  # another worker got to it first
                continue
            retried += 1
            logger.warning(
                "stalled job retried",
                extra={"action": "stalled_job_retried", "job_id": job.id, "lock": job.lock},
            )
        return retried
