"""The console through the whole ASGI app (`create_app`) over a started `Runtime`: the
portfolio page, filters, panels, offline docs, and who may press which button.

Real SQLite file and folder of real images (the demo set); the client address is set per
test (loopback or another machine). The browser-level behaviour (live updates, layout,
console errors) is in test_console_browser.py.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from portfolio_sync.backends import schema
from portfolio_sync.cli.demo import create_demo, make_image
from portfolio_sync.config import Settings, load_settings
from portfolio_sync.runtime import Runtime
from portfolio_sync.web import docs
from portfolio_sync.web.app import create_app
from portfolio_sync.web.session import COOKIE
from portfolio_sync.wiring import open_service
from tests.acceptance.web.test_dashboard import Page, demo_settings

SECRET = "s3cret-for-the-console"
LOOPBACK = ("127.0.0.1", 40000)
ELSEWHERE = ("203.0.113.7", 40000)
SAME_SITE = {"Sec-Fetch-Site": "same-origin", "Origin": "http://console"}


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    directory = tmp_path / "demo"
    create_demo(directory, portfolios=12)
    with open_service(demo_settings(directory)) as svc:
        assert svc.reconciler.sync_all("test").ok
    return directory


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[tuple[FastAPI, Runtime]]:
    """The app over a started runtime."""
    with open_service(settings) as svc:
        async with Runtime(svc, watch=False, catch_up=False) as runtime:
            yield create_app(runtime), runtime


def client_of(app: FastAPI, address: tuple[str, int]) -> httpx.AsyncClient:
    """A client of `app` whose requests come from `address`."""
    transport = httpx.ASGITransport(app=app, client=address)
    return httpx.AsyncClient(transport=transport, base_url="http://console")


@asynccontextmanager
async def console(
    settings: Settings, client: tuple[str, int] = LOOPBACK
) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    async with started(settings) as (app, runtime), client_of(app, client) as http:
        yield http, runtime


async def token(http: httpx.AsyncClient, url: str = "/") -> str:
    """Load a page (starting a session) and return its forms' CSRF token."""
    page = await http.get(url)
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found, "no form on the page"
    return found.group(1)


async def post(http: httpx.AsyncClient, url: str, **fields: str) -> httpx.Response:
    return await http.post(url, data=fields, headers=SAME_SITE)


def keys(html: str) -> list[str]:
    return list(Page(html).portfolios())


# ---- the portfolio page ----------------------------------------------------------------------
async def test_portfolio_page_shows_the_difference_and_pages(demo: Path) -> None:
    folder = demo / "storage" / "3"
    for n in range(10, 80):  # a big folder: 70 new files
        (folder / f"extra-{n}.jpg").write_bytes((folder / "photo-1.jpg").read_bytes())
    with sqlite3.connect(demo / "portfolio-sync.db") as db:
        db.execute(
            "UPDATE portfolios SET images = json_insert(images, '$[#]', '3/vanished.jpg') "
            "WHERE id = 3"
        )
    db.close()
    async with console(demo_settings(demo)) as (http, _):
        first = await http.get("/p/3")
        second = await http.get("/p/3?at=60")
        missing = await http.get("/p/404")
    assert first.status_code == 200
    html = first.text
    assert 'class="badge warn"' in html and "out of sync +70 \u22121" in html
    assert html.count('class="cell file add"') + html.count('class="cell file both"') == 60
    assert 'loading="lazy" width="160"' in html
    assert '<a href="/p/3?at=60">next 60 »</a>' in html
    assert "images 1\u201360 of" in html
    assert "3/vanished.jpg" in second.text and 'class="cell row remove"' in second.text
    assert "«" in second.text and "previous 60" in second.text
    assert missing.status_code == 404 and "no row, no folder" in missing.text


async def test_portfolio_page_lists_history_and_errors(demo: Path) -> None:
    async with console(demo_settings(demo)) as (http, runtime):
        schema.record_error(runtime.service.catalog.engine, "2", "listing failed: <boom>")
        html = (await http.get("/p/2")).text
    assert "listing failed: &lt;boom&gt;" in html and "<boom>" not in html
    assert re.search(r'<span class="trigger">test</span>\s*<span class="add-text">\+', html)


async def test_portfolio_page_shows_each_collection(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    for sub, names in (("before", ["b1.jpg", "b2.jpg"]), ("after", ["a1.jpg"])):
        for name in names:
            make_image(storage / "5" / sub / name, hue=0.4, label=name)
    db = sqlite3.connect(tmp_path / "app.db")
    with db:
        db.execute("CREATE TABLE portfolios (id INTEGER PRIMARY KEY, before TEXT, after TEXT)")
        db.execute("INSERT INTO portfolios VALUES (5, '[\"5/before/b1.jpg\"]', NULL)")
    db.close()
    settings = load_settings(
        None,
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        storage_url=str(storage),
        collections="before={key}/before/,after={key}/after/",
    )
    async with console(settings) as (http, _):
        html = (await http.get("/p/5")).text
    before, after = html.split('<section class="collection"')[1:3]
    assert "<code>before</code> ← <code>5/before/</code>" in before
    assert "1 in the row · 2 in the folder" in before and "+1 to add" in before
    assert "<code>after</code> ← <code>5/after/</code>" in after
    assert "0 in the row · 1 in the folder" in after and "a1.jpg" in after


# ---- main page: filters, search, panels ------------------------------------------------------
async def test_filters_and_search(demo: Path) -> None:
    with sqlite3.connect(demo / "portfolio-sync.db") as db:
        db.execute("UPDATE portfolios SET images = '[]' WHERE id IN (4, 11)")
        db.execute("INSERT INTO portfolios (id, title) VALUES (13, 'new')")
    db.close()
    async with console(demo_settings(demo)) as (http, runtime):
        engine = runtime.service.catalog.engine
        schema.record_error(engine, "7", "boom")
        assert keys((await http.get("/?only=error")).text) == ["7"]
        # Never synced: no sync wrote or checked the key on its own (a full pass that finds
        # a row in sync records nothing; the demo made 3, 6, 9 and 12 in sync already).
        assert keys((await http.get("/?only=never")).text) == ["3", "6", "9", "12", "13"]
        assert keys((await http.get("/?only=drift")).text) == ["4", "11", "13"]
        assert keys((await http.get("/?only=drift&limit=2")).text) == ["4", "11"]
        assert keys((await http.get("/?only=drift&limit=2&after=11")).text) == ["13"]
        assert keys((await http.get("/?q=1")).text) == ["1", "10", "11", "12", "13"]
        assert keys((await http.get("/?q=1&after=10&limit=2")).text) == ["11", "12"]
        assert keys((await http.get("/?q=%25")).text) == []  # LIKE wildcards are literal
        assert (await http.get("/?only=stale")).status_code == 422
        fragment = await http.get("/?fragment=1")
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert keys(fragment.text) == [str(n) for n in range(1, 14)]


async def test_orphan_folders_panel_lists_the_last_full_pass(demo: Path) -> None:
    async with console(demo_settings(demo)) as (http, _):
        html = (await http.get("/")).text
    panel = html.split('id="panel-orphans"')[1].split("</section>")[0]
    assert "1 folder(s) without a row" in panel and '<a href="/p/13"><code>13</code></a>' in panel


# ---- held writes: panel, portfolio page, filter, release -------------------------------------
DRASTIC = (1, 2, 3, 4, 6, 7, 8, 9)  # demo folders of 3+ images: keeping one removes most


def hold(demo: Path) -> list[str]:
    """Keep only photo-1 in the `DRASTIC` folders and sync each key on its own, as a storm
    of removal events would: the guard's window lets the first few through, holds the rest."""
    for key in DRASTIC:
        for file in (demo / "storage" / str(key)).iterdir():
            if file.name != "photo-1.jpg":
                file.unlink()
    with open_service(demo_settings(demo)) as svc:
        results = [svc.reconciler.sync_one(str(key), "test:storm") for key in DRASTIC]
    held = [r.key for r in results if r.status == "held"]
    assert held and {r.status for r in results} == {"changed", "held"}, results
    return held


def row_images(demo: Path, key: str) -> list[str]:
    with sqlite3.connect(demo / "portfolio-sync.db") as db:
        (value,) = db.execute("SELECT images FROM portfolios WHERE id = ?", (key,)).fetchone()
    db.close()
    found: list[str] = json.loads(value)
    return found


async def test_held_writes_panel_portfolio_page_and_filter(demo: Path) -> None:
    held = hold(demo)
    first = held[0]
    before = row_images(demo, first)
    async with console(demo_settings(demo), client=ELSEWHERE) as (http, _):
        main = (await http.get("/")).text
        only = (await http.get("/?only=held")).text
        portfolio = (await http.get(f"/p/{first}")).text
        calm = (await http.get("/p/5")).text
    panel = main.split('id="panel-held"')[1].split("</section>")[0]
    assert re.findall(r'<tr data-key="([^"]+)">', panel) == held
    row = panel.split(f'<tr data-key="{first}">')[1].split("</tr>")[0]
    assert f'<a href="/p/{first}"><code>{first}</code></a>' in row
    assert "<time datetime=" in row and "rows were emptied by single syncs" in row
    assert f'+0</span> <span class="remove-text">\u2212{len(before) - 1}</span>' in row
    assert 'id="release-all"' not in panel  # another machine, no secret: no button
    assert f'href="/?only=held" class="bad">{len(held)}</a>' in main
    assert keys(only) == held
    section = portfolio.split('id="held"')[1].split("</section>")[0]
    assert "asked by <code>test:storm</code>" in section
    assert f"\u2212{len(before) - 1}</span>" in section
    assert f"<li><code>{first}/photo-1.jpg</code></li>" in section  # the listing it came from
    assert "The listing that asked for it (1 file(s))" in section
    assert 'id="release"' not in section
    assert 'id="held"' not in calm


async def test_release_from_the_portfolio_page_and_the_panel(demo: Path) -> None:
    held = hold(demo)
    first, rest = held[0], held[1:]
    async with console(demo_settings(demo)) as (http, runtime):
        csrf = await token(http, f"/p/{first}")
        page = (await http.get(f"/p/{first}")).text
        assert 'id="release"' in page and f'name="key" value="{first}"' in page
        for fields, headers, reason in (
            ({"key": first}, SAME_SITE, "token is missing"),
            ({"csrf": csrf, "key": first}, {"Sec-Fetch-Site": "cross-site"}, "cross-site"),
            ({"csrf": csrf, "key": "../x"}, SAME_SITE, ""),
        ):
            refused = await http.post("/console/release", data=fields, headers=headers)
            assert refused.status_code in (403, 422) and reason in refused.text, refused.text
        assert row_images(demo, first) != [f"{first}/photo-1.jpg"]  # nothing released
        one = await post(http, "/console/release", csrf=csrf, key=first)
        assert one.status_code == 303 and one.headers["location"] == f"/p/{first}?done=release"
        assert row_images(demo, first) == [f"{first}/photo-1.jpg"]
        page = (await http.get(f"/p/{first}?done=release")).text
        assert "Held writes released" in page and 'id="held"' not in page
        assert '<span class="trigger">release:console</span>' in page
        assert runtime.metrics.held._value.get() == len(rest)
        main = (await http.get("/")).text
        assert ('id="release-all"' in main) == bool(rest)
        everything = await post(http, "/console/release", csrf=csrf)
        assert everything.status_code == 303 and everything.headers["location"] == "/?done=release"
        main = (await http.get("/?done=release")).text
        assert keys((await http.get("/?only=held")).text) == []
    assert all(row_images(demo, key) == [f"{key}/photo-1.jpg"] for key in rest)
    panel = main.split('id="panel-held"')[1].split("</section>")[0]
    assert "None: no write is waiting" in panel and 'id="release-all"' not in panel


async def test_release_against_an_empty_storage_root_keeps_the_writes_held(demo: Path) -> None:
    held = hold(demo)
    before = {key: row_images(demo, key) for key in held}
    (demo / "storage").rename(demo / "unmounted")
    (demo / "storage").mkdir()  # the volume is not mounted: an empty root
    async with console(demo_settings(demo)) as (http, _):
        csrf = await token(http)
        answer = await post(http, "/console/release", csrf=csrf)
        still = keys((await http.get("/?only=held")).text)
    assert answer.status_code == 409 and "Not released" in answer.text
    reason = answer.text.split('id="reason">')[1].split("</p>")[0]
    assert all(f"{key}: " in reason for key in held) and "holds nothing" in reason
    assert still == held and {key: row_images(demo, key) for key in held} == before


async def test_release_refused_from_another_machine_and_before_login(demo: Path) -> None:
    held = hold(demo)
    async with (
        started(demo_settings(demo)) as (app, _),
        client_of(app, ELSEWHERE) as far,
        client_of(app, LOOPBACK) as near,
    ):
        csrf = await token(near)
        far.cookies.set(COOKIE, near.cookies[COOKIE])
        refused = await post(far, "/console/release", csrf=csrf)
        assert refused.status_code == 403
    async with console(demo_settings(demo, webhook_secret=SECRET), client=ELSEWHERE) as (http, _):
        csrf = await token(http, "/login")
        anonymous = await post(http, "/console/release", csrf=csrf)
        assert anonymous.status_code == 401
        assert 'id="release-all"' not in (await http.get("/")).text
        await post(http, "/login", csrf=csrf, secret=SECRET)
        csrf = await token(http)
        assert 'id="release-all"' in (await http.get("/")).text
        done = await post(http, "/console/release", csrf=csrf, key=held[0])
        assert done.status_code == 303
    assert row_images(demo, held[0]) == [f"{held[0]}/photo-1.jpg"]
    assert all(row_images(demo, key) != [f"{key}/photo-1.jpg"] for key in held[1:])


async def test_portfolio_page_shows_names_that_are_not_utf8(demo: Path) -> None:
    bad = os.path.join(os.fsencode(demo / "storage" / "2"), b"scan-\xff.jpg")
    open(bad, "wb").close()
    async with console(demo_settings(demo)) as (http, _):
        shown = (await http.get("/p/2")).text
        other = (await http.get("/p/3")).text
        os.remove(bad)
        renamed = (await http.get("/p/2")).text
    skipped = shown.split('id="skipped"')[1].split("</dd>")[0]
    assert "1 file(s) left out" in skipped and "<code>2/scan-\\xff.jpg</code>" in skipped
    assert 'id="skipped"' not in other and 'id="skipped"' not in renamed


# ---- docs and assets -------------------------------------------------------------------------
async def test_docs_and_assets_are_served_by_the_app(demo: Path) -> None:
    async with console(demo_settings(demo)) as (http, _):
        swagger, redoc = (await http.get("/docs")).text, (await http.get("/redoc")).text
        bundle = await http.get(f"{docs.ASSETS}/redoc.standalone.js")
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert (await http.get(f"{docs.ASSETS}/{asset}")).status_code == 200
        icon = await http.get("/favicon.ico")
        css = await http.get("/static/console.css")
        js = await http.get("/static/console.js")
    for page in (swagger, redoc):
        assert "https://" not in page and f"{docs.ASSETS}/" in page
    assert bundle.status_code == 200 and b"cdn.redoc.ly" not in bundle.content
    assert icon.status_code == 200 and icon.content[:4] == b"\x00\x00\x01\x00"  # an ICO
    assert css.status_code == js.status_code == 200


# ---- actions without a secret: loopback, same site, CSRF token -------------------------------
async def test_actions_on_loopback_need_the_form_token(demo: Path) -> None:
    with sqlite3.connect(demo / "portfolio-sync.db") as db:
        db.execute("UPDATE portfolios SET images = '[]' WHERE id = 2")
    db.close()
    async with console(demo_settings(demo)) as (http, runtime):
        csrf = await token(http, "/p/2")
        cookie = http.cookies[COOKIE]
        assert csrf and cookie
        refusals: list[tuple[dict[str, Any], dict[str, str], int, str]] = [
            ({"key": "2"}, SAME_SITE, 403, "token is missing"),
            ({"csrf": csrf + "x"}, SAME_SITE, 403, "token is missing or stale"),
            ({"csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}, 403, "cross-site"),
            ({"csrf": csrf}, {"Origin": "http://evil.example"}, 403, "Origin is another site"),
            (
                {"csrf": csrf},
                {"Sec-Fetch-Site": "same-site", "Origin": "http://console"},
                403,
                "Sec-Fetch-Site: same-site",
            ),
            ({"csrf": csrf}, {"Origin": "null"}, 403, "Origin: null"),
        ]
        for fields, headers, status, reason in refusals:
            answer = await http.post("/p/2/sync", data=fields, headers=headers)
            assert (answer.status_code, reason in answer.text) == (status, True), answer.text
        as_json = await http.post("/p/2/sync", json={"csrf": csrf}, headers=SAME_SITE)
        assert as_json.status_code == 415
        accepted = runtime.metrics.events.labels("console", "accepted")
        assert accepted._value.get() == 0
        # Behind a proxy that rewrites Host, the browser's Sec-Fetch-Site still decides.
        proxied = {"Sec-Fetch-Site": "same-origin", "Origin": "https://console.example"}
        behind = await http.post("/p/2/sync", data={"csrf": csrf}, headers=proxied)
        assert behind.status_code == 303
        forwarded = {"Origin": "https://console.example", "X-Forwarded-Host": "console.example"}
        behind = await http.post("/p/2/sync", data={"csrf": csrf}, headers=forwarded)
        assert behind.status_code == 303
        await runtime.queue.join()
        done = await post(http, "/p/2/sync", csrf=csrf)
        assert done.status_code == 303 and done.headers["location"] == "/p/2?done=sync"
        await runtime.queue.join()
        page = await http.get("/p/2?done=sync")
        assert "Sync queued." in page.text and ">in sync<" in page.text
        dry = await post(http, "/console/pass", csrf=csrf, dry_run="1")
        assert dry.status_code == 200 and "0 would change" in dry.text
        full = await post(http, "/console/pass", csrf=csrf)
        assert full.status_code == 303 and full.headers["location"] == "/?done=all"
        bad_key = await post(http, "/p/..%2Fx/sync", csrf=csrf)
        assert bad_key.status_code in (404, 422)


async def test_actions_from_another_machine_without_a_secret(demo: Path) -> None:
    async with (
        started(demo_settings(demo)) as (app, runtime),
        client_of(app, ELSEWHERE) as far,
        client_of(app, LOOPBACK) as near,
    ):
        page = await far.get("/")
        assert "Actions are allowed from this machine only" in page.text
        assert 'id="full-pass"' not in page.text and 'name="csrf"' not in page.text
        assert 'id="sync-now"' not in (await far.get("/p/1")).text
        # A session and token from this machine, replayed from another one, are refused.
        csrf = await token(near)
        far.cookies.set(COOKIE, near.cookies[COOKIE])
        refused = await post(far, "/console/pass", csrf=csrf)
        assert not runtime.settings.webhook_secret
    assert refused.status_code == 403 and "only requests from this machine" in refused.text


# ---- actions with a secret: the login ---------------------------------------------------------
async def test_login_with_the_secret(demo: Path) -> None:
    settings = demo_settings(demo, webhook_secret=SECRET)
    async with console(settings, client=ELSEWHERE) as (http, _):
        csrf = await token(http, "/login")
        anonymous = await post(http, "/console/pass", csrf=csrf)
        assert anonymous.status_code == 401 and "log in" in anonymous.text
        wrong = await post(http, "/login", csrf=csrf, secret="nope")
        assert wrong.status_code == 401 and "not the secret" in wrong.text
        right = await post(http, "/login", csrf=csrf, secret=SECRET)
        assert right.status_code == 303 and right.headers["location"] == "/?done=login"
        set_cookie = right.headers["set-cookie"]
        for flag in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"):
            assert flag in set_cookie, set_cookie
        stale = await post(http, "/console/pass", csrf=csrf)  # the anonymous session's token
        assert stale.status_code == 403
        csrf = await token(http)
        assert (await post(http, "/console/pass", csrf=csrf)).status_code == 303
        # The session cookie is not a credential of the JSON API.
        assert (await http.post("/sync")).status_code == 401
        bearer = await http.post("/sync", headers={"Authorization": f"Bearer {SECRET}"})
        assert bearer.status_code == 202
        # A tampered cookie is no session at all.
        value = http.cookies[COOKIE]
        http.cookies.set(COOKIE, value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
        assert (await post(http, "/console/pass", csrf=csrf)).status_code == 403
        http.cookies.set(COOKIE, value)
        out = await post(http, "/logout", csrf=csrf)
        assert out.status_code == 303 and f'{COOKIE}=""' in out.headers["set-cookie"]
    # Another secret (a rotated one) ends every session signed with the old one.
    rotated = demo_settings(demo, webhook_secret=SECRET + "-rotated")
    async with console(rotated, client=ELSEWHERE) as (http, _):
        http.cookies.set(COOKIE, value)
        assert (await post(http, "/console/pass", csrf=csrf)).status_code == 403
