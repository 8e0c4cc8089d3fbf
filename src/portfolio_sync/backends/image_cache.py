"""Image metadata for `image_fields`, read once per file version and kept in our table.

`ImageCache.lookup(objects)` answers from ``portfolio_sync_images`` for every object whose
path, size and mtime match a cached row, and reads only the others: the header (ranged
reads, see :mod:`portfolio_sync.image_probe`) for width/height/type, and the whole file
only when `placeholder` is configured. A no-op pass therefore reads no image bytes, and a
changed file (new size or mtime) is read again. A file that cannot be read as an image
is cached with its error (the element then shows it); a storage failure raises, so the
sync writes nothing and is retried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from portfolio_sync import image_probe
from portfolio_sync.backends import schema
from portfolio_sync.backends.storage import ObjectNotFound, ObjectTooLarge, Storage
from portfolio_sync.backends.supabase_db import SupabaseDbStorage
from portfolio_sync.errors import CatalogError, ConfigError
from portfolio_sync.image_objects import READ_FIELDS
from portfolio_sync.models import ImageMeta, ObjectInfo

logger = logging.getLogger(__name__)

PLACEHOLDER_MAX_BYTES = 64 << 20  # larger files get no placeholder (an error says so)
SVG = "image/svg+xml"  # drawn at any size: no placeholder
_FIELDS = ("path", "size", "version", "width", "height", "type", "placeholder", "error")


def version(obj: ObjectInfo) -> str:
    return f"{obj.mtime:.3f}"


class ImageCache:
    """Metadata of listed images for the fields in `fields`; safe to share between threads."""

    def __init__(self, engine: sa.Engine, storage: Storage, fields: Sequence[str]) -> None:
        self.engine = engine
        self.storage = storage
        self.wanted = READ_FIELDS.intersection(fields)
        if self.wanted and isinstance(storage, SupabaseDbStorage):
            raise ConfigError(
                f"image_fields {', '.join(sorted(self.wanted))} need the files' bytes, and "
                f"{storage.description} only lists objects: use Supabase's S3 endpoint as the "
                "storage URL, or only fields the listing gives (path,url,bytes,etag,uploaded)"
            )
        self.placeholder = "placeholder" in self.wanted
        #: False before `setup`/migration 4 (read-only commands do not migrate): every
        #: lookup then reads the files and keeps nothing.
        self.stored = sa.inspect(engine).has_table(schema.images.name)
        self._lock = threading.Lock()
        #: Files read and bytes read since start (benchmarks and tests watch them).
        self.files_read = 0
        self.bytes_read = 0

    def lookup(
        self, objects: Iterable[ObjectInfo], *, remember: bool = True
    ) -> dict[str, ImageMeta]:
        """Path -> metadata for every object (empty when no configured field needs it).

        Without `remember` (dry runs, `diff`) what had to be read is not cached.
        """
        objects = list(objects)
        if not self.wanted or not objects:
            return {}
        cached = self._read(obj.path for obj in objects) if self.stored else {}
        found: dict[str, ImageMeta] = {}
        stale: list[tuple[ObjectInfo, ImageMeta]] = []
        for obj in objects:
            row = cached.get(obj.path)
            if row is not None and row["size"] == obj.size and row["version"] == version(obj):
                meta = _meta(row)
                if not self.placeholder or _has_placeholder(meta):
                    found[obj.path] = meta
                    continue
            meta, keep = self._inspect(obj)
            found[obj.path] = meta
            if keep:
                stale.append((obj, meta))
        if remember and self.stored:
            self._write(stale)
        return found

    # ---- reading files ------------------------------------------------------------------
    def _inspect(self, obj: ObjectInfo) -> tuple[ImageMeta, bool]:
        """What the file shows, and whether to cache it (not when it vanished meanwhile)."""
        spent = 0

        def read(start: int, length: int) -> bytes:
            nonlocal spent
            data = self.storage.read_range(obj.path, start, length)
            spent += len(data)
            return data

        try:
            probe = image_probe.probe(read, obj.size, obj.path)
            placeholder, error = None, probe.error
            if self.placeholder and error is None and probe.type != SVG:
                data = self._whole(obj)
                spent += len(data or b"")
                placeholder, error = _placeholder(data)
        except ObjectNotFound as exc:  # gone since the listing: the next sync drops it
            return ImageMeta(error=str(exc)), False
        finally:
            with self._lock:
                self.files_read += 1
                self.bytes_read += spent
        if error:
            logger.warning(
                "image could not be read",
                extra={"action": "image_unreadable", "path": obj.path, "error": error},
            )
        meta = ImageMeta(
            width=probe.width,
            height=probe.height,
            type=probe.type,
            placeholder=placeholder,
            error=error,
        )
        return meta, True

    def _whole(self, obj: ObjectInfo) -> bytes | None:
        try:
            return self.storage.read(obj.path, max_bytes=PLACEHOLDER_MAX_BYTES)
        except ObjectTooLarge:
            return None

    # ---- the table ----------------------------------------------------------------------
    def _read(self, paths: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Cached rows of `paths`: one statement, through the DBAPI cursor, since this runs
        once per row of every full pass. SQLite scans the primary key from the lowest to
        the highest path (one folder's images are adjacent in its byte order); PostgreSQL
        looks the paths up as one array (its text order depends on the collation)."""
        wanted = {p for p in paths if _storable(p)}
        if not wanted:
            return {}
        head = f"SELECT {', '.join(_FIELDS)} FROM {schema.images.name} WHERE "
        params: tuple[Any, ...]
        if self.engine.dialect.name == "postgresql":
            sql, params = head + "path = ANY(%s)", (list(wanted),)
        else:
            sql, params = head + "path >= ? AND path <= ?", (min(wanted), max(wanted))
        found: dict[str, dict[str, Any]] = {}
        try:
            with self.engine.connect() as conn:
                cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
                try:
                    cursor.execute(sql, params)
                    for record in cursor.fetchall():
                        if record[0] in wanted:
                            found[record[0]] = dict(zip(_FIELDS, record, strict=True))
                finally:
                    cursor.close()
        except (sa.exc.SQLAlchemyError, self.engine.dialect.loaded_dbapi.Error) as exc:
            raise CatalogError(f"reading the image metadata cache failed: {exc}") from exc
        return found

    def _write(self, fresh: Sequence[tuple[ObjectInfo, ImageMeta]]) -> None:
        rows = [
            (
                obj.path,
                obj.size,
                version(obj),
                meta.width,
                meta.height,
                meta.type,
                meta.placeholder,
                meta.error,
                schema.now(),
            )
            for obj, meta in fresh
            if _storable(obj.path)
        ]
        if not rows:
            return
        try:
            with self.engine.begin() as conn:
                schema.upsert_many(conn, schema.images, (*_FIELDS, "checked_at"), rows)
        except sa.exc.SQLAlchemyError as exc:
            raise CatalogError(f"writing the image metadata cache failed: {exc}") from exc


def _placeholder(data: bytes | None) -> tuple[str | None, str | None]:
    """(placeholder, error) from the whole file's bytes (None: too large to read)."""
    if data is None:
        return None, f"no placeholder: the file is over {PLACEHOLDER_MAX_BYTES} bytes"
    try:
        return image_probe.placeholder(data), None
    except Exception as exc:  # a corrupt body may trip any decoder error
        return None, f"cannot decode the image for its placeholder: {exc}"


def _has_placeholder(meta: ImageMeta) -> bool:
    """Whether the cached entry answers for `placeholder` too (SVGs never get one)."""
    return meta.placeholder is not None or meta.error is not None or meta.type == SVG


def _meta(row: dict[str, Any]) -> ImageMeta:
    return ImageMeta(
        width=row["width"],
        height=row["height"],
        type=row["type"],
        placeholder=row["placeholder"],
        error=row["error"],
    )


def _storable(path: str) -> bool:
    """Local names that are not UTF-8 cannot be keys of a text column: read every time."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
