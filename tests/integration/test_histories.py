"""Randomized, seeded histories against the real runtime: rows converge to their folders
without the cron pass, and no row is ever seen emptied unless its folder really was empty.

Each history drives a few portfolios of its own through random operations: uploads,
deletes, moves between its folders, row inserts and deletes (their database triggers
queue the work: the outbox on SQLite, deferred jobs on PostgreSQL), foreign writes of the
images column, and full passes. Storage events are sent like webhooks, with the paths
they saw, and may be duplicated, delayed (so reordered) or dropped; the last event of a
key is always delivered in the end, as an at-least-once sender's retry would. While the
history runs, its rows are sampled. Afterwards every row must equal its folder within a
bounded time, the cron pass being off.

Not generated yet: storage faults during a history (``test_faults.py`` covers them
apart), ``kill -9`` of the service, and a vanished storage root (another piece of the
safety work handles that case).

A failure names the seed; rerun one history with ``PORTFOLIO_SYNC_TEST_SEED=<seed>``.
``PORTFOLIO_SYNC_TEST_HISTORIES`` sets how many run per matrix (``make soak``: thousands).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa

from portfolio_sync.backends import outbox, pg_setup
from portfolio_sync.queue.procrastinate import QueueOptions
from portfolio_sync.runtime import Runtime
from tests.integration.world import World

# Read at import: the test environment is scrubbed of PORTFOLIO_SYNC_* before tests run.
HISTORIES = int(os.environ.get("PORTFOLIO_SYNC_TEST_HISTORIES", "100"))
ONLY_SEED = os.environ.get("PORTFOLIO_SYNC_TEST_SEED")
PARALLEL = 25  # histories at once (each on its own keys)
KEYS_PER_HISTORY = 3
OPERATIONS = 8
CONVERGE_SECONDS = 30.0
FOREIGN = "someone-else"  # the name foreign writes of the images column use


@dataclass
class History:
    seed: int
    world: World
    runtime: Runtime
    rng: random.Random = field(init=False)
    keys: list[int] = field(init=False)
    files: dict[int, set[str]] = field(default_factory=dict)
    rows: set[int] = field(default_factory=set)
    # The paths each folder had ever held when it last stopped being empty, and when each
    # row was first seen since (by a read that had ended) holding a path put after that: a
    # value only a listing taken after the folder's last empty moment can have produced.
    # A compare-and-set against it was based on a read after that moment, so on a listing
    # that was not empty: no observation started later may find the row emptied.
    stale: dict[int, set[str]] = field(default_factory=dict)
    ever: dict[int, set[str]] = field(default_factory=dict)
    seen_full: dict[int, float] = field(default_factory=dict)
    delayed: list[tuple[int, dict[str, bool]]] = field(default_factory=list)
    last_event: dict[int, dict[str, bool]] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    serial: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        base = 10 * (self.seed + 1)
        self.keys = [base + i for i in range(KEYS_PER_HISTORY)]
        self.files = {key: set() for key in self.keys}
        self.ever = {key: set() for key in self.keys}

    # ---- operations ---------------------------------------------------------------------
    async def run(self) -> None:
        for key in self.keys:  # rows exist from the start (row ops may delete and re-add)
            await asyncio.to_thread(self.world.insert, key, None)
            self.rows.add(key)
        foreign = False
        for _ in range(OPERATIONS):
            op = self.rng.choice(
                ["upload", "upload", "upload", "delete", "move", "insert", "drop_row",
                 "foreign", "pass_", "deliver"]
            )  # fmt: skip
            foreign = (foreign or op == "foreign") and op != "pass_"
            await getattr(self, op)()
            self.sample()
        if foreign:  # a foreign write is drift: only a pass (or a later event) repairs it
            await self.pass_()
        for key, expect in self.last_event.items():  # the sender's retry of the last one
            await self.runtime.request(str(key), "storage:retry", expect=expect)
        await self.deliver()

    async def upload(self) -> None:
        key = self.rng.choice(self.keys)
        self.serial += 1
        path = f"{key}/img{self.serial}.jpg"
        self.filling(key, path)
        await asyncio.to_thread(self.world.put, path)
        self.files[key].add(path)
        await self.event(key, {path: True})

    async def delete(self) -> None:
        key = self.rng.choice(self.keys)
        if not self.files[key]:
            return await self.upload()
        path = self.rng.choice(sorted(self.files[key]))
        self.files[key].discard(path)  # before: the folder may be empty from now on
        await asyncio.to_thread(self.world.delete, path)
        await self.event(key, {path: False})

    async def move(self) -> None:
        source, target = self.rng.sample(self.keys, 2)
        if not self.files[source]:
            return await self.upload()
        path = self.rng.choice(sorted(self.files[source]))
        moved = f"{target}/{path.partition('/')[2]}"
        self.filling(target, moved)
        await asyncio.to_thread(self.world.put, moved)
        self.files[target].add(moved)
        self.files[source].discard(path)  # before: the folder may be empty from now on
        await asyncio.to_thread(self.world.delete, path)
        await self.event(target, {moved: True})
        await self.event(source, {path: False})

    async def insert(self) -> None:
        missing = [k for k in self.keys if k not in self.rows]
        if missing:
            key = self.rng.choice(missing)
            await asyncio.to_thread(self.world.insert, key, None)
            self.rows.add(key)
            self.seen_full.pop(key, None)  # a new row
            self.log.append(f"insert row {key}")

    async def drop_row(self) -> None:
        if self.rows:
            key = self.rng.choice(sorted(self.rows))
            await asyncio.to_thread(
                self.world.execute, "DELETE FROM portfolios WHERE id = :k", {"k": key}
            )
            self.rows.discard(key)
            self.log.append(f"delete row {key}")

    async def foreign(self) -> None:
        if self.rows:
            key = self.rng.choice(sorted(self.rows))
            await asyncio.to_thread(self.world.set_images, key, [f"{key}/{FOREIGN}.jpg"])
            self.log.append(f"foreign write {key}")

    async def pass_(self) -> None:
        self.log.append("full pass")
        await self.runtime.request_all("history")

    async def event(self, key: int, expect: dict[str, bool]) -> None:
        """A storage webhook: sent, duplicated, delayed (delivered later) or dropped."""
        self.last_event[key] = {**self.last_event.get(key, {}), **expect}
        fate = self.rng.choice(["send", "send", "duplicate", "delay", "drop"])
        self.log.append(f"event {key} {expect} {fate}")
        if fate == "delay":
            self.delayed.append((key, expect))
            return
        for _ in range(0 if fate == "drop" else 2 if fate == "duplicate" else 1):
            await self.runtime.request(str(key), "storage:history", expect=expect)

    async def deliver(self) -> None:
        self.rng.shuffle(self.delayed)
        for key, expect in self.delayed:
            await self.runtime.request(str(key), "storage:late", expect=expect)
        self.delayed.clear()

    # ---- checks -------------------------------------------------------------------------
    def current(self) -> dict[int, list[str] | None]:
        return rows_of(self.world, self.keys)

    def filling(self, key: int, path: str) -> None:
        """Call before ``path`` lands in ``key``'s folder."""
        if not self.files[key]:
            self.stale[key] = set(self.ever[key])
            self.seen_full.pop(key, None)
        self.ever[key].add(path)

    def sample(
        self,
        rows: dict[int, list[str] | None] | None = None,
        read: tuple[float, float] | None = None,
    ) -> None:
        """Check one observation of this history's rows: read now, or ``rows`` as read
        between the two times of ``read``.

        Observations are ordered by those times, never by when they are checked: the
        sampler's read may have started before a read of ``run`` that is checked first,
        and then the row it found empty may well have been written full in between.
        """
        if rows is None:
            started = time.monotonic()
            rows = self.current()
            read = (started, time.monotonic())
        assert read is not None
        started, ended = read
        for key, images in rows.items():
            # Only a value no listing from before the last empty moment can have produced
            # counts: not a foreign write (evidence of no listing), nor a stale value that
            # a listing of the empty folder may rightly replace with [].
            if images and set(images) - self.stale.get(key, set()) - {f"{key}/{FOREIGN}.jpg"}:
                self.seen_full.setdefault(key, ended)
            elif images == [] and self.files[key]:
                full = self.seen_full.get(key)
                assert full is None or full > started, (
                    f"seed {self.seed}: row {key} seen emptied, its folder not empty since "
                    f"the row was seen full (read by {full:.3f}, emptied read from "
                    f"{started:.3f}); history: {self.log}"
                )

    def converged(self) -> bool:
        """Every row of the history holds exactly its folder's images (a NULL row must
        have been written too, if only with [])."""
        have = {k: None if v is None else sorted(v) for k, v in self.current().items()}
        return have == {k: sorted(self.files[k]) for k in self.rows}


def _decode(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return list(json.loads(value))
    return value  # type: ignore[no-any-return]


def rows_of(world: World, keys: list[int]) -> dict[int, list[str] | None]:
    with world.engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT id, images FROM portfolios WHERE id IN :keys").bindparams(
                sa.bindparam("keys", expanding=True)
            ),
            {"keys": keys},
        ).all()
    return {int(k): _decode(v) for k, v in found}


async def sample_while_running(batch: list[History]) -> None:
    """Sample the rows of every history of the batch (one query) every few milliseconds
    while the operations run, so a row emptied and repaired between two operations is
    still seen."""
    world = batch[0].world
    keys = [key for history in batch for key in history.keys]
    while True:
        started = time.monotonic()
        rows = await asyncio.to_thread(rows_of, world, keys)
        read = (started, time.monotonic())
        for history in batch:
            history.sample({k: rows[k] for k in history.keys if k in rows}, read)
        await asyncio.sleep(0.01)


@asynccontextmanager
async def runtime_for(world: World) -> AsyncIterator[Runtime]:
    """The service's runtime with row triggers installed, no cron pass, short settles."""
    # The generator's deletions are real: the streaming guard (which holds emptying writes
    # past max_empty_rows in its window, for an operator) must not hold them here.
    with world.service(debounce=0.02, schedule="0 0 1 1 *", max_empty_rows=10**9) as svc:
        if world.postgres:
            pg_setup.install(svc.catalog, svc.settings)
            options = QueueOptions(poll_interval=0.2, stall_timeout=5.0, backoff=1)
            runtime = Runtime(svc, watch=False, catch_up=False, queue_options=options)
        else:
            outbox.run(svc.catalog, outbox.install_sql(svc.catalog))
            runtime = Runtime(svc, watch=False, catch_up=False, outbox_interval=0.05)
        async with runtime:
            yield runtime


@pytest.mark.timeout(600)  # about 40 s per matrix on two loaded cores
async def test_random_histories_converge_and_never_wipe(world: World) -> None:
    world.create_table()
    seeds = [int(ONLY_SEED)] if ONLY_SEED else list(range(HISTORIES))
    times: list[float] = []
    operations = 0
    async with runtime_for(world) as runtime:
        for start in range(0, len(seeds), PARALLEL):
            batch = [
                History(seed=s, world=world, runtime=runtime)
                for s in seeds[start : start + PARALLEL]
            ]
            sampler = asyncio.create_task(sample_while_running(batch))
            try:
                await asyncio.gather(*(h.run() for h in batch))
            finally:
                sampler.cancel()
                outcome = await asyncio.gather(sampler, return_exceptions=True)
            if isinstance(outcome[0], AssertionError):
                raise outcome[0]
            ended = time.monotonic()
            for history in batch:
                deadline = ended + CONVERGE_SECONDS
                while not history.converged():
                    history.sample()
                    assert time.monotonic() < deadline, (
                        f"seed {history.seed}: rows {history.current()} never reached their "
                        f"folders {history.files} (rows {sorted(history.rows)}); "
                        f"history: {history.log}"
                    )
                    await asyncio.sleep(0.02)
                times.append(time.monotonic() - ended)
                operations += len(history.log)
    times.sort()
    p50, p99 = times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]
    print(
        f"\n[{world.kind}] {len(seeds)} histories, {operations} logged operations, "
        f"0 lost updates; converged p50 {p50:.2f} s, p99 {p99:.2f} s after the last operation"
    )


def test_checker_orders_observations_by_read_time() -> None:
    """The checker's own rule, on hand-made observations of one folder holding a file.

    An empty read that started before a full read ended may have happened first (the
    sampler's read was running when a read of ``run`` was checked); one started after it
    ended may not. A stale value that an empty listing may rightly replace counts for
    nothing: the folder was emptied, then refilled with a new file, and the row still
    held the old one.
    """
    # sample() with rows given touches neither the world nor the runtime
    history = History(seed=0, world=None, runtime=None)  # type: ignore[arg-type]
    key = history.keys[0]
    history.filling(key, f"{key}/old.jpg")
    history.files[key] = set()  # the old file was deleted: the folder is empty
    history.filling(key, f"{key}/new.jpg")
    history.files[key] = {f"{key}/new.jpg"}
    history.sample({key: [f"{key}/old.jpg"]}, (1.0, 2.0))  # stale: no evidence
    history.sample({key: []}, (3.0, 4.0))
    history.sample({key: [f"{key}/new.jpg"]}, (10.0, 11.0))
    history.sample({key: []}, (9.0, 12.0))  # overlaps: may have come first
    with pytest.raises(AssertionError, match="seen emptied"):
        history.sample({key: []}, (11.5, 12.0))
