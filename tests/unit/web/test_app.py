"""The ASGI app in-process (httpx ``ASGITransport``) over a real `Runtime` on SQLite and a
temporary folder: the rules that need a chosen client address, a fake SNS endpoint or a
stopped queue, which a subprocess cannot easily give.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from portfolio_sync.layout import Layout
from portfolio_sync.runtime import Runtime
from portfolio_sync.web.app import create_app
from portfolio_sync.web.intake import is_loopback, key_problem, old_images, subscribe_url_ok
from portfolio_sync.wiring import open_service
from tests.integration.world import World

PAYLOADS = Path(__file__).resolve().parents[2] / "fixtures" / "payloads"
SNS_URL = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&Token=x"

Running = tuple[httpx.AsyncClient, Runtime, FastAPI]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    root = tmp_path / "storage"
    root.mkdir()
    w = World(kind="sqlite-folder", database_url=f"sqlite:///{tmp_path / 'app.db'}", root=root)
    w.create_table()
    yield w
    w.close()


@pytest.fixture
def running(
    world: World,
) -> Callable[..., AbstractAsyncContextManager[Running]]:
    @asynccontextmanager
    async def run(
        client: tuple[str, int] = ("127.0.0.1", 50000),
        transport: httpx.AsyncBaseTransport | None = None,
        **settings: Any,
    ) -> AsyncIterator[Running]:
        with open_service(world.settings(**settings)) as svc:
            runtime = Runtime(svc, watch=False, catch_up=False)
            app = create_app(runtime, sns_transport=transport)
            asgi = httpx.ASGITransport(app=app, client=client)
            async with runtime, httpx.AsyncClient(transport=asgi, base_url="http://t") as http:
                yield http, runtime, app

    return run


def sns_confirmation(url: str = SNS_URL) -> bytes:
    data = json.loads((PAYLOADS / "sns-subscription-confirmation.json").read_text())
    data["SubscribeURL"] = url
    return json.dumps(data).encode()


def row(kind: str, **parts: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / f"supabase-db-{kind}.json").read_text())
    for part in ("record", "old_record"):
        if data[part] is not None:
            data[part]["id"] = 1
    for name, value in parts.items():
        part, _, column = name.partition("__")
        if value is ...:
            del data[part][column]
        else:
            data[part][column] = value
    return data


# ---- pure helpers ------------------------------------------------------------------------


def test_subscribe_url_must_be_an_sns_endpoint() -> None:
    assert subscribe_url_ok(SNS_URL)
    assert subscribe_url_ok("https://sns.cn-north-1.amazonaws.com.cn/?Action=x")
    assert subscribe_url_ok("https://sns.us-gov-west-1.amazonaws.com/?Action=x")
    assert subscribe_url_ok("https://sns.ap-southeast-2.amazonaws.com/?Action=x")
    for bad in (
        "http://sns.us-east-1.amazonaws.com/",
        "https://sns.us-east-1.amazonaws.com.evil.example/",
        "https://evil.example/?sns.us-east-1.amazonaws.com",
        "https://user@sns.us-east-1.amazonaws.com/",
        "https://sns.us-east-1.amazonaws.com:8443/",
        "https://sns.s3.amazonaws.com/",  # an S3 bucket named "sns", not the SNS service
        "https://sns.amazonaws.com/",
        "https://[::1/",
        "",
    ):
        assert not subscribe_url_ok(bad), bad


def test_old_images_accepts_lists_and_json_text() -> None:
    assert old_images({"images": ["a", "b"]}, "images") == ["a", "b"]
    assert old_images({"images": '["a"]'}, "images") == ["a"]
    for junk in (None, "not json", "[1]", [1], {"a": 1}, 3):
        assert old_images({"images": junk}, "images") is None
    assert old_images({}, "images") is None


def test_key_problem_and_loopback() -> None:
    layout = Layout()
    assert key_problem(layout, "42") is None
    assert key_problem(layout, "été 1") is None
    for bad in ("", ".x", "a/b", "a\x00", "\ud800", "k" * 600):
        assert key_problem(layout, bad), bad
    for host in ("127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(host), host
    for host in ("10.0.0.1", "203.0.113.9", "::2", "", None, "localhost"):
        assert not is_loopback(host), host


# ---- auth and limits ---------------------------------------------------------------------


async def test_without_secret_only_loopback_may_post(running: Any) -> None:
    async with running(client=("203.0.113.9", 4000)) as (http, _, _):
        answer = await http.post("/sync")
        assert answer.status_code == 403 and "WEBHOOK_SECRET" in answer.json()["error"]
        assert (await http.get("/healthz")).status_code == 200
    async with running(client=("::1", 4000)) as (http, _, _):
        assert (await http.post("/sync")).status_code == 202


async def test_secret_applies_to_remote_clients_too(running: Any) -> None:
    async with running(client=("203.0.113.9", 4000), webhook_secret="s") as (http, _, _):
        assert (await http.post("/sync")).status_code == 401
        ok = await http.post("/sync", headers={"Authorization": "Bearer s"})
        assert ok.status_code == 202


async def test_body_limit_by_length_and_while_streaming(running: Any) -> None:
    async with running(max_body_bytes=1024) as (http, _, _):
        answer = await http.post("/hooks/storage", content=b"x" * 2000)
        assert answer.status_code == 413

        async def stream() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 300

        assert (await http.post("/hooks/database", content=stream())).status_code == 413
        assert (await http.post("/hooks/storage", content=b"{}" + b" " * 1000)).status_code == 422
        text = (await http.get("/metrics")).text
        assert 'portfolio_sync_events_total{outcome="rejected",source="storage"}' in text


# ---- storage hook ----------------------------------------------------------------------------


async def test_sns_confirmation_is_logged_not_fetched_by_default(
    running: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fetched: list[httpx.Request] = []
    sns = httpx.MockTransport(lambda r: fetched.append(r) or httpx.Response(200))
    async with running(transport=sns) as (http, _, _):
        answer = await http.post("/hooks/storage", content=sns_confirmation())
    assert answer.status_code == 200 and "not confirmed" in answer.json()["reason"]
    assert fetched == []
    record = next(r for r in caplog.records if getattr(r, "action", "") == "sns_subscription")
    assert record.levelname == "WARNING" and record.subscribe_url == SNS_URL  # type: ignore[attr-defined]


async def test_sns_auto_confirm_fetches_only_sns_urls(running: Any) -> None:
    fetched: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        fetched.append(str(request.url))
        return httpx.Response(200 if "Token=x" in str(request.url) else 500)

    async with running(transport=httpx.MockTransport(answer), sns_auto_confirm=True) as (
        http,
        _,
        _,
    ):
        ok = await http.post("/hooks/storage", content=sns_confirmation())
        assert ok.json()["reason"] == "SubscriptionConfirmation: confirmed"
        evil = await http.post("/hooks/storage", content=sns_confirmation("http://127.0.0.1:1/"))
        assert "not fetched" in evil.json()["reason"]
        failing = sns_confirmation(SNS_URL.replace("Token=x", "Token=y"))
        failed = await http.post("/hooks/storage", content=failing)
        assert failed.status_code == 200 and "HTTP 500" in failed.json()["reason"]
    assert fetched == [SNS_URL, SNS_URL.replace("Token=x", "Token=y")]


async def test_storage_batch_queues_each_key_once(running: Any, world: World) -> None:
    data = json.loads((PAYLOADS / "s3-put.json").read_text())
    first = data["Records"][0]
    records = []
    for key in ("1/a.jpg", "1/b.jpg", "2/c.jpg", "2/notes.txt", "top.jpg"):
        record = json.loads(json.dumps(first))
        record["s3"]["object"]["key"] = key
        records.append(record)
    body = json.dumps({"Records": records}).encode()
    async with running() as (http, _, _):
        answer = await http.post("/hooks/storage", content=body, headers={"webhook-id": "m1"})
        assert answer.status_code == 202
        assert answer.json()["queued"] == ["1", "2"] and answer.json()["ignored"] == 2
        again = await http.post("/hooks/storage", content=body, headers={"webhook-id": "m1"})
        assert again.status_code == 200 and again.json()["reason"] == "duplicate webhook-id"


# ---- database hook ---------------------------------------------------------------------------


async def test_database_rules(running: Any) -> None:
    async with running() as (http, _, _):
        post = http.post
        moved = await post("/hooks/database", json=row("update", old_record__id=2))
        assert moved.status_code == 202 and moved.json()["queued"] == ["2", "1"]
        partial = await post("/hooks/database", json=row("update", old_record__id=...))
        assert partial.json()["queued"] == ["1"]
        own = row("update", record__images=["1/a.jpg"], old_record__title="Kitchen remodel (final)")
        answer = await post("/hooks/database", json=own)
        assert (
            answer.status_code == 200 and answer.json()["reason"] == "only images columns changed"
        )
        text_key = await post("/hooks/database", json=row("insert", record__id="abc"))
        assert text_key.json()["queued"] == ["abc"]
        missing = await post("/hooks/database", json=row("insert", record__id=...))
        assert missing.status_code == 422 and "key column" in missing.json()["error"]
    async with running(table="main.portfolios") as (http, _, _):  # schema given: exact
        other = await http.post("/hooks/database", json=row("insert"))
        assert other.status_code == 200 and other.json()["queued"] == []


# ---- reads and failures ----------------------------------------------------------------------


async def test_portfolio_read_has_iso_times(running: Any, world: World) -> None:
    world.insert(1, None)
    world.put("1/a.jpg")
    async with running() as (http, runtime, _):
        assert (await http.post("/sync/1")).status_code == 202
        await runtime.queue.join()
        data = (await http.get("/portfolios/1")).json()
        assert data["columns"] == {"images": ["1/a.jpg"]} and data["in_sync"]
        assert data["last_synced_at"].endswith("Z") or "+00:00" in data["last_synced_at"]
        assert (await http.get("/portfolios/.git")).status_code == 404
        text = (await http.get("/metrics")).text  # answered requests, by route template
        for series in (
            'method="GET",route="/portfolios/{key}",status="2xx"',
            'method="GET",route="/portfolios/{key}",status="4xx"',
            'method="POST",route="/sync/{key}",status="2xx"',
        ):
            assert "portfolio_sync_http_requests_total{" + series + "} 1.0" in text, series


async def test_stopped_queue_is_503_and_crashes_are_json_500(running: Any) -> None:
    async with running() as (http, runtime, app):

        @app.get("/boom")
        async def boom() -> None:
            raise RuntimeError("bug")

        crash = await http.get("/boom")
        assert crash.status_code == 500 and crash.json() == {
            "error": "internal error; see the server log"
        }
        await runtime.stop()
        closed = await http.post("/sync/1")
        assert closed.status_code == 503 and closed.headers["retry-after"] == "5"
        assert (await http.get("/nowhere")).json() == {"error": "Not Found"}
        wrong = await http.get("/sync")
        assert wrong.status_code == 405 and "POST" in wrong.headers["allow"]


# ---- paged and protected reads ---------------------------------------------------------------


async def test_portfolio_read_is_paged(running: Any, world: World) -> None:
    """A 2,500-file folder comes in pages of `limit` paths; following `next` gives every
    path once, from the row and the listing alike."""
    names = [f"1/img{i}.jpg" for i in range(2500)]
    for name in names:
        world.put(name)
    world.insert(1, [*names[:2000], "1/gone.jpg"])
    async with running() as (http, _, _):
        first = await http.get("/portfolios/1")
        assert first.status_code == 200
        data = first.json()
        on_page = set(data["listing"]["images"]) | set(data["columns"]["images"])
        assert len(on_page) == 1000 and len(first.content) < 120_000
        assert data["totals"] == {"images": {"row": 2001, "listing": 2500}}
        assert not data["in_sync"] and data["next"] == data["listing"]["images"][-1]
        listed, in_row, after, pages = [], [], None, 0
        while True:
            query = {"limit": 700} | ({"after": after} if after else {})
            page = (await http.get("/portfolios/1", params=query)).json()
            assert len(page["listing"]["images"]) <= 700 and len(page["columns"]["images"]) <= 700
            listed += page["listing"]["images"]
            in_row += page["columns"]["images"]
            pages, after = pages + 1, page["next"]
            if after is None:
                break
        assert pages == 4
        assert sorted(listed) == sorted(names) and len(listed) == len(set(listed))
        assert sorted(in_row) == sorted([*names[:2000], "1/gone.jpg"])
        for bad in ({"limit": 0}, {"limit": 10_001}, {"limit": "x"}):
            answer = await http.get("/portfolios/1", params=bad)
            assert answer.status_code == 422 and answer.json()["error"], bad
        last = await http.get("/portfolios/1", params={"after": "1/zzz.jpg"})
        assert last.json()["listing"] == {"images": []} and last.json()["next"] is None


async def test_read_secret_guards_reads_not_health(running: Any, world: World) -> None:
    world.insert(1, None)
    async with running(client=("127.0.0.1", 4000), read_secret="r3ad") as (http, _, _):
        for path in ("/portfolios/1", "/", "/p/1"):
            refused = await http.get(path)
            assert refused.status_code == 401 and "read secret" in refused.json()["error"]
            assert refused.headers["www-authenticate"].startswith("Basic ")
        wrong = await http.get("/portfolios/1", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["error"] == "wrong read secret"
        basic = "Basic " + base64.b64encode(b"anyone:r3ad").decode()
        for headers in (
            {"Authorization": "Bearer r3ad"},
            {"X-Read-Secret": "r3ad"},
            {"Authorization": basic},
        ):
            assert (await http.get("/portfolios/1", headers=headers)).status_code == 200, headers
        for path in ("/", "/p/1"):
            assert (await http.get(path, headers={"X-Read-Secret": "r3ad"})).status_code == 200
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await http.get(path)).status_code == 200, path


async def test_reads_on_loopback_only(running: Any, world: World) -> None:
    world.insert(1, None)
    async with running(client=("203.0.113.9", 4000), read_loopback_only=True) as (http, _, _):
        refused = await http.get("/portfolios/1")
        assert refused.status_code == 403 and "this machine" in refused.json()["error"]
        assert (await http.get("/")).status_code == 403
        assert (await http.get("/healthz")).status_code == 200
    async with running(client=("::1", 4000), read_loopback_only=True) as (http, _, _):
        assert (await http.get("/portfolios/1")).status_code == 200
        # A local proxy's Forwarded header names the real client: not local.
        proxied = await http.get("/portfolios/1", headers={"Forwarded": "for=203.0.113.9"})
        assert proxied.status_code == 403


async def test_forwarded_header_is_trusted_from_loopback_only(running: Any) -> None:
    async with running(client=("127.0.0.1", 4000)) as (http, _, _):
        for header in (
            "for=203.0.113.9",
            'for="[2001:db8::7]:4711";proto=https',
            "for=203.0.113.9, for=127.0.0.1",  # our proxy's own hop is skipped
            "for=unknown",
            "for=_hidden",
        ):
            answer = await http.post("/sync", headers={"Forwarded": header})
            assert answer.status_code == 403, header
        local = await http.post("/sync", headers={"Forwarded": 'for="[::1]"'})
        assert local.status_code == 202
    async with running(client=("203.0.113.9", 4000)) as (http, _, _):  # not a trusted proxy
        assert (await http.post("/sync", headers={"Forwarded": "for=127.0.0.1"})).status_code == 403
