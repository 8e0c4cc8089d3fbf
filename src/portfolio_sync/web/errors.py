"""Exceptions to HTTP responses, in one place (like datasette's ``handle_exception``).

Every error body is ``{"error": "<reason>"}``. The mapping:

* ``PayloadError`` → its own status (400 not JSON, 401 credentials, 403 not allowed,
  413 too large, 422 unusable): the sender can act on the reason.
* ``QueueClosed`` → 503: the process is shutting down; the sender should retry (and the
  next start's catch-up pass covers the change anyway).
* ``StorageError`` / ``CatalogError`` → 503: a backend is down; nothing is wrong with the
  request and retrying later is the right move.
* ``ClientDisconnect`` → 400: the client went away while sending its body; nobody reads
  this answer, but it must not count as a server error.
* FastAPI's ``RequestValidationError`` (a query parameter out of range) → 422 naming
  the parameter and the rule.
* Starlette's ``HTTPException`` (404, 405, ...) → its status with the same body shape.
* Anything else → 500, logged with its traceback by ``CatchAll``. Malformed input must
  never get here: a 500 is a bug, and the fuzz tests treat it as one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from portfolio_sync.errors import CatalogError, PayloadError, StorageError
from portfolio_sync.queue import QueueClosed

__all__ = ["CatchAll", "ErrorBody", "error_response", "install"]

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="What was wrong, in words a sender can act on.")


def error_response(
    status: int, reason: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def _payload_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PayloadError)
    status = exc.status if 400 <= exc.status < 500 else 422
    logger.info(
        "request rejected",
        extra={
            "action": "request_rejected",
            "path": request.url.path,
            "status": status,
            "reason": str(exc),
        },
    )
    return error_response(status, str(exc))


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    reason = "shutting down" if isinstance(exc, QueueClosed) else str(exc)
    logger.warning(
        "request failed: backend unavailable",
        extra={"action": "request_unavailable", "path": request.url.path, "reason": reason},
    )
    return error_response(503, reason, headers={"Retry-After": "5"})


async def _disconnected(request: Request, exc: Exception) -> JSONResponse:
    return error_response(400, "client disconnected while sending the body")


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    reasons = [
        f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
        for error in exc.errors()
    ]
    return error_response(422, "; ".join(reasons) or "invalid request")


async def _http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, str(exc.detail), headers=exc.headers)


def install(app: FastAPI) -> None:
    """Register the mapping above on ``app`` and wrap it in ``CatchAll``."""
    app.add_exception_handler(PayloadError, _payload_error)
    for unavailable in (QueueClosed, StorageError, CatalogError):
        app.add_exception_handler(unavailable, _unavailable)
    app.add_exception_handler(ClientDisconnect, _disconnected)
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(CatchAll)


class CatchAll:
    """Answer 500 with a JSON body for an unexpected exception, and log it once.

    Starlette's own last-resort handler re-raises after answering, so the server logs the
    same traceback a second time without our fields; catching here avoids that. If the
    response had already started, nothing can be fixed: re-raise and let the server close
    the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            logger.exception(
                "request failed",
                extra={
                    "action": "request_failed",
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                },
            )
            if started:
                raise
            await error_response(500, "internal error; see the server log")(scope, receive, send)
