"""The status dashboard: one self-contained HTML page, and the stored images it previews.

`GET /` shows where the service points, the queue, the last full pass, a key-ordered page
of portfolios (each compared with its folder, as `sync --dry-run` would), recent changes
and errors. `GET /files/{path}` serves one stored image so thumbnails work for private
buckets too. Both only read; the `Runtime` comes from `request.app.state.runtime`.

The HTML is built with plain strings and `html.escape` rather than a template engine:
the page is small, and keys, paths and error texts are data from outside (a key may well
be `<script>`), so every interpolation goes through `_e` and the page ships a CSP whose
script nonce stops anything that slipped through from running.
"""

from __future__ import annotations

import asyncio
import mimetypes
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from html import escape
from importlib.resources import files
from string import Template
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from portfolio_sync.backends import schema
from portfolio_sync.backends.catalog import Catalog
from portfolio_sync.backends.storage import ObjectNotFound, ObjectTooLarge
from portfolio_sync.errors import CatalogError, PortfolioSyncError, StorageError
from portfolio_sync.layout import natural_key

if TYPE_CHECKING:
    from portfolio_sync.runtime import Runtime

router = APIRouter()

PAGE_SIZE = 50
PAGE_MAX = 200
THUMBNAILS = 6
MAX_FILE_BYTES = 20 << 20  # previews only: large originals should not pass through us
REFRESH_SECONDS = 10
_PARALLEL_ROWS = 8  # per-row reads at once; below the database pool size
# Types `mimetypes` does not know on every Python / OS.
_EXTRA_TYPES = {"avif": "image/avif", "heic": "image/heic", "heif": "image/heif"}


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


# ---- routes ------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def dashboard(request: Request, after: str | None = None, limit: int = PAGE_SIZE) -> Response:
    """The page; `after`/`limit` page through keys in folder order (keyset, not offset)."""
    runtime = _runtime(request)
    limit = min(max(limit, 1), PAGE_MAX)
    try:
        facts = await asyncio.to_thread(_facts, runtime)
        keys, more = await asyncio.to_thread(_page_keys, runtime.service.catalog, after, limit)
    except PortfolioSyncError as exc:
        body = f'<section class="down"><h2>Database unavailable</h2><p>{_e(exc)}</p></section>'
        return _html(body, status=503)
    gate = asyncio.Semaphore(_PARALLEL_ROWS)
    rows = await asyncio.gather(*(_portfolio(runtime, key, gate) for key in keys))
    base = request.scope.get("root_path", "").rstrip("/")
    body = "".join(
        (
            _header(runtime, facts),
            _portfolios(
                runtime, rows, base, after=after, limit=limit, more=more, total=facts["rows"]
            ),
            '<div class="pair">',
            _recent(facts["recent"]),
            _errors(facts["errors"]),
            "</div>",
        )
    )
    return _html(body)


@router.get("/files/{path:path}", include_in_schema=False)
async def stored_file(request: Request, path: str) -> Response:
    """One stored image, for thumbnails. Only paths the layout would list as an image are
    served, so the route cannot be used to read other files of the bucket or folder."""
    runtime = _runtime(request)
    if not _safe_path(path):
        raise HTTPException(400, "not a storage path")
    if runtime.layout.affects(path) is None:
        raise HTTPException(404, "not an image of any portfolio")
    try:
        data = await asyncio.to_thread(runtime.service.storage.read, path, max_bytes=MAX_FILE_BYTES)
    except ObjectNotFound as exc:
        raise HTTPException(404, "no such image") from exc
    except ObjectTooLarge as exc:
        raise HTTPException(413, f"image over {MAX_FILE_BYTES >> 20} MiB, not previewed") from exc
    except StorageError as exc:
        raise HTTPException(502, f"storage error: {exc}") from exc
    ext = path.rpartition(".")[2].lower()
    media = mimetypes.guess_type(path)[0] or _EXTRA_TYPES.get(ext, "application/octet-stream")
    # An uploaded SVG opened directly must not run script in the dashboard's origin.
    return Response(
        data,
        media_type=media,
        headers={
            "Cache-Control": "max-age=60",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; sandbox",
        },
    )


def _safe_path(path: str) -> bool:
    if not path or path.startswith("/") or "\\" in path or "\x00" in path:
        return False
    return all(part not in ("", ".", "..") for part in path.split("/"))


# ---- reads (blocking; run in threads) ------------------------------------------------------
def _facts(runtime: Runtime) -> dict[str, Any]:
    svc = runtime.service
    engine = svc.catalog.engine
    try:
        with engine.connect() as conn:
            failing = conn.execute(
                sa.select(sa.func.count())
                .select_from(schema.state)
                .where(schema.state.c.last_error.is_not(None))
            ).scalar_one()
        return {
            "rows": svc.catalog.count_rows(),
            "failing": int(failing),
            "last_pass": schema.get_meta(engine, "last_full_pass"),
            "errors": schema.read_errors(engine, 20),
            "recent": schema.recent_history(engine, 20),
        }
    except sa.exc.SQLAlchemyError as exc:
        raise CatalogError(f"cannot read the status tables: {exc}") from exc


def _page_keys(catalog: Catalog, after: str | None, limit: int) -> tuple[list[str], bool]:
    """Up to `limit` keys after `after` (folder order), and whether more follow."""
    keys = catalog.keys_after(after, limit + 1)
    return keys[:limit], len(keys) > limit


async def _portfolio(runtime: Runtime, key: str, gate: asyncio.Semaphore) -> dict[str, Any]:
    """`Runtime.portfolio` for one row; a failure is shown on that row, not the page."""
    async with gate:
        try:
            found = await asyncio.to_thread(runtime.portfolio, key)
        except (PortfolioSyncError, sa.exc.SQLAlchemyError) as exc:
            return {"key": key, "failed": str(exc)}
    return found if found is not None else {"key": key, "failed": "row deleted meanwhile"}


# ---- rendering -------------------------------------------------------------------------------
_SPANS = ((90, 1, "s"), (5400, 60, "min"), (129600, 3600, "h"), (float("inf"), 86400, "d"))


def _when(value: object) -> str:
    """`2025-05-01 12:00:05 (3 min ago)`; stored naive datetimes are UTC."""
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return _e(value)
    if not isinstance(value, datetime):
        return "—" if value in (None, "") else _e(value)
    at = value if value.tzinfo else value.replace(tzinfo=UTC)
    seconds = (datetime.now(UTC) - at).total_seconds()
    _, unit, name = next(span for span in _SPANS if abs(seconds) < span[0])
    size = f"{abs(seconds) / unit:.0f} {name}"
    hint = f"{size} ago" if seconds >= 0 else f"in {size}"
    stamp = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    return f'<time datetime="{_e(at.isoformat())}">{stamp}</time> <small>({hint})</small>'


def _names(paths: Sequence[str], shown: int = 3) -> str:
    """A few file names, the full list in a tooltip."""
    if not paths:
        return "—"
    names = ", ".join(_e(p.rpartition("/")[2]) for p in paths[:shown])
    extra = f" +{len(paths) - shown}" if len(paths) > shown else ""
    return f'<span title="{_e(chr(10).join(paths))}">{names}{extra}</span>'


def _table(
    title: str, heads: Sequence[str], rows: Iterable[str], *, empty: str, note: str = "",
    footer: str = "",
) -> str:  # fmt: skip
    """A section with one table; `title`, `heads`, `empty` are literals, the rest HTML."""
    head = "".join(f"<th>{h}</th>" for h in heads)
    body = "".join(rows) or f'<tr><td colspan="{len(heads)}">{empty}</td></tr>'
    return (
        f"<section><h2>{title}<small>{note}</small></h2><table><thead><tr>{head}</tr>"
        f"</thead><tbody>{body}</tbody></table>{footer}</section>"
    )


def _header(runtime: Runtime, facts: dict[str, Any]) -> str:
    svc, layout, last = runtime.service, runtime.layout, facts["last_pass"]
    columns = "<br>".join(
        f"<code>{_e(c.column)}</code> ← <code>{_e(layout.folder('{key}') + c.subfolder)}</code>"
        for c in layout.collections
    )
    running = sorted(runtime.queue.running)
    busy = f" <small>({_e(', '.join(running[:5]))}{' …' * (len(running) > 5)})</small>"
    last_text = "never" if not last else (
        f"{_when(last.get('at'))}<br><small>{_e(last.get('rows', '?'))} rows, "
        f"{_e(last.get('changed', '?'))} changed, {_e(last.get('errors', '?'))} errors, "
        f"{float(last.get('duration_ms') or 0) / 1000:.2f} s</small>"
    )  # fmt: skip
    nxt = runtime.next_full_pass
    facts_html = {
        "database": f"<code>{_e(svc.catalog.describe())}</code>",
        "storage": f"<code>{_e(svc.storage.description)}</code>",
        "table": f"<code>{_e(svc.settings.table)}</code> · key "
        f"<code>{_e(svc.settings.key_column)}</code> · {facts['rows']} rows",
        "columns": columns,
        "queue": f"{runtime.queue.pending} pending · {len(running)} running"
        + (busy if running else ""),
        "next full pass": _when(nxt) if nxt else "not scheduled (service not running)",
        "last full pass": last_text,
        "keys with errors": f'<span class="{"bad" if facts["failing"] else "good"}">'
        f"{facts['failing']}</span>",
    }
    items = "".join(f"<div><dt>{label}</dt><dd>{v}</dd></div>" for label, v in facts_html.items())
    return f'<dl class="facts">{items}</dl>'


def _file_url(base: str, path: str) -> str:
    return f"{base}/files/{quote(path.encode('utf-8', 'surrogateescape'), safe='/')}"


def _badge(row: dict[str, Any], values: list[str], rendered: set[str]) -> str:
    if row.get("invalid"):
        return f'<span class="badge bad" title="{_e(row["invalid"])}">invalid value</span>'
    if row["in_sync"]:
        return '<span class="badge good">in sync</span>'
    have = set(values)
    missing, extra = len(rendered - have), len(have - rendered)
    return (
        f'<span class="badge warn" title="{missing} image(s) missing from the row, '
        f'{extra} listed but not in the folder">out of sync +{missing} &minus;{extra}</span>'
    )


def _row_html(runtime: Runtime, row: dict[str, Any], base: str) -> str:
    key = f'<td class="key"><code>{_e(row["key"])}</code></td>'
    if "failed" in row:
        return (
            f'<tr>{key}<td class="state"><span class="badge bad">unreadable</span></td>'
            f'<td colspan="3"></td><td class="err">{_e(row["failed"])}</td></tr>'
        )
    layout = runtime.layout
    listing: dict[str, list[str]] = row["listing"]
    paths = sorted((p for found in listing.values() for p in found), key=natural_key)
    values = [v for value in row["columns"].values() for v in (value or [])]
    counts = " · ".join(
        f"{len(found)}" + (f" <small>{_e(col)}</small>" if len(listing) > 1 else "")
        for col, found in listing.items()
    )
    if len(values) != len(paths):
        counts += f' <small title="images in the row">(row {len(values)})</small>'
    thumbs = "".join(
        f'<img loading="lazy" width="96" height="64" alt="{_e(p.rpartition("/")[2])}" '
        f'title="{_e(p)}" src="'
        f'{_e(layout.render_path(p) if layout.public_url else _file_url(base, p))}">'
        for p in paths[:THUMBNAILS]
    )
    if len(paths) > THUMBNAILS:
        thumbs += f'<span class="more">+{len(paths) - THUMBNAILS}</span>'
    badge = _badge(row, values, {layout.render_path(p) for p in paths})
    error = row.get("last_error") or ""
    return (
        f'<tr>{key}<td class="state">{badge}</td><td class="num">{counts}</td>'
        f'<td class="thumbs">{thumbs or "—"}</td>'
        f'<td class="when">{_when(row.get("last_synced_at"))}</td>'
        f'<td class="{"err" if error else ""}" title="{_e(error)}">{_e(error[:200]) or "—"}</td>'
        "</tr>"
    )


def _portfolios(runtime: Runtime, rows: list[dict[str, Any]], base: str, *, after: str | None,
                limit: int, more: bool, total: int) -> str:  # fmt: skip
    links = []
    if after is not None:
        links.append(f'<a href="{_e(base)}/?{_e(urlencode({"limit": limit}))}">« first page</a>')
    if more and rows:
        query = urlencode({"after": rows[-1]["key"], "limit": limit})
        links.append(f'<a href="{_e(base)}/?{_e(query)}">next page »</a>')
    where = f" after <code>{_e(after)}</code>" if after is not None else ""
    heads = ("key", "state", "images", "thumbnails", "last synced", "last error")
    return _table(
        "Portfolios", heads, (_row_html(runtime, row, base) for row in rows), empty="no rows",
        note=f"{len(rows)} shown{where} of {total}, in key order",
        footer=f"<nav>{' · '.join(links)}</nav>",
    )  # fmt: skip


def _recent(entries: list[dict[str, Any]]) -> str:
    rows = (
        f'<tr><td class="when">{_when(h["at"])}</td><td><code>{_e(h["key"])}</code></td>'
        f"<td>{_e(h['trigger'])}</td><td>{_names(h['added'])}</td>"
        f"<td>{_names(h['removed'])}</td></tr>"
        for h in entries
    )
    heads = ("at", "key", "trigger", "added", "removed")
    return _table("Recent changes", heads, rows, empty="no changes recorded yet")


def _errors(entries: list[dict[str, Any]]) -> str:
    rows = (
        f'<tr><td><code>{_e(s["key"])}</code></td><td class="num">{_e(s["attempts"])}</td>'
        f'<td class="when">{_when(s["last_error_at"])}</td>'
        f'<td class="err">{_e(s["last_error"])}</td></tr>'
        for s in entries
    )
    return _table("Errors", ("key", "attempts", "since", "error"), rows, empty="none")


@cache
def _shell() -> Template:
    """The page around the body (inline CSS and the refresh script), read once on first use."""
    text = files("portfolio_sync.web").joinpath("templates/dashboard.html").read_text("utf-8")
    return Template(text)


def _html(body: str, *, status: int = 200) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    page = _shell().substitute(
        nonce=nonce, body=body, updated=datetime.now(UTC).strftime("%H:%M:%S"),
        refresh_s=REFRESH_SECONDS, refresh_ms=REFRESH_SECONDS * 1000,
    )  # fmt: skip
    csp = (
        f"default-src 'none'; img-src 'self' data: https: http:; style-src 'nonce-{nonce}'; "
        f"script-src 'nonce-{nonce}'; base-uri 'none'; frame-ancestors 'none'"
    )
    headers = {"Content-Security-Policy": csp, "Cache-Control": "no-store"}
    return HTMLResponse(page, status_code=status, headers=headers)
