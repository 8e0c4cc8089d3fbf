"""In-memory twins of the package's interfaces, for unit tests (no I/O).

`MemoryStorage` behaves like the real `Storage` backends in everything the reconciler
relies on: byte-exact paths (no Unicode normalisation), `iter_folders` grouped by the first
path segment and ordered by `storage.folder_order`, and outages raised as `StorageError`
(never reported as an empty folder). Like procrastinate's `InMemoryConnector`, it is part of
the package so that tests of every layer share one well-tested fake.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from itertools import count
from typing import TYPE_CHECKING

from portfolio_sync.backends.storage import Group, ObjectNotFound, ObjectTooLarge, folder_order
from portfolio_sync.errors import StorageError
from portfolio_sync.models import ObjectInfo, RootProbe

if TYPE_CHECKING:
    from portfolio_sync.backends.storage import Storage


def _path_order(path: str) -> bytes:
    # The order S3 lists keys in: UTF-8 bytes, surrogate-escaped names kept byte-exact.
    return path.encode("utf-8", "surrogateescape")


class MemoryStorage:
    """A `Storage` over a dict `path -> (size, mtime)`.

    - `put(path, size=..., mtime=...)` adds or replaces an object; without `mtime`, a clock
      that only moves forward is used, so "uploaded" order follows the order of `put` calls.
    - `delete(path)` removes an object; deleting a missing path is a no-op, as on S3.
    - `fail_with`: while set, every call (`check`, `list_prefix`, iterating `iter_folders`)
      raises `StorageError` (the exception itself when it already is one, else one chained
      `from` it). With `fail_after=N`, `iter_folders` first yields up to N folders, then
      raises: a listing that breaks mid-stream.
    - `requests` records each call as `(method, prefix)` so tests can count listings.
    - `read(path)` returns the bytes given to `put(..., data=...)`, else `size` bytes 0xFF;
      `read_range(path, start, n)` n of them from `start`.
    """

    def __init__(
        self,
        objects: Mapping[str, tuple[int, float]] | None = None,
        *,
        description: str = "memory storage",
    ) -> None:
        self.objects: dict[str, tuple[int, float]] = {}
        self.description = description
        self.fail_with: Exception | None = None
        self.fail_after: int | None = None
        self.requests: list[tuple[str, str]] = []
        self.data: dict[str, bytes] = {}
        self.closed = False
        self._clock = count(1)
        for path, (size, mtime) in (objects or {}).items():
            self.put(path, size=size, mtime=mtime)

    # ---- test controls -----------------------------------------------------------------
    def put(
        self, path: str, *, size: int = 1, mtime: float | None = None, data: bytes | None = None
    ) -> ObjectInfo:
        """Add or replace the object at `path` (relative, `/`-separated, no empty segment).

        With `data`, `read` returns it and `size` is its length.
        """
        if not path or path.startswith("/") or path.endswith("/") or "//" in path:
            raise ValueError(f"not an object path: {path!r}")
        self.data.pop(path, None)
        if data is not None:
            size = len(data)
            self.data[path] = data
        if size < 0:
            raise ValueError(f"negative size for {path!r}")
        stamp = float(next(self._clock)) if mtime is None else mtime
        self.objects[path] = (size, stamp)
        return ObjectInfo(path=path, size=size, mtime=stamp)

    def delete(self, path: str) -> None:
        self.objects.pop(path, None)
        self.data.pop(path, None)

    def _raise_if_failing(self) -> None:
        error = self.fail_with
        if error is None:
            return
        if isinstance(error, StorageError):
            raise error
        raise StorageError(f"cannot list {self.description}: {error}") from error

    def _snapshot(self, prefix: str) -> list[ObjectInfo]:
        found = [
            ObjectInfo(path=path, size=size, mtime=mtime)
            for path, (size, mtime) in self.objects.items()
            if path.startswith(prefix)
        ]
        found.sort(key=lambda obj: _path_order(obj.path))
        return found

    # ---- the Storage protocol ----------------------------------------------------------
    def check(self) -> None:
        self.requests.append(("check", ""))
        self._raise_if_failing()

    def probe(self, prefix: str) -> RootProbe:
        """No device (like S3); `has_objects` when anything is stored under `prefix`."""
        self.requests.append(("probe", prefix))
        self._raise_if_failing()
        return RootProbe(device=None, has_objects=any(p.startswith(prefix) for p in self.objects))

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix` at any depth, in UTF-8 byte order of the path."""
        self.requests.append(("list_prefix", prefix))
        self._raise_if_failing()
        return self._snapshot(prefix)

    def iter_folders(self, prefix: str) -> Iterator[Group]:
        """(name, objects) per first path segment under `prefix`, in `folder_order`.

        Files directly in `prefix` are skipped. The listing is a snapshot taken when
        iteration starts, so tests may change the storage while consuming it.
        """
        self.requests.append(("iter_folders", prefix))
        return self._iter_folders(prefix)

    def _iter_folders(self, prefix: str) -> Iterator[Group]:
        if self.fail_after is None:
            self._raise_if_failing()
        groups: dict[str, list[ObjectInfo]] = {}
        start = len(prefix)
        for obj in self._snapshot(prefix):
            name, sep, _ = obj.path[start:].partition("/")
            if sep:
                groups.setdefault(name, []).append(obj)
        names = sorted(groups, key=folder_order)
        if self.fail_after is not None:
            names = names[: self.fail_after]
        for name in names:
            yield name, groups[name]
        if self.fail_after is not None:
            self._raise_if_failing()

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        self.requests.append(("read", path))
        self._raise_if_failing()
        if path not in self.objects:
            raise ObjectNotFound(f"no object {path} in {self.description}")
        size = self.objects[path][0]
        if max_bytes is not None and size > max_bytes:
            raise ObjectTooLarge(f"{path} is {size} bytes (limit {max_bytes})")
        return self.data.get(path, b"\xff" * size)

    def read_range(self, path: str, start: int, length: int) -> bytes:
        self.requests.append(("read_range", path))
        self._raise_if_failing()
        if path not in self.objects:
            raise ObjectNotFound(f"no object {path} in {self.description}")
        return self.data.get(path, b"\xff" * self.objects[path][0])[start : start + length]

    def close(self) -> None:
        self.closed = True


if TYPE_CHECKING:
    _conforms: Storage = MemoryStorage()  # mypy proves the twin matches the protocol

__all__ = ["MemoryStorage"]
