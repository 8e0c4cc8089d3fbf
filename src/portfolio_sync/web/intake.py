"""Turn authenticated webhook and manual requests into queue requests.

`server` routes POSTs here. Everything below only reads the request and calls the
`Runtime` (``request``, ``request_all``, ``row_deleted``, ``seen_before``); rows are
written by the reconciler alone. Rules shared by every POST:

* The body is read as raw bytes, whatever the content type says (SNS posts JSON as
  ``text/plain``), up to ``max_body_bytes``: a larger ``Content-Length`` is refused before
  reading, and a chunked body is cut off as soon as it passes the limit (413).
* With ``webhook_secret`` set, a request needs a credential that ``verify_request``
  accepts (401). Without one, only loopback clients are served (403), so an unconfigured
  server is not open to the network. uvicorn takes the client address from
  ``X-Forwarded-For`` when the proxy is on 127.0.0.1, so a local reverse proxy that sets
  it does not make every caller look local.
* A repeated Standard Webhooks ``webhook-id`` is acknowledged and not acted on again. It
  is remembered only once the body parsed, so a rejected delivery can be retried.
* Every event is counted in ``portfolio_sync_events_total{source, outcome}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from typing import Annotated, Any
from urllib.parse import urlsplit

import httpx
from fastapi import Request
from pydantic import BaseModel, Field

from portfolio_sync.backends.storage import S3Storage
from portfolio_sync.errors import PayloadError
from portfolio_sync.layout import Layout
from portfolio_sync.queue import ALL
from portfolio_sync.runtime import Runtime
from portfolio_sync.sources.auth import verify_request
from portfolio_sync.sources.webhooks import (
    RowEvent,
    StorageEvent,
    StorageHook,
    parse_database_payload,
    parse_storage_payload,
)
from portfolio_sync.web.access import is_loopback

__all__ = ["Intake", "Queued", "key_problem"]

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH = 512
#: ``sns.<region>.amazonaws.com(.cn)``; a region is ``us-east-1``, ``us-gov-west-1``,
#: ``cn-north-1``…, so ``sns.s3.amazonaws.com`` (an S3 bucket's host) does not match.
_SNS_HOST = re.compile(r"sns\.[a-z]{2}(-[a-z]+)+-[0-9]+\.amazonaws\.com(\.cn)?")


class Queued(BaseModel):
    """What a POST did: the keys it queued and what it left alone. Answered with 202
    when ``queued`` is not empty, else 200."""

    queued: Annotated[list[str], Field(description="Keys queued for a sync; '*' is a full pass.")]
    ignored: Annotated[int, Field(description="Events in the request not acted on.")] = 0
    reason: Annotated[
        str | None,
        Field(description="Why events were ignored or nothing was queued; else null."),
    ] = None


# --- pure helpers ----------------------------------------------------------------------


def key_problem(layout: Layout, key: str) -> str | None:
    """Why ``key`` cannot be a portfolio key (it must name one folder), or None."""
    if len(key) > MAX_KEY_LENGTH:
        return f"key is longer than {MAX_KEY_LENGTH} characters"
    if not layout.is_key(key):
        return "key must be a folder name: non-empty, no '/', not starting with '.'"
    if "\x00" in key:
        return "key contains a NUL character"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "key is not valid Unicode"
    return None


def table_matches(configured: str, event: RowEvent) -> bool:
    """``portfolios`` matches ``public.portfolios``; ``app.portfolios`` only itself."""
    schema, _, table = configured.rpartition(".")
    return event.table == table and event.schema == (schema or "public")


def row_key(record: Mapping[str, Any], column: str, where: str, layout: Layout) -> str:
    """The key of a webhook record, as the catalog spells it (``str(value)``)."""
    value = record.get(column)
    if value is None:
        raise PayloadError(f"{where}.{column} (the key column) is missing or null")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PayloadError(f"{where}.{column} must be a string or an integer")
    key = str(value)
    problem = key_problem(layout, key)
    if problem:
        raise PayloadError(f"{where}.{column}: {problem}")
    return key


def old_images(record: Mapping[str, Any], column: str) -> list[str] | None:
    """A deleted row's images for its history entry: a list, or JSON text of one."""
    value = record.get(column)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def only_images_changed(event: RowEvent, layout: Layout) -> bool:
    """An UPDATE that touched nothing but images columns: most likely our own write
    (invariant 5), and a sync could not change anything it did not already decide."""
    if event.record is None or event.old_record is None:
        return False
    skip = set(layout.columns)
    new = {k: v for k, v in event.record.items() if k not in skip}
    old = {k: v for k, v in event.old_record.items() if k not in skip}
    return new == old


def subscribe_url_ok(url: str) -> bool:
    """Only fetch genuine SNS endpoints: the URL comes from the request body."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    host = parts.hostname or ""
    return (
        parts.scheme == "https"
        and port is None
        and parts.username is None
        and _SNS_HOST.fullmatch(host) is not None
    )


# --- the handlers ----------------------------------------------------------------------


class Intake:
    """The POST endpoints' logic, bound to one runtime (`server` adds the routes)."""

    def __init__(self, runtime: Runtime, sns_transport: httpx.AsyncBaseTransport | None):
        self.runtime = runtime
        self.settings = runtime.settings
        self.layout = runtime.layout
        self.events = runtime.metrics.events
        self.limit: int = self.settings.max_body_bytes
        self.sns_transport = sns_transport

    async def body(self, request: Request, source: str) -> bytes:
        """Read the body within the size limit and authenticate the request."""
        try:
            return await self._authorized_body(request)
        except PayloadError as exc:
            self.events.labels(
                source, "unauthorized" if exc.status in (401, 403) else "rejected"
            ).inc()
            raise

    async def _authorized_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.limit:
            raise PayloadError(f"body is larger than {self.limit} bytes", status=413)
        secret = self.settings.webhook_secret
        if not secret and not is_loopback(request.client.host if request.client else None):
            raise PayloadError(
                "PORTFOLIO_SYNC_WEBHOOK_SECRET is not set, so only requests "
                "from this machine are accepted",
                status=403,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.limit:
                raise PayloadError(f"body is larger than {self.limit} bytes", status=413)
            chunks.append(chunk)
        body = b"".join(chunks)
        if secret:
            verify_request(secret=secret, headers=request.headers, body=body)
        return body

    async def duplicate(self, request: Request, source: str) -> bool:
        message_id = request.headers.get("webhook-id")
        if message_id and await self.runtime.seen_before(message_id):
            self.events.labels(source, "duplicate").inc()
            logger.info(
                "duplicate webhook ignored",
                extra={
                    "action": "webhook_duplicate",
                    "source": source,
                    "webhook_id": message_id[:200],
                },
            )
            return True
        return False

    async def storage_hook(self, request: Request) -> Queued:
        body = await self.body(request, "storage")
        try:
            hook = parse_storage_payload(body, request.headers)
        except PayloadError:
            self.events.labels("storage", "rejected").inc()
            raise
        if hook.subscribe_url is not None:
            return await self._subscription(hook, hook.subscribe_url)
        if await self.duplicate(request, "storage"):
            return Queued(queued=[], ignored=len(hook.events), reason="duplicate webhook-id")
        if not hook.events:
            self.events.labels("storage", "skipped").inc()
            return Queued(queued=[], ignored=0, reason=hook.ignored)
        expect: dict[str, dict[str, bool]] = {}
        trigger: dict[str, str] = {}
        ignored = 0
        for event in hook.events:
            path = self._storage_path(event)
            key = None if path is None else self.layout.affects(path)
            if path is None or key is None or key_problem(self.layout, key):
                ignored += 1
                self.events.labels(event.source, "out_of_scope").inc()
                continue
            self.events.labels(event.source, "accepted").inc()
            expect.setdefault(key, {})[path] = event.kind == "created"
            trigger.setdefault(key, f"storage:{event.source}")
        # together, so that the PostgreSQL queue writes them in one statement
        await asyncio.gather(
            *(
                self.runtime.request(key, trigger[key], expect=paths)
                for key, paths in expect.items()
            )
        )
        reason = None
        if ignored:
            reason = f"{ignored} event(s) outside the configured bucket, folders or file types"
        return Queued(queued=list(expect), ignored=ignored, reason=reason)

    def _storage_path(self, event: StorageEvent) -> str | None:
        """The event's path relative to the storage root, or None if it is elsewhere."""
        storage = self.runtime.service.storage
        if not isinstance(storage, S3Storage):
            return event.path  # a local folder has no bucket to compare
        if event.bucket is not None and event.bucket != storage.bucket:
            return None
        if not storage.prefix:
            return event.path
        head = storage.prefix + "/"
        return event.path[len(head) :] if event.path.startswith(head) else None

    async def _subscription(self, hook: StorageHook, url: str) -> Queued:
        auto = self.settings.sns_auto_confirm
        self.events.labels("sns", "subscription").inc()
        logger.warning(
            "SNS subscription confirmation received",
            extra={
                "action": "sns_subscription",
                "topic_arn": hook.topic_arn,
                "subscribe_url": url,
                "auto_confirm": auto,
            },
        )
        if not auto:
            return Queued(
                queued=[],
                reason="SubscriptionConfirmation: not confirmed "
                "(sns_auto_confirm is off); open the logged SubscribeURL to confirm",
            )
        if not subscribe_url_ok(url):
            logger.error(
                "SNS SubscribeURL refused",
                extra={"action": "sns_confirm_refused", "subscribe_url": url},
            )
            return Queued(
                queued=[],
                reason="SubscriptionConfirmation: SubscribeURL is not "
                "an https://sns.<region>.amazonaws.com URL; not fetched",
            )
        try:
            async with httpx.AsyncClient(timeout=10.0, transport=self.sns_transport) as client:
                answer = await client.get(url)
            confirmed = answer.is_success
            detail = f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            confirmed, detail = False, f"{type(exc).__name__}: {exc}"
        logger.log(
            logging.INFO if confirmed else logging.ERROR,
            "SNS subscription confirm",
            extra={
                "action": "sns_confirmed" if confirmed else "sns_confirm_failed",
                "topic_arn": hook.topic_arn,
                "detail": detail,
            },
        )
        outcome = "confirmed" if confirmed else f"confirmation failed ({detail})"
        return Queued(queued=[], reason=f"SubscriptionConfirmation: {outcome}")

    async def database_hook(self, request: Request) -> Queued:
        body = await self.body(request, "database")
        try:
            event = parse_database_payload(body, request.headers)
            if not table_matches(self.settings.table, event):
                self.events.labels("database", "other_table").inc()
                return Queued(
                    queued=[], ignored=1, reason=f"not the configured table {self.settings.table}"
                )
            keys = self._row_keys(event)
        except PayloadError:
            self.events.labels("database", "rejected").inc()
            raise
        if await self.duplicate(request, "database"):
            return Queued(queued=[], ignored=1, reason="duplicate webhook-id")
        if event.type == "UPDATE" and only_images_changed(event, self.layout):
            self.events.labels("database", "own_write").inc()
            return Queued(queued=[], ignored=1, reason="only images columns changed")
        self.events.labels("database", "accepted").inc()
        trigger = f"database:{event.type}"
        if event.type == "DELETE" and event.old_record is not None:
            images = old_images(event.old_record, self.layout.columns[0])
            await self.runtime.row_deleted(keys[0], images, trigger)
        for key in keys:
            await self.runtime.request(key, trigger)
        return Queued(queued=keys)

    def _row_keys(self, event: RowEvent) -> list[str]:
        """The key(s) a row event affects: both when an UPDATE changed the key."""
        column = self.settings.key_column
        if event.type == "DELETE":
            assert event.old_record is not None  # the parser guarantees it
            return [row_key(event.old_record, column, "old_record", self.layout)]
        assert event.record is not None
        keys = [row_key(event.record, column, "record", self.layout)]
        # A partial old_record (no key column) cannot show a key change; keep the new key.
        if event.type == "UPDATE" and event.old_record and column in event.old_record:
            old = row_key(event.old_record, column, "old_record", self.layout)
            if old != keys[0]:
                keys.insert(0, old)
        return keys

    async def sync(self, request: Request, key: str) -> Queued:
        await self.body(request, "manual")
        if key == ALL:
            await self.runtime.request_all("manual:http")
        else:
            problem = key_problem(self.layout, key)
            if problem:
                self.events.labels("manual", "rejected").inc()
                raise PayloadError(problem)
            await self.runtime.request(key, "manual:http")
        self.events.labels("manual", "accepted").inc()
        return Queued(queued=[key])
