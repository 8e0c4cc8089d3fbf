"""Group commit of sync requests: batching, merging per key, errors, stop."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from portfolio_sync.queue import QueueClosed
from portfolio_sync.queue.group_commit import GroupCommit, Pending


class Table:
    """The writer: records each batch; a key is new the first time it is written."""

    def __init__(self, *, hold: bool = False) -> None:
        self.batches: list[list[Pending]] = []
        self.known: set[str] = set()
        self.running = 0
        self.most_running = 0
        self.gate = asyncio.Event()
        if not hold:
            self.gate.set()
        self.fail: Exception | None = None

    async def write(self, batch: list[Pending]) -> Mapping[str, bool]:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self.gate.wait()
            if self.fail is not None:
                raise self.fail
            self.batches.append(batch)
            created = {p.key: p.key not in self.known for p in batch}
            self.known.update(created)
            return created
        finally:
            self.running -= 1


async def occupied() -> tuple[Table, GroupCommit, asyncio.Future[bool]]:
    """A batcher with one statement slot, taken by a held request for key "x"."""
    table = Table(hold=True)
    commit = GroupCommit(table.write, in_flight=1)
    busy = asyncio.ensure_future(commit.submit("x", "manual", {}))
    await asyncio.sleep(0)
    return table, commit, busy


async def test_requests_arriving_while_a_statement_runs_share_the_next_one() -> None:
    table = Table(hold=True)
    commit = GroupCommit(table.write, in_flight=1)
    first = asyncio.ensure_future(commit.submit("a", "storage", {"a/1.jpg": True}))
    await asyncio.sleep(0)  # the first request starts a statement at once, alone
    rest = [
        asyncio.ensure_future(commit.submit(key, "storage", {f"{key}/{i}.jpg": True}))
        for i, key in enumerate(["b", "c", "b", "a", "b"])
    ]
    await asyncio.sleep(0)
    table.gate.set()
    assert await first is True
    results = await asyncio.gather(*rest)
    assert [[p.key for p in batch] for batch in table.batches] == [["a"], ["b", "c", "a"]]
    b = table.batches[1][0]
    assert b.expect == {"b/0.jpg": True, "b/2.jpg": True, "b/4.jpg": True}
    assert b.trigger == "storage"
    # b's first request created its job, the later ones were merged into it; a was known
    assert results == [True, True, False, False, False]


async def test_later_word_on_a_path_wins_and_the_first_trigger_stays() -> None:
    table, commit, busy = await occupied()
    one = asyncio.ensure_future(commit.submit("k", "storage:s3", {"k/a.jpg": True}))
    two = asyncio.ensure_future(commit.submit("k", "watcher", {"k/a.jpg": False}))
    await asyncio.sleep(0)
    table.gate.set()
    await asyncio.gather(busy, one, two)
    (entry,) = table.batches[1]
    assert (entry.trigger, entry.expect) == ("storage:s3", {"k/a.jpg": False})


async def test_statements_in_flight_are_bounded_and_batches_too() -> None:
    table = Table(hold=True)
    commit = GroupCommit(table.write, in_flight=3, max_batch=10)
    waiting = [asyncio.ensure_future(commit.submit(str(i), "t", {})) for i in range(50)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert table.running == 3
    table.gate.set()
    assert all(await asyncio.gather(*waiting))
    assert table.most_running == 3
    assert max(len(batch) for batch in table.batches) == 10
    assert sorted(p.key for batch in table.batches for p in batch) == sorted(
        str(i) for i in range(50)
    )


async def test_a_failed_statement_fails_every_request_in_it() -> None:
    table = Table()
    table.fail = RuntimeError("database went away")
    commit = GroupCommit(table.write)
    results = await asyncio.gather(
        commit.submit("a", "t", {}), commit.submit("a", "t", {}), return_exceptions=True
    )
    assert [str(r) for r in results] == ["database went away"] * 2
    table.fail = None
    assert await commit.submit("a", "t", {}) is True  # the next statement is tried afresh


async def test_close_writes_what_was_taken_then_refuses() -> None:
    table = Table(hold=True)
    commit = GroupCommit(table.write, in_flight=1)
    taken = [asyncio.ensure_future(commit.submit(k, "t", {})) for k in "abc"]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(commit.close(timeout=5))
    await asyncio.sleep(0)
    table.gate.set()
    await closing
    assert await asyncio.gather(*taken) == [True, True, True]
    with pytest.raises(QueueClosed):
        await commit.submit("d", "t", {})


async def test_close_gives_up_after_its_timeout() -> None:
    table = Table(hold=True)  # a statement that never returns
    commit = GroupCommit(table.write, in_flight=1)
    stuck = asyncio.ensure_future(commit.submit("a", "t", {}))
    queued = asyncio.ensure_future(commit.submit("b", "t", {}))
    await asyncio.sleep(0)
    await commit.close(timeout=0.05)
    for request in (stuck, queued):
        with pytest.raises(QueueClosed):
            await request


async def test_a_caller_that_went_away_does_not_disturb_the_others() -> None:
    table, commit, busy = await occupied()
    gone = asyncio.ensure_future(commit.submit("a", "t", {"a/1.jpg": True}))
    stays = asyncio.ensure_future(commit.submit("a", "t", {"a/2.jpg": True}))
    await asyncio.sleep(0)
    gone.cancel()
    table.gate.set()
    assert await busy is True
    assert await stays is False  # the first (cancelled) waiter had the True
    (entry,) = table.batches[1]
    assert entry.expect == {"a/1.jpg": True, "a/2.jpg": True}  # its request still counts
