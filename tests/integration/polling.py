"""Bounded waiting for a condition that background work makes true."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(
    check: Callable[[], bool], timeout: float = 10.0, *, interval: float = 0.02
) -> float:
    """Poll until `check()` holds; returns the seconds it took (bounded by `timeout`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)
    return time.monotonic() - start
