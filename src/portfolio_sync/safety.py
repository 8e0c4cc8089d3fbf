"""What must hold before a write that empties rows, on every path.

Two checks stand between a listing and a write that empties a row (or removes more than
half of its images), wherever the sync came from:

- **Root health** (`RootHealth`): the storage root is there, is a folder, sits on the
  device it was on when first synced (an unmounted volume leaves an empty folder on
  another device) and is not empty; on S3 the bucket answers and the prefix holds at
  least one object. A failing check is a `StorageError`: nothing is written, the key
  records the error and is retried. A listing of a vanished root looks exactly like many
  deleted folders, which is why this is checked and not inferred.
- **The streaming guard** (`StreamingGuard`): per-key syncs (events, `sync KEY`) count
  their emptying writes in a sliding window kept in the database, so every process of a
  PostgreSQL deployment shares it. Past the full pass's thresholds, further emptying writes
  are *held* (recorded with the listing that asked for them) until an operator releases
  them. One real deletion still empties its row at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from portfolio_sync.backends import schema
from portfolio_sync.backends.storage import LocalStorage, Storage
from portfolio_sync.errors import StorageError

logger = logging.getLogger(__name__)

_DEVICE_META = "storage_device"


@dataclass(frozen=True, slots=True, kw_only=True)
class Guard:
    """Mass-deletion guard: like rclone's --max-delete, for rows a pass would empty."""

    max_share: float = 0.1
    min_rows: int = 5

    def trips(self, emptied: int, nonempty_before: int) -> bool:
        return emptied >= self.min_rows and emptied > self.max_share * nonempty_before


class RootHealth:
    """Checks the storage root before an emptying write (see the module docstring).

    A healthy result is cached for `cache_seconds` (S3: one listing request per check);
    a failing one never is, so a root that comes back is seen at the next retry.
    """

    def __init__(
        self, storage: Storage, engine: sa.Engine, prefix: str, *, cache_seconds: float
    ) -> None:
        self.storage = storage
        self.engine = engine
        self.prefix = prefix
        self.cache_seconds = cache_seconds
        self._healthy_until = 0.0
        self._lock = threading.Lock()

    @classmethod
    def for_storage(cls, storage: Storage, engine: sa.Engine, prefix: str) -> RootHealth:
        local = isinstance(storage, LocalStorage)
        return cls(storage, engine, prefix, cache_seconds=0.0 if local else 3.0)

    def check(self, *, allow_empty: bool = False, record: bool = True) -> None:
        """Raise StorageError unless an emptying write may go ahead.

        `allow_empty` (an operator's `--force`) accepts an empty root, for the one real
        case of it (the last portfolio folder of the store was deleted), and a new device.
        Without `record` (dry runs) the device is not recorded.
        """
        if not allow_empty and time.monotonic() < self._healthy_until:
            return
        probe = self.storage.probe(self.prefix)
        root = self._root()
        if root is not None and probe.device is not None:
            recorded = schema.get_meta(self.engine, _DEVICE_META)
            if isinstance(recorded, dict) and recorded.get("root") == root:
                if recorded.get("device") != probe.device and not allow_empty:
                    raise StorageError(
                        f"storage folder {root} is on another device than when it was first "
                        f"synced ({probe.device} instead of {recorded.get('device')}): is its "
                        "volume unmounted? Nothing was emptied; `sync --all --force` accepts "
                        "the new device"
                    )
                if allow_empty and record and recorded.get("device") != probe.device:
                    self.remember_device(replace=True)
            elif probe.has_objects and record:
                self.remember_device()
        if not probe.has_objects and not allow_empty:
            raise StorageError(
                f"{self.storage.description} holds nothing under {self.prefix or '/'} while rows "
                "hold images: is it unmounted, or the storage URL wrong? Nothing was emptied; "
                "if storage really is empty, `sync --all --force` applies it"
            )
        with self._lock:
            self._healthy_until = time.monotonic() + self.cache_seconds

    def remember_device(self, *, replace: bool = False) -> None:
        """Record the device of a local root when none is recorded for it (its first
        sync); `replace` (an operator's --force) records the current one whatever it was.
        Never replaced silently: a pass over a stale copy on another device must not make
        that device the expected one."""
        root = self._root()
        if root is None:
            return
        recorded = schema.get_meta(self.engine, _DEVICE_META)
        if not replace and isinstance(recorded, dict) and recorded.get("root") == root:
            return
        probe = self.storage.probe(self.prefix)
        if probe.device is not None and probe.has_objects:
            schema.put_meta(self.engine, _DEVICE_META, {"root": root, "device": probe.device})

    def _root(self) -> str | None:
        storage = self.storage
        return str(Path(storage.root).absolute()) if isinstance(storage, LocalStorage) else None


class StreamingGuard:
    """The mass-deletion guard for per-key syncs: a sliding window of emptying writes.

    `admit(key)` is called before each emptying write of a per-key sync. Within
    `window` seconds, the writes admitted so far plus this one are measured against the
    full pass's thresholds, with the rows that were non-empty before the window as the
    denominator (non-empty now, plus those emptied in it). Admitted writes are recorded in
    `portfolio_sync_emptying`. Count-and-record is atomic: a lock between the threads of
    a process, and between processes an advisory lock (PostgreSQL) or the write lock that
    the transaction's first statement, a DELETE, takes (SQLite).
    """

    def __init__(
        self,
        guard: Guard,
        engine: sa.Engine,
        count_nonempty: Callable[[], int],
        *,
        window: float,
    ) -> None:
        self.guard = guard
        self.engine = engine
        self.count_nonempty = count_nonempty
        self.window = window
        self._lock = threading.Lock()

    def admit(self, key: str) -> str | None:
        """None when the write may go ahead (it is counted); else why it is held."""
        now = schema.now()
        since = now - timedelta(seconds=self.window)
        nonempty = self.count_nonempty()
        table = schema.emptying
        with self._lock, self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(hashtext('portfolio_sync_emptying'))")
                )
            conn.execute(sa.delete(table).where(table.c.at <= since))
            emptied = int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(table.c.at > since)
                ).scalar_one()
            )
            before = nonempty + emptied
            if self.guard.trips(emptied + 1, before):
                return (
                    f"held: {emptied} rows were emptied by single syncs in the last "
                    f"{self.window:g} s, one more would exceed the guard "
                    f"({self.guard.max_share:.0%} of {before} non-empty rows, at least "
                    f"{self.guard.min_rows}); check storage, then `portfolio-sync release`"
                )
            conn.execute(sa.insert(table).values(key=key, at=now))
        return None
