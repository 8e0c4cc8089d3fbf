"""`portfolio-sync serve` end to end, on both matrices: a real process on 127.0.0.1 fed
webhooks in the shapes real senders use, checked against the real table and storage.

On postgres-s3 there is no watcher, so storage changes arrive as POSTed events; tests that
must prove an event (not the folder watcher) did the work pass `--no-watch` on
sqlite-folder too.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import pytest
import sqlalchemy as sa

from portfolio_sync.sources.auth import sign
from tests.acceptance.command import run_json
from tests.acceptance.serve_process import ServeProcess, serve_process, wait_for
from tests.integration.world import World

PAYLOADS = Path(__file__).resolve().parents[2] / "fixtures" / "payloads"
SECRET = "correct-horse-battery-staple"


def payload(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return data


def s3_event(world: World, path: str, *, removed: bool = False, bucket: str | None = None) -> bytes:
    """An AWS S3 event for `path`, key URL-encoded the way S3 does it (`+` for space)."""
    data = payload("s3-delete.json" if removed else "s3-put.json")
    record = data["Records"][0]["s3"]
    record["bucket"]["name"] = bucket or (world.s3.bucket if world.s3 else "local-folder")
    record["object"]["key"] = quote_plus(path, safe="/")
    return json.dumps(data).encode()


def row_event(kind: str, key: int, **changes: Any) -> dict[str, Any]:
    """A Supabase database webhook body for row `key` (the fixture's UUID replaced)."""
    data = payload(f"supabase-db-{kind}.json")
    for part in ("record", "old_record"):
        if data[part] is not None:
            data[part]["id"] = key
    for name, value in changes.items():
        part, _, column = name.partition("__")
        data[part][column] = value
    return data


@pytest.fixture
def start(world: World, tmp_path: Path) -> Iterator[Any]:
    """`start(*args, **env)` runs `serve` for this world; stopped (exit 0) at teardown."""
    stack: list[Any] = []

    def _start(*args: str, **env: str) -> ServeProcess:
        context = serve_process(world.env(**env), tmp_path, *args)
        server = context.__enter__()
        stack.append(context)
        return server

    yield _start
    for context in reversed(stack):
        context.__exit__(None, None, None)


def images_are(world: World, key: int, expected: set[str]) -> Any:
    return lambda: set(world.images(key) or []) == expected


def wait_idle(server: ServeProcess, world: World, timeout: float = 30.0) -> None:
    """Wait until no sync is waiting or running, so a check that something did *not*
    happen comes after everything queued so far has run. On PostgreSQL the jobs table
    says it (the product's queue gauge there is refreshed only every few seconds); on
    SQLite the service's own queue gauges are exact."""

    def idle() -> bool:
        if world.postgres:
            with world.engine.connect() as conn:
                return not conn.execute(
                    sa.text(
                        "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
                    )
                ).scalar_one()
        pending = server.metric("portfolio_sync_queue_pending")
        return pending == 0 and server.metric("portfolio_sync_queue_running") == 0

    wait_for(idle, timeout=timeout, what="queue idle")


# ---- (a)-(d) catch-up, upload and delete events, manual full pass --------------------------


def test_catch_up_then_events_then_manual_pass(world: World, start: Any) -> None:
    world.create_table()
    world.insert(1, None)
    world.insert(2, ["2/gone.png"])
    world.put("1/a.jpg")
    world.put("1/b.jpg")
    world.put("2/c.png")
    server = start("--no-watch")

    # (a) rows and files that existed before start converge through the catch-up pass
    wait_for(images_are(world, 1, {"1/a.jpg", "1/b.jpg"}), what="catch-up of row 1")
    wait_for(images_are(world, 2, {"2/c.png"}), what="catch-up of row 2")

    # (b) an upload announced by an S3 event, key with spaces and non-ASCII
    uploaded = "1/summer shoot été 1.jpg"
    world.put(uploaded)
    began = time.monotonic()
    answer = server.client.post("/hooks/storage", content=s3_event(world, uploaded))
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"queued": ["1"], "ignored": 0, "reason": None}
    wait_for(images_are(world, 1, {"1/a.jpg", "1/b.jpg", uploaded}), what="upload event")
    assert time.monotonic() - began < 5

    # (c) a delete event
    world.delete("1/a.jpg")
    answer = server.client.post("/hooks/storage", content=s3_event(world, "1/a.jpg", removed=True))
    assert answer.status_code == 202, answer.text
    wait_for(images_are(world, 1, {"1/b.jpg", uploaded}), what="delete event")

    # (d) an upload nobody announces is caught by the manual full pass
    world.put("2/d.png")
    wait_idle(server, world)
    assert set(world.images(2) or []) == {"2/c.png"}
    answer = server.client.post("/sync")
    assert answer.status_code == 202 and answer.json()["queued"] == ["*"]
    wait_for(images_are(world, 2, {"2/c.png", "2/d.png"}), what="manual full pass")

    state = server.portfolio("1")
    assert state is not None and state["in_sync"] and state["row_exists"]
    assert set(state["columns"]["images"]) == {"1/b.jpg", uploaded}
    assert server.portfolio("99") is None


def test_manual_sync_of_one_key(world: World, start: Any) -> None:
    world.create_table()
    world.insert(5, None)
    server = start("--no-watch")
    world.put("5/x.webp")
    answer = server.client.post("/sync/5")
    assert answer.status_code == 202 and answer.json()["queued"] == ["5"]
    wait_for(images_are(world, 5, {"5/x.webp"}), what="POST /sync/5")
    assert server.client.post("/sync/.hidden").status_code == 422


@pytest.mark.parametrize("world", ["sqlite-folder"], indirect=True)  # S3 has no watcher
def test_folder_watcher_runs_inside_serve(world: World, start: Any) -> None:
    world.create_table()
    world.insert(3, None)
    start()
    world.put("3/w.jpg")
    wait_for(images_are(world, 3, {"3/w.jpg"}), what="watcher")


# ---- (e) database webhooks -----------------------------------------------------------------


def test_database_webhooks(world: World, start: Any) -> None:
    world.create_table()
    server = start("--no-watch")
    post = server.client.post

    # INSERT of a row created after start: synced because of the webhook
    world.insert(7, None)
    world.put("7/x.jpg")
    answer = post("/hooks/database", json=row_event("insert", 7))
    assert answer.status_code == 202 and answer.json()["queued"] == ["7"], answer.text
    wait_for(images_are(world, 7, {"7/x.jpg"}), what="INSERT webhook")
    # the row is written before the sync is counted: let the count catch up first
    wait_for(
        lambda: server.metric("portfolio_sync_syncs_total", trigger="database") >= 1,
        what="INSERT sync counted",
    )

    # our own write comes back as an UPDATE of the images column only: nothing queued
    writes = world.writes()
    syncs = server.metric("portfolio_sync_syncs_total", trigger="database")
    own = row_event("update", 7, record__images=["7/x.jpg"], old_record__images=[])
    own["record"]["title"] = own["old_record"]["title"]
    answer = post("/hooks/database", json=own)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"queued": [], "ignored": 1, "reason": "only images columns changed"}
    wait_idle(server, world)
    assert world.writes() == writes
    assert server.metric("portfolio_sync_syncs_total", trigger="database") == syncs

    # a real edit (title) is queued; a changed key queues both keys
    answer = post("/hooks/database", json=row_event("update", 7))
    assert answer.status_code == 202 and answer.json()["queued"] == ["7"]
    moved = row_event("update", 7, old_record__id=8)
    assert post("/hooks/database", json=moved).json()["queued"] == ["8", "7"]

    # DELETE: recorded in the history, and no row is created for the orphan folder
    world.execute("DELETE FROM portfolios WHERE id = 7")
    deleted = row_event("delete", 7, old_record__images=["7/x.jpg"])
    answer = post("/hooks/database", json=deleted)
    assert answer.status_code == 202 and answer.json()["queued"] == ["7"]
    history = run_json("history", "7", env=world.env())["history"]
    assert history[0]["trigger"] == "database:DELETE"
    assert history[0]["removed"] == ["7/x.jpg"]
    wait_idle(server, world)  # the queued sync of 7 has run, and created no row
    state = server.portfolio("7")
    assert state is not None and not state["row_exists"]
    assert state["listing"]["images"] == ["7/x.jpg"]

    # other tables are acknowledged and ignored; unusable keys are 422
    other = row_event("insert", 7)
    other["table"] = "invoices"
    assert post("/hooks/database", json=other).json()["reason"].startswith("not the configured")
    for bad in (True, 1.5, {"a": 1}, None, "a/b"):
        answer = post("/hooks/database", json=row_event("insert", 7, record__id=bad))
        assert answer.status_code == 422, (bad, answer.text)


# ---- (f) authentication ----------------------------------------------------------------------


def test_webhook_secret(world: World, start: Any) -> None:
    world.create_table()
    world.insert(1, None)
    server = start("--no-watch", PORTFOLIO_SYNC_WEBHOOK_SECRET=SECRET)
    world.put("1/a.jpg")
    body = s3_event(world, "1/a.jpg")
    post = server.client.post

    def signed(msg_id: str, age: float = 0.0) -> dict[str, str]:
        stamp = int(time.time() - age)
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(SECRET, msg_id, stamp, body),
        }

    assert post("/hooks/storage", content=body).status_code == 401
    assert post("/sync").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert post("/hooks/storage", content=body, headers=wrong).status_code == 401
    bearer = {"Authorization": f"Bearer {SECRET}"}
    assert post("/hooks/storage", content=body, headers=bearer).status_code == 202
    assert post("/sync/1", headers={"X-Webhook-Secret": SECRET}).status_code == 202

    answer = post("/hooks/storage", content=body, headers=signed("msg_1"))
    assert answer.status_code == 202, answer.text
    replay = post("/hooks/storage", content=body, headers=signed("msg_2", age=360))
    assert replay.status_code == 401 and "old" in replay.json()["error"]
    tampered = post("/hooks/storage", content=body + b" ", headers=signed("msg_3"))
    assert tampered.status_code == 401

    again = post("/hooks/storage", content=body, headers=signed("msg_1"))
    assert again.status_code == 200
    assert again.json()["queued"] == [] and again.json()["reason"] == "duplicate webhook-id"
    assert server.metric("portfolio_sync_events_total", source="s3", outcome="accepted") == 2
    assert server.metric("portfolio_sync_events_total", source="storage", outcome="duplicate") == 1
    wait_for(images_are(world, 1, {"1/a.jpg"}), what="authenticated event")


def test_loopback_only_without_secret(world: World, start: Any) -> None:
    world.create_table()
    server = start("--no-watch")
    # uvicorn trusts X-Forwarded-For from 127.0.0.1: a local proxy forwarding a remote
    # client must not make it look local
    answer = server.client.post("/sync", headers={"X-Forwarded-For": "203.0.113.7"})
    assert answer.status_code == 403 and "WEBHOOK_SECRET" in answer.json()["error"]
    assert server.client.post("/sync").status_code == 202


# ---- (g) + (i) limits, malformed input, health, metrics, OpenAPI ---------------------------


def test_limits_errors_and_operations(world: World, start: Any) -> None:
    world.create_table()
    world.insert(1, None)
    server = start("--no-watch")
    post = server.client.post
    limit = 1 << 20

    too_big = post("/hooks/storage", content=b"{" + b" " * limit + b"}")
    assert too_big.status_code == 413 and "larger" in too_big.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: cut off while streaming
        for _ in range(20):
            yield b" " * (128 * 1024)

    assert post("/hooks/database", content=chunks()).status_code == 413
    assert post("/hooks/storage", content=b" " * (limit - 10) + b"{}").status_code == 422

    assert post("/hooks/storage", content=b"{not json").status_code == 400
    assert post("/hooks/database", content=b"\xff\xfe").status_code == 400
    unknown = post("/hooks/storage", json={"hello": "world"})
    assert unknown.status_code == 422 and "unrecognised" in unknown.json()["error"]
    assert post("/hooks/database", json={"type": "TRUNCATE"}).status_code == 422

    # content type is irrelevant (SNS posts JSON as text/plain); test events are a 200
    world.put("1/a.jpg")
    plain = {"Content-Type": "text/plain; charset=UTF-8"}
    assert (
        post("/hooks/storage", content=s3_event(world, "1/a.jpg"), headers=plain).status_code == 202
    )
    test_event = post("/hooks/storage", content=(PAYLOADS / "s3-test-event.json").read_bytes())
    assert test_event.status_code == 200 and test_event.json()["queued"] == []
    confirm = post(
        "/hooks/storage", content=(PAYLOADS / "sns-subscription-confirmation.json").read_bytes()
    )
    assert confirm.status_code == 200 and "not confirmed" in confirm.json()["reason"]
    assert "SubscribeURL" in server.log() or "subscribe_url" in server.log()

    # events outside the bucket, the layout or the file types are counted, not queued
    outside = [
        s3_event(world, "1/notes.txt"),
        s3_event(world, "loose.jpg"),
        s3_event(world, "1/.hidden.jpg"),
    ]
    if world.s3 is not None:
        outside.append(s3_event(world, "1/a.jpg", bucket="someone-elses-bucket"))
    for body in outside:
        answer = post("/hooks/storage", content=body)
        assert answer.status_code == 200 and answer.json()["ignored"] == 1, answer.text
    assert server.metric("portfolio_sync_events_total", outcome="out_of_scope") == len(outside)
    wait_for(images_are(world, 1, {"1/a.jpg"}), what="text/plain event")

    ready = server.client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert ready.json()["status"] == "ok" and set(checks.values()) == {"ok"}
    assert {"database", "storage", "storage_root", "scheduler", "held_writes"} <= set(checks)
    last = ready.json()["last_full_pass"]  # the catch-up pass at start, once it has run
    assert last is None or (last["outcome"] == "ok" and last["consecutive_failures"] == 0)
    assert server.client.get("/healthz").json() == {"status": "ok"}
    metrics = server.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "portfolio_sync_syncs_total" in metrics.text
    assert "portfolio_sync_events_total" in metrics.text

    spec = server.client.get("/openapi.json").json()
    expected = {
        ("/hooks/storage", "post"),
        ("/hooks/database", "post"),
        ("/sync", "post"),
        ("/sync/{key}", "post"),
        ("/portfolios/{key}", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    }
    listed = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert expected <= listed
    for path, method in expected:
        assert spec["paths"][path][method]["summary"], (path, method)
    assert server.client.get("/docs").status_code == 200
    missing = server.client.get("/portfolios/404")
    assert missing.status_code == 404 and "error" in missing.json()


# ---- (h) a burst of 1,000 upload events into one folder ------------------------------------


def test_burst_of_events_costs_a_handful_of_syncs(world: World, start: Any) -> None:
    world.create_table()
    world.insert(1, None)
    world.log_syncs()  # every sync of key 1 counted by the database, not by /metrics
    # No watcher: only webhook-driven syncs are counted; no scheduled pass. Follow-ups
    # wait the debounce (5 s) each: a burst sent in under 20 s costs at most five syncs,
    # however much a loaded machine stretches the sending.
    server = start("--no-watch", PORTFOLIO_SYNC_DEBOUNCE="5", PORTFOLIO_SYNC_SCHEDULE="0 0 1 1 *")
    paths = [f"1/img-{i:04d}.jpg" for i in range(1000)]
    world.put_many(paths)
    bodies = [s3_event(world, path) for path in paths]
    wait_idle(server, world)  # the catch-up pass at start
    before = world.syncs(1)

    statuses: list[int] = []
    lock = threading.Lock()

    def send(part: list[bytes]) -> None:
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            got = [client.post("/hooks/storage", content=body).status_code for body in part]
        with lock:
            statuses.extend(got)

    began = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, [bodies[i::4] for i in range(4)]))
    sent_in = time.monotonic() - began
    assert statuses.count(202) == 1000, Counter(statuses)

    wait_for(images_are(world, 1, set(paths)), timeout=30, what="1,000 uploads in the row")
    wait_idle(server, world)
    syncs = world.syncs(1) - before
    print(f"\n[{world.kind}] 1,000 events sent in {sent_in:.2f} s -> {syncs} syncs")
    assert 1 <= syncs <= 5, (syncs, sent_in)
    assert world.writes() >= 1


def test_state_after_burst_is_the_folder(world: World, start: Any) -> None:
    """A deletion burst mixed with uploads ends with the row equal to the folder."""
    world.create_table()
    world.insert(1, None)
    server = start("--no-watch")
    paths = [f"1/p-{i:03d}.png" for i in range(60)]
    world.put_many(paths)
    for path in paths[:20]:
        world.delete(path)
    events = [s3_event(world, p) for p in paths] + [
        s3_event(world, p, removed=True) for p in paths[:20]
    ]
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda b: server.client.post("/hooks/storage", content=b), events))
    assert {c.status_code for c in codes} == {202}
    wait_for(images_are(world, 1, set(paths[20:])), what="row equals folder")
    state = server.portfolio("1")
    assert state is not None and state["in_sync"]
