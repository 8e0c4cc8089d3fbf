"""What the console's templates show, shaped from `Runtime.portfolio` results (no I/O).

A row's state badge, its thumbnails, and the portfolio page's side-by-side comparison of
the row's values with the folder's listing. Pure functions of their inputs, so the rules
(what counts as drift, which images can be previewed) are tested without a server.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from portfolio_sync.layout import Layout, natural_key
from portfolio_sync.web.templating import path_url

THUMBNAILS = 6


@dataclass(frozen=True, slots=True, kw_only=True)
class Badge:
    tone: Literal["good", "warn", "bad"]
    text: str
    title: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Thumb:
    src: str
    name: str
    title: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Line:
    """One image on the portfolio page: in the row, in the folder, or both."""

    state: Literal["both", "add", "remove"]
    value: str | None  # the row's value (None: missing from the row)
    path: str | None  # the folder's file (None: gone from the folder)
    thumb: Thumb | None


def badge(found: dict[str, Any], layout: Layout) -> Badge:
    if not found["row_exists"]:
        return Badge(tone="warn", text="no row", title="a folder without a row (orphan)")
    if found.get("invalid"):
        return Badge(tone="bad", text="invalid value", title=found["invalid"])
    if found["in_sync"]:
        return Badge(tone="good", text="in sync")
    have = {v for value in found["columns"].values() for v in shown(value, layout)}
    rendered = {layout.render_path(p) for paths in found["listing"].values() for p in paths}
    missing, extra = len(rendered - have), len(have - rendered)
    if not missing and not extra:
        return Badge(tone="warn", text="out of order", title="same images, another order")
    return Badge(
        tone="warn",
        text=f"out of sync +{missing} \u2212{extra}",
        title=f"{missing} image(s) missing from the row, {extra} listed but not in the folder",
    )


def thumb(base: str, layout: Layout, path: str) -> Thumb:
    """A preview of a stored file: its public URL if there is one, else `/files/…`."""
    src = layout.render_path(path) if layout.public_url else f"{base}/files/{path_url(path)}"
    return Thumb(src=src, name=path.rpartition("/")[2], title=path)


def row(found: dict[str, Any], layout: Layout, base: str) -> dict[str, Any]:
    """A main-page row: badge, counts per collection, the first thumbnails."""
    if "failed" in found:
        return {"key": found["key"], "failed": found["failed"]}
    listing: dict[str, list[str]] = found["listing"]
    paths = sorted((p for got in listing.values() for p in got), key=natural_key)
    values = [v for value in found["columns"].values() for v in (value or [])]
    return {
        "key": found["key"],
        "badge": badge(found, layout),
        "counts": [(col, len(got)) for col, got in listing.items()],
        "row_count": len(values),
        "folder_count": len(paths),
        "thumbs": [thumb(base, layout, p) for p in paths[:THUMBNAILS]],
        "more": max(0, len(paths) - THUMBNAILS),
        "last_synced_at": found.get("last_synced_at"),
        "last_error": found.get("last_error") or "",
    }


def shown(values: list[Any] | None, layout: Layout) -> list[str]:
    """A column's elements as the strings they stand for: image objects (`image_fields`)
    by their path, rendered like a string element would be."""
    return [layout.render_path(v["path"]) if isinstance(v, dict) else v for v in values or []]


def compare(values: list[Any] | None, paths: list[str], layout: Layout, base: str) -> list[Line]:
    """The row's values beside the folder's files, matched by rendered value.

    Files come in the folder's natural order with their row value if the row has it
    ("both") or not ("add": the next sync adds it); values no file renders to follow
    ("remove": the next sync drops them). Removed values get no preview: the file is gone.
    """
    values = shown(values, layout)
    have = set(values)
    lines = []
    rendered = set()
    for path in paths:
        value = layout.render_path(path)
        rendered.add(value)
        present = value in have
        lines.append(
            Line(
                state="both" if present else "add",
                value=value if present else None,
                path=path,
                thumb=thumb(base, layout, path),
            )
        )
    lines.extend(
        Line(state="remove", value=v, path=None, thumb=None) for v in values if v not in rendered
    )
    return lines
