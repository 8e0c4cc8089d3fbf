"""Listing storage: one `Storage` interface, a local-folder and an S3-compatible backend
here, and Supabase Storage read from its `storage.objects` table in `supabase_db`.

Every backend returns paths relative to the storage root, `/`-separated and byte-exact
(no Unicode normalisation: NFC and NFD names are different objects). A listing either
completes or raises `StorageError`; an error is never reported as an empty folder. In a
listing of the whole tree (`iter_folders`), a fault of one portfolio folder (a file in its
place, unreadable, a loop) comes as a `FolderFault` in that folder's place, so the bulk
pass records it for that portfolio and goes on with the others.

Local folders are listed with `os.scandir` rather than obstore's LocalStore: measured here
it is ~10x faster on 100k files, and LocalStore silently skips names ending in `#<digits>`.
"""

from __future__ import annotations

import logging
import marshal
import os
import stat
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from datetime import timedelta
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from portfolio_sync.backends.folder_walker import WalkError, folder_names, list_folder
from portfolio_sync.backends.folder_walker import folder_order as folder_order  # re-exported
from portfolio_sync.config import SUPABASE_DB_SCHEME
from portfolio_sync.errors import ConfigError, StorageError
from portfolio_sync.explain import storage_error
from portfolio_sync.models import ObjectInfo, RootProbe

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import sqlalchemy as sa

    from portfolio_sync.config import Settings

logger = logging.getLogger(__name__)


class FolderFault(StorageError):
    """One portfolio folder cannot be listed; an error of that portfolio, not of the pass."""


Group = tuple[str, list[ObjectInfo] | FolderFault]


class ObjectNotFound(StorageError):
    """No object at that path."""


class ObjectTooLarge(StorageError):
    """The object is larger than the caller accepts."""


class Storage(Protocol):
    """What the reconciler needs from storage."""

    description: str

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        """Every object under `prefix` (a folder path ending in `/`), at any depth."""
        ...

    def iter_folders(self, prefix: str) -> Iterator[Group]:
        """(name, objects) for each sub-folder of `prefix`, in `folder_order`.

        Objects at any depth of each folder are included; files directly in `prefix`
        are not. Memory is bounded by one folder, not the tree. A folder that cannot be
        listed comes as (name, FolderFault); a failure of the whole listing raises.
        """
        ...

    def check(self) -> None:
        """Raise StorageError unless the root can be listed."""
        ...

    def probe(self, prefix: str) -> RootProbe:
        """The root's device (local) and whether `prefix` holds anything, for the health
        check before an emptying write; StorageError if the root is missing or silent."""
        ...

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        """The whole object at `path` (a listed path, relative to the root).

        Raises ObjectNotFound when there is none (or `path` points outside the storage),
        ObjectTooLarge when it exceeds `max_bytes` (checked before the body is read),
        StorageError otherwise. Meant for previews, not for bulk transfer.
        """
        ...

    def read_range(self, path: str, start: int, length: int) -> bytes:
        """`length` bytes from offset `start` of the listed object at `path` (fewer at its
        end): a ranged GET on S3, so reading an image header costs its header only. Raises
        ObjectNotFound or StorageError like `read`."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class SnapshotListing(Protocol):
    """A storage whose listing is a query of a database (`supabase_db`): when that is the
    catalog's database, a per-key sync reads the row and the folder in one transaction."""

    def shares(self, engine: sa.Engine) -> bool:
        """Whether listings can run in transactions of `engine` (the catalog's)."""
        ...

    def list_prefix_in(self, conn: sa.Connection, prefix: str) -> list[ObjectInfo]:
        """`list_prefix`, in the transaction `conn` has open."""
        ...


SKIPPED_FOLDERS = 1000  # portfolio folders whose skipped names `LocalStorage` remembers
SKIPPED_SHOWN = 20  # names remembered per folder


class LocalStorage:
    """A folder on disk; the embedded default.

    `depth`: how many levels of sub-folders of a portfolio folder are read (None: all).
    `skipped_names` counts names that were not valid UTF-8 (skipped, with a warning);
    `skipped_in` keeps them (escaped, the first `SKIPPED_SHOWN`) per portfolio folder as its
    last listing found them, for the console: only the `SKIPPED_FOLDERS` folders listed
    last, as few folders ever have such names and a listing without any forgets them.
    """

    def __init__(self, root: Path, *, depth: int | None = None) -> None:
        self.root = root
        self.depth = depth
        self.description = f"folder {root}"
        self.skipped_names = 0
        self.skipped_in: dict[str, list[str]] = {}

    def _dir(self, prefix: str) -> str:
        return os.path.join(self.root, *prefix.strip("/").split("/")) if prefix else str(self.root)

    def check(self) -> None:
        if not self.root.is_dir():
            raise StorageError(f"storage folder {self.root} does not exist or is not a folder")

    def probe(self, prefix: str) -> RootProbe:
        try:
            st = os.stat(self.root)
        except OSError as exc:
            raise StorageError(f"storage folder {self.root} is not there: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode):
            raise StorageError(f"storage folder {self.root} is not a folder")
        try:
            with os.scandir(self._dir(prefix)) as entries:
                has_objects = next(entries, None) is not None
        except FileNotFoundError:
            has_objects = False
        except OSError as exc:
            raise StorageError(f"cannot list {self._dir(prefix)}: {exc.strerror}") from exc
        return RootProbe(device=st.st_dev, has_objects=has_objects)

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        self.check()
        return self._list(self._dir(prefix), prefix)

    def iter_folders(self, prefix: str) -> Iterator[Group]:
        self.check()
        top = self._dir(prefix)
        if _helper_usable() and _has_many_folders(top):
            yield from self._walk_in_helper(top, prefix)
            return
        skipped: list[str] = []
        try:
            names = folder_names(top, skipped)
        except WalkError as exc:
            raise StorageError(str(exc)) from exc
        self._skipped(top, skipped)
        for name in names:
            objects: list[ObjectInfo] | FolderFault
            try:
                objects = self._list(os.path.join(top, name), f"{prefix}{name}/")
            except FolderFault as fault:
                objects = fault
            yield name, objects

    def _list(self, directory: str, rel: str) -> list[ObjectInfo]:
        """The files of one portfolio folder (see `folder_walker.list_folder`)."""
        paths: list[str] = []
        sizes: list[int] = []
        mtimes: list[float] = []
        skipped: list[str] = []
        try:
            list_folder(directory, rel, self.depth, paths, sizes, mtimes, skipped)
        except WalkError as exc:
            raise FolderFault(str(exc)) from exc
        finally:
            self._skipped(directory, skipped, rel)
        return make_objects(paths, sizes, mtimes)

    def _skipped(self, folder: str, names: list[str], rel: str | None = None) -> None:
        """Warn about names that are not valid UTF-8: no row can hold them as text; keep
        them for the portfolio folder `rel`, if the listing was of one."""
        if rel is not None:
            self.skipped_in.pop(rel, None)
            if names:
                self.skipped_in[rel] = names[:SKIPPED_SHOWN]
                if len(self.skipped_in) > SKIPPED_FOLDERS:
                    self.skipped_in.pop(next(iter(self.skipped_in)))  # the oldest
        if not names:
            return
        self.skipped_names += len(names)
        logger.warning(
            "names that are not valid UTF-8 skipped",
            extra={
                "action": "names_skipped",
                "folder": folder.encode("utf-8", "surrogateescape").decode(
                    "utf-8", "backslashreplace"
                ),
                "names": names[:20],
                "count": len(names),
            },
        )

    def _walk_in_helper(self, top: str, prefix: str) -> Iterator[Group]:
        """`iter_folders(prefix)` of the folder `top`, listed ahead by folder_walker.py."""
        depth = -1 if self.depth is None else self.depth
        for name, objects, error, skipped in _helper_frames(top, prefix, depth):
            self._skipped(
                os.path.join(top, name) if name else top,
                skipped,
                f"{prefix}{name}/" if name else None,
            )
            if name:
                yield name, objects if error is None else FolderFault(error)

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        return self._read(path, None, max_bytes)

    def read_range(self, path: str, start: int, length: int) -> bytes:
        return self._read(path, (start, length), None)

    def _read(self, path: str, span: tuple[int, int] | None, max_bytes: int | None) -> bytes:
        """The (start, length) `span` (None: all) of the regular file `path` in the root."""
        # Resolving (symlinks included) before the containment check is what stops `..`
        # segments and links that lead out of the root.
        try:
            root = self.root.resolve()
            target = (root / path).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: symlink loop (Python < 3.13)
            raise StorageError(f"cannot read {path} in {self.description}: {exc}") from exc
        if not path or not target.is_relative_to(root) or target == root:
            raise ObjectNotFound(f"{path!r} is not a file in {self.description}")
        try:
            # O_NONBLOCK: opening a FIFO must not hang; fstat then rejects anything irregular.
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(f"no file {path} in {self.description}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read {path} in {self.description}: {exc}") from exc
        with os.fdopen(fd, "rb") as handle:
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise ObjectNotFound(f"{path} in {self.description} is not a regular file")
                if max_bytes is not None and st.st_size > max_bytes:
                    raise ObjectTooLarge(f"{path} is {st.st_size} bytes (limit {max_bytes})")
                if span is not None:
                    handle.seek(span[0])
                    return handle.read(span[1])
                data = handle.read() if max_bytes is None else handle.read(max_bytes + 1)
            except OSError as exc:
                raise StorageError(f"cannot read {path} in {self.description}: {exc}") from exc
        if max_bytes is not None and len(data) > max_bytes:  # grew while we read it
            raise ObjectTooLarge(f"{path} is over {max_bytes} bytes")
        return data

    def close(self) -> None:
        pass


# A frozen dataclass's __init__ sets each field through object.__setattr__, which costs
# more than listing the file did; the bulk pass builds one ObjectInfo per file, so the
# listing fills the slots directly. The result is the same ObjectInfo in every respect.
_new_object = object.__new__
_set_path = vars(ObjectInfo)["path"].__set__
_set_size = vars(ObjectInfo)["size"].__set__
_set_mtime = vars(ObjectInfo)["mtime"].__set__


def _object(path: str, size: int, mtime: float) -> ObjectInfo:
    obj: ObjectInfo = _new_object(ObjectInfo)
    _set_path(obj, path)
    _set_size(obj, size)
    _set_mtime(obj, mtime)
    return obj


def make_objects(paths: list[str], sizes: list[int], mtimes: list[float]) -> list[ObjectInfo]:
    """ObjectInfo for each (path, size, mtime) of three lists, with the loops in C."""
    objects: list[ObjectInfo] = list(map(_new_object, repeat(ObjectInfo, len(paths))))
    for setter, values in ((_set_path, paths), (_set_size, sizes), (_set_mtime, mtimes)):
        deque(map(setter, objects, values), maxlen=0)
    return objects


# From this many folders on, `iter_folders` lists them in a helper process (see
# folder_walker.py) while the caller works on the folders already listed.
HELPER_MIN_FOLDERS = 500
_WALKER = str(Path(__file__).with_name("folder_walker.py"))


def _has_many_folders(top: str) -> bool:
    """Whether `top` has at least HELPER_MIN_FOLDERS sub-folders; stops counting there."""
    count = 0
    try:
        with os.scandir(top) as entries:
            for entry in entries:
                if entry.is_dir():
                    count += 1
                    if count >= HELPER_MIN_FOLDERS:
                        return True
    except OSError:  # listed again in process, which reports the error
        return False
    return False


def _helper_usable() -> bool:
    """A second core to run on, and an interpreter to start (not an embedding host)."""
    executable = os.path.basename(sys.executable or "")
    return _cores() > 1 and executable.lower().startswith("python")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _widen_pipe(fd: int) -> None:
    """Let the helper run up to ~1 MB ahead (Linux); the default 64 KB pipe would make
    it wait for the caller after every frame, which serialises the two again."""
    set_size = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if set_size is None:
        return
    for size in (1 << 20, 1 << 18):
        try:
            fcntl.fcntl(fd, set_size, size)
            return
        except OSError:  # above /proc/sys/fs/pipe-max-size for this user
            continue


def _helper_frames(
    top: str, prefix: str, depth: int
) -> Iterator[tuple[str, list[ObjectInfo], str | None, list[str]]]:
    """(name, objects, error, skipped names) per folder, from folder_walker.py's frames;
    the name "" carries the skipped names of `top` itself."""
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _WALKER, top, prefix, str(depth)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except OSError as exc:
        raise StorageError(f"cannot start the folder listing helper: {exc}") from exc
    assert proc.stdout is not None and proc.stderr is not None
    _widen_pipe(proc.stdout.fileno())
    try:
        read = proc.stdout.read
        while True:
            head = read(5)
            size = int.from_bytes(head[1:], "little") if len(head) == 5 else -1
            data = read(size) if size >= 0 else b""
            if size < 0 or len(data) < size:  # it died, possibly in the middle of a frame
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                detail = proc.stderr.read().decode(errors="replace").strip()[-2000:]
                raise StorageError(
                    f"the folder listing helper stopped (exit {proc.returncode}) while listing "
                    f"{top}: {detail or 'no output'}"
                )
            kind = head[:1]
            payload = marshal.loads(data)
            if kind == b"Z":
                return
            if kind == b"E":
                raise StorageError(payload)
            for name, paths, sizes, mtimes, error, skipped in payload:
                yield name, make_objects(paths, sizes, mtimes), error, skipped
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()


class S3Storage:
    """An S3-compatible bucket (AWS S3, MinIO, Supabase Storage, R2) through obstore.

    obstore's synchronous API is used on purpose: its async API inside `asyncio.run` was
    seen to abort the process at exit, and callers run listings in threads anyway.
    """

    page_size = 1000  # the S3 maximum; fewer requests per listing
    list_workers = 8  # concurrent requests of a long listing (`iter_folders`)
    split_after = 4  # full pages listed in sequence before key ranges are listed in parallel

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        session_token: str | None = None,
    ) -> None:
        from obstore.store import S3Store

        config: dict[str, object] = {"region": region or "us-east-1"}
        if endpoint:
            config["endpoint"] = endpoint
            config["virtual_hosted_style_request"] = False
        if access_key_id and secret_access_key:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
            if session_token:
                config["token"] = session_token
        client_options = {"allow_http": True} if endpoint and endpoint.startswith("http:") else {}
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.endpoint = endpoint
        self.location = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.description = f"s3://{bucket}/{self.prefix}".rstrip("/") + (
            f" at {endpoint}" if endpoint else ""
        )
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            config=config,  # type: ignore[arg-type]
            client_options=client_options,  # type: ignore[arg-type]
            retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=30)},
        )

    def _pages(
        self, prefix: str, *, after: str | None = None, pages: int | None = None
    ) -> Iterator[list[ObjectInfo]]:
        """Pages of the listing of ``prefix`` (keys above ``after``), at most ``pages``."""
        import obstore

        try:
            stream = obstore.list(
                self._store, prefix=prefix or None, offset=after, chunk_size=self.page_size
            )
            for count, chunk in enumerate(stream, 1):
                yield [
                    ObjectInfo(
                        path=meta["path"],
                        size=meta["size"],
                        mtime=meta["last_modified"].timestamp(),
                    )
                    for meta in chunk
                ]
                if count == pages:
                    return
        except StorageError:
            raise
        except Exception as exc:  # obstore raises its own tree plus OSError/ValueError
            raise self._explained(exc) from exc

    def _explained(self, exc: BaseException) -> StorageError:
        """One line naming the bucket and endpoint; the same for every key, so repeats of
        one outage are recognisably the same error (and rate-limited in the log)."""
        return storage_error(exc, where=self.location, endpoint=self.endpoint)

    def _all_pages(self, prefix: str) -> Iterator[list[ObjectInfo]]:
        """Every page of ``prefix``: in sequence for a short listing; past ``split_after``
        full pages, key ranges in parallel (:mod:`portfolio_sync.backends.s3_ranges`)."""
        from portfolio_sync.backends.s3_ranges import parallel_pages

        last: str | None = None
        for count, page in enumerate(self._pages(prefix), 1):
            yield page
            if len(page) < self.page_size:
                return
            last = page[-1].path
            if count == self.split_after and self.list_workers > 1:
                break
        else:
            return

        def fetch(after: str | None) -> list[ObjectInfo]:
            return next(iter(self._pages(prefix, after=after, pages=1)), [])

        yield from parallel_pages(
            fetch,
            workers=self.list_workers,
            start_after=last,
            floor=prefix,
            page_size=self.page_size,
        )

    def check(self) -> None:
        import obstore

        try:
            obstore.list_with_delimiter(self._store, prefix=None)
        except Exception as exc:
            raise self._explained(exc) from exc

    def probe(self, prefix: str) -> RootProbe:
        """One listing request: the first page of the prefix (its first object is enough)."""
        import obstore

        try:
            for chunk in obstore.list(self._store, prefix=prefix or None, chunk_size=1):
                return RootProbe(device=None, has_objects=bool(chunk))
        except Exception as exc:  # obstore raises its own tree plus OSError/ValueError
            raise StorageError(f"cannot reach {self.description}: {exc}") from exc
        return RootProbe(device=None, has_objects=False)

    def list_prefix(self, prefix: str) -> list[ObjectInfo]:
        return [obj for page in self._pages(prefix) for obj in page]

    def iter_folders(self, prefix: str) -> Iterator[Group]:
        # One listing of the whole prefix: S3 returns keys in UTF-8 byte order, so each
        # folder's objects arrive together and folders arrive in `folder_order` (key
        # ranges listed in parallel come out in that same order).
        start = len(prefix)
        current: str | None = None
        objects: list[ObjectInfo] = []
        for page in self._all_pages(prefix):
            for obj in page:
                name, sep, _ = obj.path[start:].partition("/")
                if not sep:
                    continue
                if name != current:
                    if current is not None:
                        yield current, objects
                    current, objects = name, []
                objects.append(obj)
        if current is not None:
            yield current, objects

    def read(self, path: str, *, max_bytes: int | None = None) -> bytes:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            result = obstore.get(self._store, path)
            size = result.meta["size"]
            if max_bytes is not None and size > max_bytes:
                raise ObjectTooLarge(f"{path} is {size} bytes (limit {max_bytes})")
            return bytes(result.bytes())
        except StorageError:
            raise
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(f"no object {path} in {self.description}") from exc
        except Exception as exc:  # obstore raises its own tree plus OSError/ValueError
            raise self._explained(exc) from exc

    def read_range(self, path: str, start: int, length: int) -> bytes:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            return bytes(obstore.get_range(self._store, path, start=start, length=length))
        except (NotFoundError, FileNotFoundError) as exc:
            raise ObjectNotFound(f"no object {path} in {self.description}") from exc
        except Exception as exc:  # obstore raises its own tree plus OSError/ValueError
            raise StorageError(f"cannot read {path} from {self.description}: {exc}") from exc

    def close(self) -> None:
        pass


def open_storage(settings: Settings, *, database: sa.Engine | None = None) -> Storage:
    """Pick the backend from the storage URL (a path, file://…, s3://bucket[/prefix] or
    supabase-db://bucket[/prefix]). `database` is the catalog's engine: `supabase-db`
    reads `storage.objects` through it unless `storage_database_url` names another one.
    """
    url = settings.storage_url
    parts = urlsplit(url)
    if parts.scheme == SUPABASE_DB_SCHEME:
        from portfolio_sync.backends.supabase_db import open_supabase_db

        return open_supabase_db(
            unquote(parts.netloc),
            unquote(parts.path),
            engine=database,
            database_url=settings.storage_database_url,
        )
    if parts.scheme == "s3":
        return S3Storage(
            parts.netloc,
            prefix=unquote(parts.path),
            endpoint=settings.s3_endpoint,
            region=settings.aws_region,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=settings.aws_secret_access_key,
            session_token=settings.aws_session_token,
        )
    depth = None if settings.recursive else _depth(settings)
    if parts.scheme == "file":
        return LocalStorage(Path(unquote(parts.path)), depth=depth)
    if parts.scheme and len(parts.scheme) > 1:
        raise ConfigError(f"unsupported storage URL {url!r}")
    return LocalStorage(Path(url), depth=depth)


def _depth(settings: Settings) -> int:
    """Sub-folder levels of a portfolio folder that hold images when not recursive:
    0 for `{key}/`, 1 for `{key}/before_images/`."""
    return max(t.partition("{key}/")[2].count("/") for t in settings.collection_map().values())
