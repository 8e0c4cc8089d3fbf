"""Images as objects: the column value when `image_fields` is set. Pure: no I/O.

Each element is a JSON object holding the configured fields of one listed image, in the
configured order, plus whatever else the row's editors put in the element of the same
`path` (`alt`, `caption`, `featured`, …): those are kept across syncs, and move with the
image when `preserve` order keeps the row's order. The known field names (and `error`,
set when the image could not be read) are portfolio-sync's: it rewrites them on every
write and drops the ones no longer configured.

Values: `path` the storage path, `url` its rendering (the public URL, else the path),
`bytes` the size, `etag` a validator that changes when the file changes (hex size and
mtime in ms, the same on disk and on S3), `uploaded` the mtime as ISO 8601 UTC, `width`,
`height`, `type` and `placeholder` what reading the image told (`ImageMeta`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from portfolio_sync.config import IMAGE_FIELDS
from portfolio_sync.layout import Layout
from portfolio_sync.models import ImageMeta, ObjectInfo

RESERVED = frozenset(IMAGE_FIELDS) | {"error"}
READ_FIELDS = frozenset({"width", "height", "type", "placeholder"})  # need the file's bytes


def identity(element: Any) -> Any:
    """What names an element: its `path` (a string element is its own path)."""
    return element.get("path") if isinstance(element, dict) else element


def etag(obj: ObjectInfo) -> str:
    return f'W/"{obj.size:x}-{round(obj.mtime * 1000):x}"'


def element(
    obj: ObjectInfo,
    meta: ImageMeta | None,
    layout: Layout,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The object for `obj`: configured fields, then `extra` (the editors' own fields)."""
    out: dict[str, Any] = {}
    for name in layout.image_fields:
        if name == "path":
            out["path"] = obj.path
        elif name == "url":
            out["url"] = layout.render_path(obj.path)
        elif name == "bytes":
            out["bytes"] = obj.size
        elif name == "etag":
            out["etag"] = etag(obj)
        elif name == "uploaded":
            stamp = datetime.fromtimestamp(obj.mtime, UTC)
            out["uploaded"] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        elif meta is not None:
            value = getattr(meta, name)
            if value is not None:
                out[name] = value
    if meta is not None and meta.error:
        out["error"] = meta.error
    for key, value in (extra or {}).items():
        if key not in RESERVED:
            out[key] = value
    return out


@functools.cache
def _by_path(layout: Layout) -> Layout:
    """The same ordering rules over paths (a public URL renders only into `url`)."""
    return replace(layout, public_url=None, image_fields=())


def render(
    images: Sequence[ObjectInfo],
    current: Sequence[Any] | None,
    meta: Mapping[str, ImageMeta],
    layout: Layout,
) -> list[dict[str, Any]]:
    """The column value for these images: one object each, in the order policy's order
    (`preserve` keeps the row's order of paths)."""
    previous: dict[Any, Mapping[str, Any]] = {}
    for item in current or ():
        if isinstance(item, dict):
            previous.setdefault(item.get("path"), item)
    current_paths = [identity(item) for item in current or ()]
    paths = _by_path(layout).render(images, [p for p in current_paths if isinstance(p, str)])
    by_path = {obj.path: obj for obj in images}
    return [element(by_path[path], meta.get(path), layout, previous.get(path)) for path in paths]


def rendering_if_changed(
    images: Sequence[ObjectInfo],
    current: Sequence[Any] | None,
    meta: Mapping[str, ImageMeta],
    layout: Layout,
) -> list[dict[str, Any]] | None:
    """`render(...)`, or None when the row already holds exactly that (no write)."""
    rendered = render(images, current, meta, layout)
    return None if current is not None and rendered == list(current) else rendered
