"""A Standard Webhooks ``webhook-id`` is acted on once per database: not again by another
instance on the same database, nor by the same one after a restart, until it expires."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

from portfolio_sync.backends import pg_setup, schema
from portfolio_sync.queue.procrastinate import QueueOptions
from portfolio_sync.runtime import Runtime
from portfolio_sync.web.app import create_app
from tests.integration.world import World

PAYLOADS = Path(__file__).resolve().parents[1] / "fixtures" / "payloads"


@asynccontextmanager
async def instance(world: World) -> AsyncIterator[httpx.AsyncClient]:
    """One `serve`-like process: a runtime (no worker on PostgreSQL) and its HTTP app."""
    with world.service() as svc:
        runtime = Runtime(
            svc,
            watch=False,
            catch_up=False,
            queue_options=QueueOptions(run_worker=False, poll_interval=0.2),
        )
        transport = httpx.ASGITransport(app=create_app(runtime), client=("127.0.0.1", 5000))
        async with runtime, httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


async def test_webhook_id_is_deduplicated_across_instances_and_restarts(world: World) -> None:
    world.create_table()
    world.insert(1, None)
    if world.postgres:
        with world.service() as svc:
            pg_setup.install(svc.catalog, svc.settings)
    event = json.loads((PAYLOADS / "s3-put.json").read_text())
    event["Records"][0]["s3"]["object"]["key"] = "1/a.jpg"
    if world.s3 is not None:
        event["Records"][0]["s3"]["bucket"]["name"] = world.s3.bucket
    body = json.dumps(event).encode()

    async def post(http: httpx.AsyncClient, message_id: str) -> httpx.Response:
        return await http.post("/hooks/storage", content=body, headers={"webhook-id": message_id})

    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(instance(world))
        second = await stack.enter_async_context(instance(world))
        assert (await post(first, "msg-1")).status_code == 202
        again = await post(second, "msg-1")
        assert again.status_code == 200 and again.json()["reason"] == "duplicate webhook-id"
        assert (await post(second, "msg-2")).status_code == 202
        assert (await post(first, "msg-2")).json()["reason"] == "duplicate webhook-id"
    async with instance(world) as restarted:
        assert (await post(restarted, "msg-1")).json()["reason"] == "duplicate webhook-id"
        # Past the TTL an id counts as new again (a sender reusing ids much later).
        long_ago = schema.now() - schema.WEBHOOK_ID_TTL - timedelta(minutes=1)
        with world.engine.begin() as conn:
            conn.execute(sa.update(schema.webhook_ids).values(seen_at=long_ago))
        assert (await post(restarted, "msg-1")).status_code == 202
        assert (await post(restarted, "msg-1")).status_code == 200
