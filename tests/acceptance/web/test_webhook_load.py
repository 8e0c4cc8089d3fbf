"""Many storage webhooks at once against a real `serve`: nothing lost, nothing refused.

The PostgreSQL queue writes requests that arrive together in shared statements (group
commit); this checks, end to end on both matrices, that concurrency loses no event: 500
S3 events for 100 keys from 64 connections at once, every one answered 202, and every
key's row ends up holding every object its events named. The objects are uploaded after
the start-up catch-up pass and the folder watcher is off, so only a sync started after
the events can have put them in the rows.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote_plus

import httpx
import pytest

from tests.acceptance.serve_process import ServeProcess, serve_process, wait_for
from tests.integration.world import World

PAYLOADS = Path(__file__).resolve().parents[2] / "fixtures" / "payloads"
KEYS = 100
PER_KEY = 5
CONNECTIONS = 64


def s3_event(world: World, path: str) -> bytes:
    data = json.loads((PAYLOADS / "s3-put.json").read_text())
    record = data["Records"][0]["s3"]
    record["bucket"]["name"] = world.s3.bucket if world.s3 else "local-folder"
    record["object"]["key"] = quote_plus(path, safe="/")
    return json.dumps(data).encode()


def post_all(url: str, bodies: list[bytes]) -> list[int]:
    """Every body at once: CONNECTIONS senders, each on its own keep-alive connection."""

    def send(part: list[bytes]) -> list[int]:
        with httpx.Client(base_url=url, timeout=60.0) as client:
            return [client.post("/hooks/storage", content=body).status_code for body in part]

    parts = [bodies[i::CONNECTIONS] for i in range(CONNECTIONS)]
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        return [status for got in pool.map(send, parts) for status in got]


@pytest.fixture
def server(world: World, tmp_path: Path) -> Iterator[ServeProcess]:
    world.create_table()
    for key in range(1, KEYS + 1):
        world.insert(key, None)
    with serve_process(world.env(), tmp_path, "--no-watch") as proc:
        wait_for(
            lambda: proc.metric("portfolio_sync_full_passes_total") >= 1,
            timeout=30,
            what="the start-up catch-up pass",
        )
        yield proc


def test_concurrent_webhooks_reach_every_row(world: World, server: ServeProcess) -> None:
    paths = [f"{key}/{i}.jpg" for i in range(PER_KEY) for key in range(1, KEYS + 1)]
    world.put_many(paths)
    statuses = post_all(server.url, [s3_event(world, p) for p in paths])
    assert Counter(statuses) == {202: len(paths)}

    expected = {key: {f"{key}/{i}.jpg" for i in range(PER_KEY)} for key in range(1, KEYS + 1)}

    def missing() -> dict[int, set[str]]:
        return {
            key: want - set(world.images(key) or [])
            for key, want in expected.items()
            if not want <= set(world.images(key) or [])
        }

    wait_for(lambda: not missing(), timeout=60, what="every row to hold its objects")
    assert server.metric("portfolio_sync_events_total", outcome="accepted") == len(paths)
