"""No request body makes the real server answer 5xx, or changes a row.

One `portfolio-sync serve` (SQLite + folder) gets at least 2,000 generated requests per
POST endpoint: random bytes, random JSON, the payload fixtures with parts replaced or
removed, and near-valid event shapes with odd keys, paths and types. A 4xx is fine (that
is the sender's problem, stated in the body); a 5xx is our bug.

The server counts the requests it answered (``portfolio_sync_http_requests_total`` by
route template), and each test asserts its number there: hypothesis' ``max_examples``
is only a ceiling. After each
test the queue must be idle, every row as it was, and the part of the server log written
during that test free of handler crashes, whichever order the tests run in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.acceptance.serve_process import ServeProcess, serve_process, wait_for
from tests.integration.world import World

PAYLOADS = Path(__file__).resolve().parents[2] / "fixtures" / "payloads"
FIXTURES = [json.loads(p.read_text()) for p in sorted(PAYLOADS.glob("*.json"))]

pytestmark = pytest.mark.timeout(400)  # 2,000 requests per test on a shared machine

FUZZ = settings(
    max_examples=2000,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


KEYS = (1, 2, 42)


@dataclass
class Site:
    server: ServeProcess
    world: World
    rows: dict[int, list[str] | None]
    writes: int


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("fuzz")
    root = tmp / "storage"
    root.mkdir()
    world = World(kind="sqlite-folder", database_url=f"sqlite:///{tmp / 'app.db'}", root=root)
    world.create_table()
    for key in KEYS:
        world.insert(key, None)
        world.put(f"{key}/a.jpg")
    try:
        # A long settle time keeps the syncs the fuzzing queues from competing with it.
        env = world.env(PORTFOLIO_SYNC_DEBOUNCE="2.0")
        with serve_process(env, tmp, "--no-watch") as proc:
            converged = {key: [f"{key}/a.jpg"] for key in KEYS}
            wait_for(lambda: _rows(world) == converged, what="catch-up pass")
            yield Site(server=proc, world=world, rows=converged, writes=world.writes())
    finally:
        world.close()


def _rows(world: World) -> dict[int, list[str] | None]:
    return {key: world.images(key) for key in KEYS}


@pytest.fixture(scope="module")
def client(site: Site) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=site.server.url, timeout=10.0) as c:
        yield c


@pytest.fixture(autouse=True)
def nothing_changed(site: Site) -> Iterator[None]:
    """After each test: no crash logged meanwhile, and once the queue is idle, every row
    is as it was and nothing was written."""
    offset = len(site.server.log())
    yield

    def idle() -> bool:
        pending = site.server.metric("portfolio_sync_queue_pending")
        return pending == 0 and site.server.metric("portfolio_sync_queue_running") == 0

    wait_for(idle, timeout=60, what="queue idle")
    assert _rows(site.world) == site.rows
    assert site.world.writes() == site.writes
    log = site.server.log()[offset:]
    assert "request_failed" not in log and "Exception in ASGI application" not in log, log[-3000:]


@contextmanager
def at_least(site: Site, count: int) -> Iterator[None]:
    """The block must make the server answer ``count`` requests, none with a 5xx, as the
    server counted them (its own ``/metrics`` scrapes left out)."""
    metric = site.server.metric

    def answered(**status: str) -> float:
        name = "portfolio_sync_http_requests_total"
        return metric(name, **status) - metric(name, route="/metrics", **status)

    before, failed = answered(), answered(status="5xx")
    yield
    assert answered() - before >= count, f"only {answered() - before:.0f} requests answered"
    assert answered(status="5xx") == failed


# ---- strategies ------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["", "/", "42/a.jpg", "%ZZ", "a+b%2F", "\x00", "..", "ObjectCreated:Put"])
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=8,
)
keys = st.text(max_size=40) | st.sampled_from(["1", "42", "-1", "1.0", "a/b", ".x", "*"])
event_names = st.sampled_from(
    [
        "ObjectCreated:Put",
        "s3:ObjectRemoved:Delete",
        "ObjectRestore:Post",
        "LifecycleExpiration:Delete",
    ]
) | st.text(max_size=20)


def _slots(node: Any, out: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Every (container, index-or-name) pair in a JSON value, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for name, child in list(items):
        out.append((node, name))
        if isinstance(child, dict | list):
            _slots(child, out)
    return out


@st.composite
def mutated_fixture(draw: st.DrawFn) -> Any:
    """A fixture payload with a few nodes replaced by random JSON or removed."""
    data = json.loads(json.dumps(draw(st.sampled_from(FIXTURES))))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(data, []) if isinstance(data, dict | list) else []
        if not slots:
            break
        parent, name = draw(st.sampled_from(slots))
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[name]
        else:
            parent[name] = draw(json_values)
    return data


object_keys = st.tuples(
    st.sampled_from(["1/", "42/", "", "x/", "1/sub/", "%31/"]),
    st.text(max_size=12),
    st.sampled_from([".jpg", ".PNG", ".txt", ""]),
).map("".join)


@st.composite
def near_valid(draw: st.DrawFn) -> Any:
    """Shapes the parsers accept, filled with odd keys, paths, buckets and types."""
    shape = draw(st.sampled_from(["row", "s3", "r2", "r2-batch"]))
    if shape == "row":
        key_value = draw(st.integers() | keys | st.booleans() | st.floats() | st.none())
        images = draw(st.lists(st.text(max_size=8), max_size=3) | scalars)
        record = {"id": key_value, "title": draw(st.text(max_size=5)), "images": images}
        old = draw(st.sampled_from([None, "same", "other"]))
        return {
            "type": draw(st.sampled_from(["INSERT", "UPDATE", "DELETE"])),
            "schema": draw(st.sampled_from(["public", "storage", "x"])),
            "table": draw(st.sampled_from(["portfolios", "objects", "other"])),
            "record": draw(st.sampled_from([None, record])),
            "old_record": {"same": dict(record), "other": {"id": draw(keys)}}.get(old or ""),
        }
    if shape == "s3":
        records = [
            {
                "eventName": draw(event_names),
                "s3": {
                    "bucket": {"name": draw(st.sampled_from(["b", "", None]))},
                    "object": {"key": draw(object_keys)},
                },
            }
            for _ in range(draw(st.integers(0, 3)))
        ]
        return {"Records": records}
    r2 = {
        "action": draw(st.sampled_from(["PutObject", "DeleteObject", "X"])),
        "bucket": "b",
        "object": {"key": draw(object_keys)},
    }
    return r2 if shape == "r2" else [r2, r2]


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8", "surrogatepass")


bodies = (
    st.binary(max_size=600)
    | json_values.map(encoded)
    | mutated_fixture().map(encoded)
    | near_valid().map(encoded)
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(["application/json", "text/plain", "x/y", ""]),
        "webhook-id": st.text(alphabet="abcdef0123456789", min_size=1, max_size=6),
        "authorization": st.sampled_from(["Bearer x", "Basic !!", "Weird"]),
    },
)


def assert_no_5xx(answer: httpx.Response, body: bytes) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text, body[:300])
    assert answer.headers.get("content-type", "").startswith("application/json")


# ---- the tests -------------------------------------------------------------------------


def test_storage_hook_never_5xx(site: Site, client: httpx.Client) -> None:
    @FUZZ
    @given(body=bodies, extra=headers)
    def post(body: bytes, extra: dict[str, str]) -> None:
        assert_no_5xx(client.post("/hooks/storage", content=body, headers=extra), body)

    with at_least(site, 2000):
        post()


def test_database_hook_never_5xx(site: Site, client: httpx.Client) -> None:
    @FUZZ
    @given(body=bodies, extra=headers)
    def post(body: bytes, extra: dict[str, str]) -> None:
        assert_no_5xx(client.post("/hooks/database", content=body, headers=extra), body)

    with at_least(site, 2000):
        post()


def test_sync_all_never_5xx(site: Site, client: httpx.Client) -> None:
    @FUZZ
    @given(body=st.binary(max_size=600) | json_values.map(encoded), extra=headers)
    def post(body: bytes, extra: dict[str, str]) -> None:
        assert_no_5xx(client.post("/sync", content=body, headers=extra), body)

    with at_least(site, 2000):
        post()


path_keys = st.text(min_size=1, max_size=60).map(
    lambda k: quote(k.encode("utf-8", "surrogatepass"), safe="")
) | st.binary(min_size=1, max_size=30).map(lambda b: quote(b, safe=""))


def test_sync_key_never_5xx(site: Site, client: httpx.Client) -> None:
    @FUZZ
    @given(key=path_keys, body=st.binary(max_size=200))
    def post(key: str, body: bytes) -> None:
        answer = client.post(f"/sync/{key}", content=body)
        assert answer.status_code < 500, (answer.status_code, answer.text, key)

    with at_least(site, 2000):
        post()


def test_portfolio_read_never_5xx(site: Site, client: httpx.Client) -> None:
    @settings(FUZZ, max_examples=500)
    @given(key=path_keys, query=st.dictionaries(st.sampled_from(["limit", "after"]), keys))
    def get(key: str, query: dict[str, str]) -> None:
        answer = client.get(f"/portfolios/{key}", params=query)
        assert answer.status_code < 500, (answer.status_code, answer.text, key)

    with at_least(site, 500):
        get()
