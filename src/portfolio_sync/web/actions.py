"""The console's buttons: log in/out, "Sync now", "Full pass", "Dry-run full pass",
"Release held writes".

Every POST here is a form from a console page: same-site, with the CSRF token of the
session (`session.ConsoleAuth.form`), and allowed only under the POST API's rule
(`ConsoleAuth.authorize`). Syncs are only queued, as `POST /sync` does; the dry run reads
both sides and writes nothing, so it runs here and its report is the answer. A release
runs here too, through `Reconciler.release` (what `portfolio-sync release` runs), so the
operator sees at once whether each held write went through. A refused
action gets a page saying why, with the status the JSON API would use.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from portfolio_sync.errors import PayloadError
from portfolio_sync.web.dashboard import auth_of, page, runtime_of
from portfolio_sync.web.intake import key_problem
from portfolio_sync.web.templating import path_url

logger = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
TRIGGER = "manual:console"
RELEASE_TRIGGER = "release:console"


def _refused(request: Request, exc: PayloadError) -> Response:
    logger.info(
        "console action refused",
        extra={"action": "console_refused", "path": request.url.path, "reason": str(exc)},
    )
    status = exc.status if 400 <= exc.status < 500 else 422
    return page(request, "refused.html", {"heading": "Not done", "reason": str(exc)}, status=status)


def _back(request: Request, path: str, done: str) -> RedirectResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{base}{path}?done={done}", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request) -> Response:
    return page(request, "login.html", {"error": ""})


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    auth = auth_of(request)
    try:
        _, fields = await auth.form(request)
    except PayloadError as exc:
        return _refused(request, exc)
    if not auth.needs_login:
        return _back(request, "/", "login")
    if not auth.check_secret(fields.get("secret", "")):
        await asyncio.sleep(0.5)  # slows guessing down; the secret is compared in full
        logger.warning("console login failed", extra={"action": "console_login_failed"})
        return page(request, "login.html", {"error": "That is not the secret."}, status=401)
    response = _back(request, "/", "login")
    auth.attach(response, request, auth.new(logged_in=True))
    logger.info("console login", extra={"action": "console_login"})
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request) -> Response:
    auth = auth_of(request)
    try:
        await auth.form(request)
    except PayloadError as exc:
        return _refused(request, exc)
    response = _back(request, "/", "logout")
    auth.end(response)
    return response


async def _allowed(request: Request) -> dict[str, str]:
    auth = auth_of(request)
    session, fields = await auth.form(request)
    auth.authorize(request, session)
    return fields


@router.post("/p/{key}/sync", response_class=HTMLResponse)
async def sync_one(request: Request, key: str) -> Response:
    runtime = runtime_of(request)
    try:
        await _allowed(request)
        problem = key_problem(runtime.layout, key)
        if problem:
            raise PayloadError(problem)
    except PayloadError as exc:
        return _refused(request, exc)
    await runtime.request(key, TRIGGER)
    runtime.metrics.events.labels("console", "accepted").inc()
    return _back(request, f"/p/{path_url(key)}", "sync")


@router.post("/console/pass", response_class=HTMLResponse)
async def full_pass(request: Request) -> Response:
    """ "Full pass" (queued) or, with `dry_run=1`, the report of a pass that writes nothing."""
    runtime = runtime_of(request)
    try:
        fields = await _allowed(request)
    except PayloadError as exc:
        return _refused(request, exc)
    runtime.metrics.events.labels("console", "accepted").inc()
    if fields.get("dry_run") != "1":
        await runtime.request_all(TRIGGER)
        return _back(request, "/", "all")
    report = await asyncio.to_thread(runtime.service.reconciler.sync_all, TRIGGER, dry_run=True)
    context: dict[str, Any] = {"report": report, "shown": 200}
    return page(request, "dry_run.html", context)


@router.post("/console/release", response_class=HTMLResponse)
async def release(request: Request) -> Response:
    """Release the held write of `key`, or every held write without one."""
    runtime = runtime_of(request)
    try:
        fields = await _allowed(request)
        key = fields.get("key") or None
        problem = key_problem(runtime.layout, key) if key is not None else None
        if problem:
            raise PayloadError(problem)
    except PayloadError as exc:
        return _refused(request, exc)
    runtime.metrics.events.labels("console", "accepted").inc()
    reconciler = runtime.service.reconciler
    results = await asyncio.to_thread(reconciler.release, [key] if key else None, RELEASE_TRIGGER)
    for result in results:
        runtime.feed.publish(result.key)
    await asyncio.to_thread(runtime.refresh_held)
    failed = [r for r in results if r.status in ("error", "conflict")]
    logger.info(
        "console release",
        extra={"action": "console_release", "released": len(results) - len(failed)},
    )
    if failed:
        reason = "; ".join(f"{r.key}: {r.error or r.status}" for r in failed[:20])
        context = {"heading": "Not released", "reason": f"still held — {reason}"}
        return page(request, "refused.html", context, status=409)
    return _back(request, f"/p/{path_url(key)}" if key else "/", "release")
