"""The operator console's pages: `GET /` (overview), `GET /p/{key}` (one portfolio), the
stored images they preview (`GET /files/…`) and the live feed (`GET /events`).

Pages only read; buttons post to `actions`. Each page has a live region that the
browser re-fetches (`?fragment=1`) when `/events` (server-sent events) reports a sync of
a key it shows, so rows, badges and thumbnails change in place. The `Runtime` comes from
`request.app.state.runtime`, the session rules from `request.app.state.console_auth`.
"""

from __future__ import annotations

import asyncio
import json
import mimetypes
from collections.abc import AsyncIterator, Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from portfolio_sync.backends.catalog import Browse
from portfolio_sync.backends.storage import ObjectNotFound, ObjectTooLarge
from portfolio_sync.errors import PortfolioSyncError, StorageError
from portfolio_sync.web import reads, views
from portfolio_sync.web.intake import key_problem
from portfolio_sync.web.session import ConsoleAuth, Session
from portfolio_sync.web.templating import render

if TYPE_CHECKING:
    from portfolio_sync.runtime import Runtime

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
PAGE_MAX = 200
LINES = 60  # images per collection per page of the portfolio page
MAX_FILE_BYTES = 20 << 20  # previews only: large originals should not pass through us
TICK_SECONDS = 10.0  # live pages refresh at least this often (syncs on other machines)
STREAM_SECONDS = 300.0  # an event stream ends after this; the browser reconnects
_EXTRA_TYPES = {"avif": "image/avif", "heic": "image/heic", "heif": "image/heif"}
_STATIC = files("portfolio_sync.web").joinpath("static")
Filter = Literal["drift", "error", "never", "held"]
_ON_STATE: dict[str, Browse] = {
    "error": "error",
    "never": "never",
    "held": "held",
}  # the rest lists storage
FLASH = {
    "sync": "Sync queued.",
    "all": "Full pass queued.",
    "login": "Logged in.",
    "logout": "Logged out.",
    "release": "Held writes released: each was synced again from a new listing.",
}


def install(app: FastAPI, runtime: Runtime, *, read_guard: Sequence[Any] = ()) -> None:
    """Mount the console on `app`: pages, actions, static assets, session rules.
    `read_guard`: dependencies every page takes (``access.require_read``)."""
    from portfolio_sync.web import actions

    app.state.runtime = runtime
    app.state.console_auth = ConsoleAuth(runtime.settings.webhook_secret)
    app.mount("/static", StaticFiles(directory=str(_STATIC)), name="static")
    app.include_router(router, dependencies=list(read_guard))
    app.include_router(actions.router)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def auth_of(request: Request) -> ConsoleAuth:
    auth: ConsoleAuth = request.app.state.console_auth
    return auth


def page(
    request: Request, template: str, context: dict[str, Any], *, status: int = 200
) -> Response:
    """Render with the session's facts (a new anonymous session gets its cookie)."""
    auth = auth_of(request)
    session = auth.read(request)
    fresh: Session | None = None
    if session is None:
        session = fresh = auth.new(logged_in=False)
    done = request.query_params.get("done", "")
    context = {
        "version": runtime_of(request).feed.version,  # handlers pass the one before reads
        "csrf": auth.csrf(session),
        "may_act": auth.may_act(request, session),
        "needs_login": auth.needs_login,
        "logged_in": session.logged_in,
        "flash": FLASH.get(done, ""),
        **context,
    }
    response = render(request, template, context, status=status)
    # Only a page view starts a session: the answer to a refused (maybe cross-site) POST
    # must not replace the cookie of a session the browser did not send.
    if fresh is not None and request.method == "GET":
        auth.attach(response, request, fresh)
    return response


# ---- pages ---------------------------------------------------------------------------------
@router.get("/", response_class=HTMLResponse)
async def overview(
    request: Request,
    after: str | None = None,
    limit: int = PAGE_SIZE,
    q: str | None = None,
    only: Filter | None = None,
    fragment: bool = False,
) -> Response:
    """Facts, panels and a keyset page of portfolios (natural key order, search, filters)."""
    runtime = runtime_of(request)
    version = runtime.feed.version  # before the reads: a sync after them is then sent
    limit = min(max(limit, 1), PAGE_MAX)
    q = (q or "").strip()[:200] or None
    try:
        facts = await asyncio.to_thread(reads.facts, runtime)
        found = await reads.page(
            runtime,
            after=after,
            limit=limit,
            search=q,
            only=_ON_STATE.get(only or ""),
            drift=only == "drift",
        )
    except PortfolioSyncError as exc:
        return page(request, "down.html", {"error": str(exc)}, status=503)
    base = request.scope.get("root_path", "").rstrip("/")
    context = {
        "version": version,
        "runtime": runtime,
        "facts": facts,
        "rows": [views.row(r, runtime.layout, base) for r in found.rows],
        "next_after": found.next_after,
        "after": after,
        "limit": limit,
        "q": q or "",
        "only": only or "",
        "scanned": found.scanned,
        "queue_running": sorted(runtime.queue.running),
    }
    return page(request, "index_live.html" if fragment else "index.html", context)


@router.get("/p/{key}", response_class=HTMLResponse)
async def portfolio(request: Request, key: str, at: int = 0, fragment: bool = False) -> Response:
    """One portfolio: the row beside its folder per collection, state and history."""
    runtime = runtime_of(request)
    version = runtime.feed.version
    if key_problem(runtime.layout, key):
        return _not_found(request, f"no portfolio {key[:100]!r}")
    try:
        found = await asyncio.to_thread(runtime.portfolio, key)
        history = await asyncio.to_thread(reads.history, runtime, key)
    except PortfolioSyncError as exc:
        return page(request, "down.html", {"error": str(exc)}, status=503)
    if found is None:
        return _not_found(request, f"no portfolio {key[:100]!r}: no row, no folder")
    layout = runtime.layout
    base = request.scope.get("root_path", "").rstrip("/")
    at = max(at, 0)
    collections = []
    longest = 0
    for c in layout.collections:
        lines = views.compare(found["columns"][c.column], found["listing"][c.column], layout, base)
        longest = max(longest, len(lines))
        collections.append(
            {
                "column": c.column,
                "folder": layout.folder(key) + c.subfolder,
                "lines": lines[at : at + LINES],
                "total": len(lines),
                "counts": {s: sum(line.state == s for line in lines) for s in ("add", "remove")},
                "row_count": len(found["columns"][c.column] or []),
                "folder_count": len(found["listing"][c.column]),
            }
        )
    context = {
        "version": version,
        "key": key,
        "found": found,
        "badge": views.badge(found, layout),
        "collections": collections,
        "history": history,
        "at": at,
        "lines": LINES,
        "longest": longest,
    }
    return page(request, "portfolio_live.html" if fragment else "portfolio.html", context)


def _not_found(request: Request, reason: str) -> Response:
    return page(request, "refused.html", {"heading": "Not found", "reason": reason}, status=404)


@router.get("/events")
async def events(
    request: Request,
    since: int | None = None,
    last_event_id: Annotated[int | None, Header()] = None,
) -> StreamingResponse:
    """Server-sent events: `sync` with the keys this process just synced (`all` when a
    full pass ran or the reader fell behind), and `tick` every `TICK_SECONDS`.

    `since` is the feed's version the page was read at: syncs that finished between the
    render and this request are sent at once, not lost. Each event's id is the version
    after it, so a reconnecting browser (`Last-Event-ID`) continues where it was.
    """
    feed = runtime_of(request).feed
    since = last_event_id if last_event_id is not None else since

    async def stream() -> AsyncIterator[str]:
        version = feed.version if since is None or since > feed.version else since
        yield "retry: 2000\n\n"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + STREAM_SECONDS
        while not feed.closed and loop.time() < deadline:
            await feed.wait(version, TICK_SECONDS)
            keys = feed.since(version)
            version = feed.version
            if keys == []:
                yield "event: tick\ndata: {}\n\n"
                continue
            every = keys is None or "*" in keys or len(keys) > 500
            data = {"all": True} if every else {"keys": keys}
            yield f"event: sync\nid: {version}\ndata: {json.dumps(data)}\n\n"

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get("/favicon.ico")
async def favicon() -> Response:
    data = _STATIC.joinpath("favicon.ico").read_bytes()
    return Response(data, media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})


@router.get("/files/{path:path}")
async def stored_file(request: Request, path: str) -> Response:
    """One stored image, for thumbnails. Only paths the layout would list as an image are
    served, so the route cannot be used to read other files of the bucket or folder."""
    runtime = runtime_of(request)
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
    # An uploaded SVG opened directly must not run script in the console's origin.
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
