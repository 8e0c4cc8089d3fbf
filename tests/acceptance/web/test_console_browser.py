"""The operator console in a real browser: Debian's Chromium driven by Playwright, against
a real `portfolio-sync serve` on 127.0.0.1 over the demo set (SQLite + local folders).

One browser and one server per module (a second server has a webhook secret). Every page
collects console messages and failed requests; a test fails on any error among them.
Screenshots of the main and a portfolio page at 1400 and 390 px go to tests/artifacts/.
The browser is never downloaded: /usr/bin/chromium must be installed (`.ci/run` does).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from portfolio_sync.cli.demo import create_demo, make_image
from tests.acceptance.serve_process import ServeProcess, serve_process, wait_for

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
SECRET = "console-test-secret"
WAIT_MS = 5000  # generous on a busy machine; the measured latency is printed


# ---- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert CHROMIUM.exists(), "install Chromium: apt-get install -y chromium (.ci/run does)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


def _env(demo: Path, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PORTFOLIO_SYNC_", "AWS_"))}
    env["PORTFOLIO_SYNC_DATABASE_URL"] = f"sqlite:///{demo / 'portfolio-sync.db'}"
    env["PORTFOLIO_SYNC_STORAGE_URL"] = str(demo / "storage")
    env.update(more)
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("console") / "demo"
    create_demo(directory, portfolios=8)
    return directory


@pytest.fixture(scope="module")
def servers(
    demo: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServeProcess, ServeProcess]]:
    """Two servers over their own demo sets, started and stopped side by side (each takes
    seconds): an open one (no secret: loopback may act) and one with a webhook secret."""
    locked = tmp_path_factory.mktemp("locked") / "demo"
    create_demo(locked, portfolios=3)
    contexts = [
        serve_process(_env(demo), demo.parent),
        serve_process(_env(locked, PORTFOLIO_SYNC_WEBHOOK_SECRET=SECRET), locked.parent),
    ]
    with ThreadPoolExecutor(2) as pool:
        started = [pool.submit(context.__enter__) for context in contexts]
        try:
            first, second = (future.result() for future in started)
            yield first, second
        finally:
            stops = [
                pool.submit(context.__exit__, None, None, None)
                for context, future in zip(contexts, started, strict=True)
                if future.exception() is None
            ]
            for stop in stops:
                stop.result()


@pytest.fixture(scope="module")
def server(servers: tuple[ServeProcess, ServeProcess]) -> ServeProcess:
    return servers[0]


@pytest.fixture(scope="module")
def locked(servers: tuple[ServeProcess, ServeProcess]) -> ServeProcess:
    """The server with a webhook secret: actions need the login."""
    return servers[1]


class Watched:
    """A page whose console errors, uncaught exceptions and failed requests are kept."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"exception: {exc}"))
        page.on("requestfailed", self._failed)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.problems.append(f"console {message.type}: {message.text}")

    def _failed(self, request: Request) -> None:
        # Leaving a page aborts its event stream and the images still loading: not errors.
        if request.failure != "net::ERR_ABORTED":
            self.problems.append(f"request failed: {request.url} {request.failure}")

    def clean(self, *expected: str) -> None:
        """No problem but the `expected` ones (texts contained in them, in order)."""
        assert len(self.problems) == len(expected), self.problems
        for problem, text in zip(self.problems, expected, strict=True):
            assert text in problem, self.problems

    def sideways(self) -> int:
        """How far the page scrolls sideways (0 when it fits the viewport)."""
        width: int = self.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        return width


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = Watched(context.new_page())
    yield page
    context.close()


def shoot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def badge(page: Page) -> str:
    return page.locator("#badge").inner_text()


# ---- pages -----------------------------------------------------------------------------------
def test_main_page_links_to_a_portfolio_page(server: ServeProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(server.url + "/")
    rows = page.locator("table.rows tbody tr[data-key]")
    assert rows.count() == 8
    assert [rows.nth(i).get_attribute("data-key") for i in range(8)] == [
        str(n) for n in range(1, 9)
    ]
    assert page.locator("#panel-orphans a").all_inner_texts() == ["9"]  # the demo's orphan
    for img in page.locator("table.rows img").all():
        assert img.get_attribute("loading") == "lazy"
    shoot(page, "main-1400")
    page.get_by_role("link", name="2", exact=True).first.click()
    page.wait_for_url(f"{server.url}/p/2")
    assert page.locator("h1").inner_text() == "Portfolio 2"
    files = page.locator(".collection .cell.file figcaption").all_inner_texts()
    assert files and all(name.startswith("photo-") for name in files)
    assert page.locator(".compare img").first.get_attribute("loading") == "lazy"
    assert page.locator(".timeline li").count() >= 1  # the demo's sync of key 2
    shoot(page, "portfolio-1400")
    watched.clean()


def test_drift_is_highlighted_side_by_side(
    server: ServeProcess, demo: Path, watched: Watched
) -> None:
    with sqlite3.connect(demo / "portfolio-sync.db") as db:  # a foreign write: no trigger
        db.execute(
            "UPDATE portfolios SET images = ? WHERE id = 5", ('["5/photo-1.jpg", "5/gone.jpg"]',)
        )
    db.close()
    page = watched.page
    page.goto(server.url + "/p/5")
    assert badge(page).startswith("out of sync")
    assert page.locator(".cell.row.remove").inner_text().startswith("5/gone.jpg")
    assert page.locator(".cell.file.add").count() >= 1  # files the row lacks
    assert page.locator(".cell.file.both figcaption").all_inner_texts() == ["photo-1.jpg"]
    page.goto(server.url + "/?only=drift")
    assert page.locator("table.rows tbody tr[data-key]").evaluate_all(
        "rows => rows.map(r => r.dataset.key)"
    ) == ["5"]
    watched.clean()


def test_dropped_file_appears_without_a_reload(
    server: ServeProcess, demo: Path, watched: Watched
) -> None:
    page = watched.page
    page.goto(server.url + "/p/3")
    page.locator("#live-state.on").wait_for(timeout=WAIT_MS)  # the event stream is open
    page.evaluate("window.notReloaded = true")
    started = time.monotonic()
    make_image(demo / "storage" / "3" / "dropped-1.jpg", hue=0.9, label="dropped")
    page.locator(".cell.file figcaption", has_text="dropped-1.jpg").wait_for(timeout=WAIT_MS)
    seen = time.monotonic() - started
    print(f"dropped file on the page after {seen * 1000:.0f} ms")
    assert page.evaluate("window.notReloaded") is True
    page.locator("#badge", has_text="in sync").wait_for(timeout=WAIT_MS)  # the watcher synced
    assert page.locator(".timeline li").first.inner_text().count("dropped-1.jpg") == 1
    watched.clean()


def test_sync_now_shows_the_result(server: ServeProcess, demo: Path, watched: Watched) -> None:
    with sqlite3.connect(demo / "portfolio-sync.db") as db:
        db.execute("UPDATE portfolios SET images = '[]' WHERE id = 4")
    db.close()
    page = watched.page
    page.goto(server.url + "/p/4")
    assert badge(page).startswith("out of sync")
    page.locator("#sync-now").click()
    page.wait_for_url(f"{server.url}/p/4?done=sync")
    assert page.locator(".flash").inner_text() == "Sync queued."
    page.locator("#badge", has_text="in sync").wait_for(timeout=WAIT_MS)
    assert "manual:console" in page.locator(".timeline li").first.inner_text()
    watched.clean()


def test_full_pass_and_dry_run_buttons(server: ServeProcess, demo: Path, watched: Watched) -> None:
    with sqlite3.connect(demo / "portfolio-sync.db") as db:
        db.execute("UPDATE portfolios SET images = '[]' WHERE id = 6")
    db.close()
    page = watched.page
    page.goto(server.url + "/")
    page.locator("#dry-run").click()
    assert "would change" in page.locator("#dry-summary").inner_text()
    assert "6" in page.locator(".dry-run table a").all_inner_texts()
    assert page.locator('tr[data-key="6"] .badge').count() == 0  # a report, not the console
    page.goto(server.url + "/p/6")
    assert badge(page).startswith("out of sync")  # the dry run wrote nothing
    page.goto(server.url + "/")
    page.locator("#full-pass").click()
    page.wait_for_url(f"{server.url}/?done=all")
    assert page.locator(".flash").inner_text() == "Full pass queued."
    row = page.locator('tr[data-key="6"] .badge')
    row.filter(has_text="in sync").wait_for(timeout=WAIT_MS)  # updated in place
    watched.clean()


def test_phone_width_has_no_sideways_scroll(server: ServeProcess, browser: Browser) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2)
    try:
        watched = Watched(context.new_page())
        for path, name in (("/", "main-390"), ("/p/2", "portfolio-390")):
            watched.page.goto(server.url + path)
            assert watched.sideways() == 0, path
            shoot(watched.page, name)
        watched.clean()
    finally:
        context.close()


def test_docs_render_offline(server: ServeProcess, watched: Watched) -> None:
    outside: list[str] = []
    page = watched.page

    def only_local(route: object) -> None:
        request = route.request  # type: ignore[attr-defined]
        if request.url.startswith(server.url):
            route.continue_()  # type: ignore[attr-defined]
        else:
            outside.append(request.url)
            route.abort()  # type: ignore[attr-defined]

    page.route("**/*", only_local)
    page.goto(server.url + "/docs")
    page.locator(".swagger-ui .info .title", has_text="portfolio-sync").wait_for(timeout=WAIT_MS)
    assert page.locator(".opblock-summary-path").count() >= 5
    page.goto(server.url + "/redoc")
    page.locator("redoc h1", has_text="portfolio-sync").wait_for(timeout=WAIT_MS)
    assert outside == []
    assert server.client.get("/favicon.ico").headers["content-type"] == "image/x-icon"
    watched.clean()


# ---- login -------------------------------------------------------------------------------------
def test_secret_login_and_refusals(locked: ServeProcess, watched: Watched) -> None:
    page = watched.page
    page.goto(locked.url + "/")
    assert page.locator("#full-pass").count() == 0  # not offered before login
    # A same-site form post with a valid token but no login is refused.
    page.goto(locked.url + "/login")
    token = page.locator('input[name="csrf"]').first.input_value()
    refused = page.request.post(locked.url + "/console/pass", form={"csrf": token})
    assert refused.status == 401 and "log in" in refused.text()
    page.locator("#secret").fill("not-the-secret")
    page.locator("#login").click()
    assert page.locator(".flash.bad").inner_text() == "That is not the secret."
    page.locator("#secret").fill(SECRET)
    page.locator("#login").click()
    page.wait_for_url(f"{locked.url}/?done=login")
    [cookie] = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.locator("#full-pass").click()
    page.wait_for_url(f"{locked.url}/?done=all")
    # The JSON API still wants its own credentials; the session cookie is not one.
    api = page.request.post(locked.url + "/sync/1")
    assert api.status == 401
    api = page.request.post(locked.url + "/sync/1", headers={"Authorization": f"Bearer {SECRET}"})
    assert api.status == 202
    # A page on another site posting to the console is refused even while logged in.
    before = locked.metric("portfolio_sync_events_total", source="console")
    page.route(
        "http://attacker.invalid/",
        lambda route: route.fulfill(
            content_type="text/html",
            body=f'<form method="post" action="{locked.url}/console/pass">'
            f'<input name="csrf" value="{token}"></form>'
            "<script>document.forms[0].submit()</script>",
        ),
    )
    page.goto("http://attacker.invalid/")
    page.wait_for_url(f"{locked.url}/console/pass")
    assert "cross-site request refused" in page.locator("#reason").inner_text()
    assert locked.metric("portfolio_sync_events_total", source="console") == before
    # Logging out ends the session: the buttons go away.
    page.goto(locked.url + "/")
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{locked.url}/?done=logout")
    assert page.locator("#full-pass").count() == 0
    # Chromium logs a refused page's status; these two were refused on purpose.
    watched.clean("status of 401 (Unauthorized)", "status of 403 (Forbidden)")


# ---- held writes (last: it leaves rows that the other tests' expectations do not know) ------
def test_release_held_writes_button(server: ServeProcess, demo: Path, watched: Watched) -> None:
    """Rows given more ghost values than their folder has files (a foreign write, no event),
    then synced one by one: removing most of a row is drastic, so after the guard's window
    lets a few through, it holds the rest; the panel's button releases them all."""
    listings = {}
    with sqlite3.connect(demo / "portfolio-sync.db") as db:
        for key in range(1, 9):
            found = server.portfolio(str(key))
            assert found is not None
            listing = listings[str(key)] = found["listing"]["images"]
            ghosts = [f"{key}/ghost-{n}.jpg" for n in range(len(listing) + 1)]
            db.execute(
                "UPDATE portfolios SET images = ? WHERE id = ?", (json.dumps(listing + ghosts), key)
            )
    db.close()
    for key in listings:
        assert server.client.post(f"/sync/{key}").status_code == 202

    def settled() -> list[str] | None:
        held: list[str] = []
        for key, listing in listings.items():
            found = server.portfolio(key)
            assert found is not None
            if found["held"] is not None:
                held.append(key)
            elif found["columns"]["images"] != listing:
                return None  # not synced yet
        return held

    held = wait_for(settled, timeout=30, what="every sync ended, written or held")
    assert held
    page = watched.page
    page.goto(server.url + "/")
    panel = page.locator("#panel-held")
    shown = panel.locator("tr[data-key]").evaluate_all("rs => rs.map(r => r.dataset.key)")
    assert sorted(shown) == sorted(held)  # oldest first: the queue may run syncs side by side
    assert "rows were emptied by single syncs" in panel.inner_text()
    panel.scroll_into_view_if_needed()
    shoot(page, "held-1400")
    page.goto(f"{server.url}/p/{held[0]}")
    assert page.locator("#held").is_visible() and page.locator("#release").is_visible()
    shoot(page, "held-portfolio-1400")
    page.goto(server.url + "/")
    page.locator("#release-all").click()
    page.wait_for_url(f"{server.url}/?done=release")
    assert page.locator(".flash").inner_text().startswith("Held writes released")
    assert "None: no write is waiting" in page.locator("#panel-held").inner_text()
    assert page.locator("#release-all").count() == 0
    for key in held:
        found = server.portfolio(key)
        assert found is not None and found["held"] is None
        assert found["columns"]["images"] == listings[key]
    watched.clean()
