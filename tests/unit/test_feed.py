"""`SyncFeed`: what the console's event stream tells a page about finished syncs."""

from __future__ import annotations

import asyncio
import time

from portfolio_sync.feed import KEPT, SyncFeed


async def test_waiters_wake_on_publish_and_see_each_key_once() -> None:
    feed = SyncFeed()
    start = feed.version
    waiter = asyncio.create_task(feed.wait(start, timeout=10))
    await asyncio.sleep(0)
    feed.publish("7")
    feed.publish("3")
    feed.publish("7")
    await asyncio.wait_for(waiter, 1)
    assert feed.since(start) == ["7", "3"]
    assert feed.since(feed.version) == []


async def test_wait_times_out_and_returns_at_once_when_behind() -> None:
    feed = SyncFeed()
    began = time.monotonic()
    await feed.wait(feed.version, timeout=0.05)
    assert time.monotonic() - began < 1
    feed.publish("1")
    began = time.monotonic()
    await feed.wait(0, timeout=10)  # already past version 0
    assert time.monotonic() - began < 1


async def test_close_ends_waits_for_good() -> None:
    feed = SyncFeed()
    waiter = asyncio.create_task(feed.wait(feed.version, timeout=30))
    await asyncio.sleep(0)
    feed.close()
    await asyncio.wait_for(waiter, 1)
    await asyncio.wait_for(feed.wait(feed.version, timeout=30), 1)
    assert feed.closed


def test_a_reader_too_far_behind_is_told_to_refresh_everything() -> None:
    feed = SyncFeed()
    for n in range(KEPT + 5):
        feed.publish(str(n))
    assert feed.since(0) is None
    assert feed.since(feed.version - 2) == [str(KEPT + 3), str(KEPT + 4)]
