"""Which keys a process just synced, for pages that update live (the console's events).

The runtime publishes every finished sync (the key, or `ALL` for a full pass) from its
event loop; readers wait for the next one. Only this process's syncs are seen: with
workers on other machines a reader must also refresh on a timer, which the console does.
"""

from __future__ import annotations

import asyncio
from collections import deque

KEPT = 1000  # recent keys remembered; a reader further behind refreshes everything


class SyncFeed:
    """A version counter with the recent keys behind it; single event loop, no locks."""

    def __init__(self) -> None:
        self.version = 0
        self.closed = False
        self._recent: deque[tuple[int, str]] = deque(maxlen=KEPT)
        self._changed = asyncio.Event()

    def publish(self, key: str) -> None:
        self.version += 1
        self._recent.append((self.version, key))
        self._wake()

    def close(self) -> None:
        """End every wait (the server is stopping); later waits return at once."""
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait(self, version: int, timeout: float) -> None:
        """Return when the feed is past `version`, is closed, or after `timeout` seconds."""
        if self.version > version or self.closed:
            return
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            pass

    def since(self, version: int) -> list[str] | None:
        """Keys published after `version` (each once), or None if some were forgotten."""
        if self.version == version:
            return []
        if not self._recent or self._recent[0][0] > version + 1:
            return None
        return list(dict.fromkeys(key for v, key in self._recent if v > version))
