"""The ASGI app: webhooks in, keys out; manual syncs, reads, health, metrics, console, docs.

Routes are thin: POSTs go to `intake.Intake` (body limit, auth, parsing, queueing), reads
go to the `Runtime`'s blocking helpers in a thread. Handlers never touch rows; only the
reconciler writes. Exceptions become responses in `http_errors`. POSTs answer 202 when
keys were queued and 200 when the request was fine but nothing needed queueing (a test
event, a handshake, a duplicate, events outside the layout, our own row writes).

Run it with `serve.py`: the app and the runtime share one event loop, which is what lets
handlers await the queue directly.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import httpx
from fastapi import Depends, FastAPI, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from portfolio_sync import paging
from portfolio_sync.errors import PayloadError
from portfolio_sync.queue import ALL
from portfolio_sync.runtime import Runtime
from portfolio_sync.web import access, dashboard, docs
from portfolio_sync.web import errors as http_errors
from portfolio_sync.web.errors import ErrorBody
from portfolio_sync.web.intake import Intake, Queued, key_problem

__all__ = ["create_app"]

#: Portfolio reads at once; more wait. Each holds its folder's whole listing meanwhile.
_PARALLEL_READS = 4


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class LastPass(BaseModel):
    outcome: Annotated[
        Literal["ok", "errors", "aborted"],
        Field(
            description="ok; errors (completed, some keys failed); aborted (nothing after "
            "the failure was written: storage or database down, or the mass-deletion guard)."
        ),
    ]
    reason: Annotated[str | None, Field(description="Why it was aborted.")]
    finished_at: datetime
    consecutive_failures: Annotated[
        int, Field(description="Passes not ok since the last one that was.")
    ]


class Ready(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    checks: Annotated[
        dict[str, str],
        Field(description='"ok" or the problem: per backend, background source, held writes.'),
    ]
    last_full_pass: Annotated[
        LastPass | None,
        Field(
            description="The last full pass, failed or not; null before the first. A "
            "failed pass does not make the service unready: `checks` say whether it can work."
        ),
    ] = None


class Held(BaseModel):
    """An emptying write the mass-deletion guard held for an operator."""

    at: datetime
    reason: str | None
    trigger: str | None
    removed: list[str]
    new: Annotated[list[list[str]], Field(description="Per images column, what it would write.")]


class PortfolioTotals(BaseModel):
    row: Annotated[int | None, Field(description="Values in the row (null: NULL).")]
    listing: Annotated[int, Field(description="Images in the folder.")]


class Portfolio(BaseModel):
    """A portfolio as both sides see it right now, one page of paths at a time.

    ``columns`` and ``listing`` hold the paths of one page: at most ``limit`` paths in
    natural order after ``after``, cut from both sides alike (see ``paging``).
    """

    key: str
    row_exists: bool
    columns: Annotated[
        dict[str, list[str] | None], Field(description="The row's value per images column.")
    ]
    listing: Annotated[
        dict[str, list[str]], Field(description="Storage paths per column, as listed now.")
    ]
    in_sync: bool
    invalid: Annotated[str | None, Field(description="Why the row's value is unreadable.")]
    last_synced_at: datetime | None
    last_error: str | None
    attempts: int
    held: Annotated[
        Held | None, Field(description="A write held for `portfolio-sync release`, if any.")
    ] = None
    totals: Annotated[
        dict[str, PortfolioTotals],
        Field(description="Whole-portfolio counts per column (every page)."),
    ] = {}
    next: Annotated[
        str | None,
        Field(description="Cursor of the next page (pass it as `after`); null on the last."),
    ] = None


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "The body is not JSON.",
        401: "Missing or wrong credentials (a webhook secret is configured).",
        403: "No webhook secret is configured and the client is not on this machine.",
        413: "The body is larger than max_body_bytes.",
        422: "The JSON does not have a shape this endpoint understands.",
        503: "Shutting down, or a backend is unavailable; retry later.",
    }.items()
}
_HOOK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": Queued, "description": "Accepted; nothing needed queueing."},
    **_ERRORS,
}
_JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


def create_app(
    runtime: Runtime, *, sns_transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """The HTTP app for ``runtime``, which must be started in the same event loop.

    ``sns_transport`` replaces the network for SNS subscription confirmations (tests).
    """
    intake = Intake(runtime, sns_transport)
    app = FastAPI(
        title="portfolio-sync",
        summary="Keeps each portfolio row's images equal to its storage folder.",
        description="Webhooks and manual requests only queue keys; syncs re-read both "
        "sides. POST endpoints need the webhook secret (or, without one, a loopback "
        'client). Errors are `{"error": reason}`.',
        version="0.1.0",
        docs_url=None,  # served from local assets by docs.install
        redoc_url=None,
    )
    http_errors.install(app)
    docs.install(app)
    app.add_middleware(access.CountRequests, counter=runtime.metrics.http_requests)
    app.add_middleware(access.ForwardedFor)
    reads = asyncio.Semaphore(_PARALLEL_READS)

    @app.post(
        "/hooks/storage",
        status_code=202,
        response_model=Queued,
        tags=["hooks"],
        responses=_HOOK_RESPONSES,
        openapi_extra=_JSON_BODY,
        summary="Storage event (S3, SNS, MinIO, R2, Supabase)",
        description="Objects created or removed. Each affected portfolio is queued "
        "once per request; events for another bucket, outside the folder layout or "
        "for non-image files are ignored and counted. An SNS SubscriptionConfirmation "
        "is logged, and confirmed only when `sns_auto_confirm` is on.",
    )
    async def storage_hook(request: Request, response: Response) -> Queued:
        return _status(response, await intake.storage_hook(request))

    @app.post(
        "/hooks/database",
        status_code=202,
        response_model=Queued,
        tags=["hooks"],
        responses=_HOOK_RESPONSES,
        openapi_extra=_JSON_BODY,
        summary="Row event (Supabase database webhook)",
        description="INSERT/UPDATE/DELETE on the configured table. An UPDATE that "
        "changed only images columns is acknowledged and not queued: it is our own "
        "write. A DELETE is recorded in the history, and the folder is reported if "
        "it still has files.",
    )
    async def database_hook(request: Request, response: Response) -> Queued:
        return _status(response, await intake.database_hook(request))

    @app.post(
        "/sync",
        status_code=202,
        response_model=Queued,
        tags=["sync"],
        responses=_ERRORS,
        summary="Queue a full pass",
        description="Lists all of storage once and fixes every drifted row; "
        "coalesces with a pass already queued.",
    )
    async def sync_all(request: Request) -> Queued:
        return await intake.sync(request, ALL)

    @app.post(
        "/sync/{key}",
        status_code=202,
        response_model=Queued,
        tags=["sync"],
        responses=_ERRORS,
        summary="Queue one portfolio",
        description="Re-reads the row and lists the folder of `key`.",
    )
    async def sync_one(request: Request, key: str) -> Queued:
        return await intake.sync(request, key)

    @app.get(
        "/portfolios/{key}",
        response_model=Portfolio,
        tags=["read"],
        responses={404: {"model": ErrorBody}, 503: _ERRORS[503]},
        summary="One portfolio: row, listing, sync state",
        description="Read live from both sides, so `in_sync` is current. Paths come in "
        "pages: at most `limit` paths (natural order) after the cursor `after`, cut "
        "alike from the row and the listing; `next` is the next page's cursor.",
        dependencies=[Depends(access.require_read)],
    )
    async def portfolio(
        key: str,
        limit: Annotated[
            int, Query(ge=1, le=paging.MAX_LIMIT, description="Paths per page.")
        ] = paging.DEFAULT_LIMIT,
        after: Annotated[
            str | None, Query(max_length=4096, description="`next` of the previous page.")
        ] = None,
    ) -> Portfolio:
        if key_problem(runtime.layout, key):
            raise PayloadError(f"no portfolio {key[:100]!r}", status=404)
        async with reads:  # each read holds a whole listing in memory while it runs
            found = await asyncio.to_thread(runtime.portfolio, key, limit=limit, after=after)
        if found is None:
            raise PayloadError(f"no portfolio {key[:100]!r}: no row, no folder", status=404)
        if found.get("held"):
            found["held"] = {k: _aware(v) for k, v in found["held"].items()}
        return Portfolio.model_validate({k: _aware(v) for k, v in found.items()})

    @app.get(
        "/healthz",
        response_model=Health,
        tags=["ops"],
        summary="Liveness",
        description="200 while the process serves requests; checks no backend.",
    )
    async def healthz() -> Health:
        return Health()

    @app.get(
        "/readyz",
        response_model=Ready,
        tags=["ops"],
        summary="Readiness",
        responses={
            503: {
                "model": Ready,
                "description": "A backend or background source is down (unavailable), or "
                "writes are held by the mass-deletion guard (degraded).",
            }
        },
        description="Reads the table, lists storage, reports the background sources "
        "(watcher, outbox, scheduler) and held writes; 503 names what is wrong.",
    )
    async def readyz(response: Response) -> Ready:
        checks = await asyncio.to_thread(runtime.check_ready)
        failing = {name for name, value in checks.items() if value != "ok"}
        response.status_code = 503 if failing else 200
        status: Literal["ok", "degraded", "unavailable"] = (
            "ok" if not failing else "degraded" if failing == {"held_writes"} else "unavailable"
        )
        last: LastPass | None = None
        if checks.get("database") == "ok":
            summary = await asyncio.to_thread(runtime.pass_summary)
            if summary["last"] is not None:
                last = LastPass.model_validate(
                    {**summary["last"], "consecutive_failures": summary["consecutive_failures"]}
                )
        return Ready(status=status, checks=checks, last_full_pass=last)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        await asyncio.to_thread(runtime.refresh_held)
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    dashboard.install(app, runtime, read_guard=[Depends(access.require_read)])
    return app


def _status(response: Response, result: Queued) -> Queued:
    response.status_code = 202 if result.queued else 200
    return result


def _aware(value: object) -> object:
    # SQLite hands back naive datetimes; we always store UTC.
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
