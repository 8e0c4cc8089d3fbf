"""The console's main page (`GET /`) and its image route (`GET /files/...`).

Driven through the ASGI app with a real `Runtime` over a real SQLite file and a folder of
real JPEG/PNG images (the `demo` set), plus PostgreSQL + moto S3 for the S3 read path.
The page is parsed (not grepped) so assertions are about rows, cells and image sources.
"""

from __future__ import annotations

import io
import os
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from portfolio_sync.backends import schema
from portfolio_sync.cli.demo import create_demo, make_image
from portfolio_sync.config import Settings, load_settings
from portfolio_sync.layout import natural_key
from portfolio_sync.runtime import Runtime
from portfolio_sync.web import dashboard
from portfolio_sync.wiring import open_service
from tests.integration.world import World
from tests.servers import S3Target


# ---- helpers -------------------------------------------------------------------------------
@dataclass
class TableRow:
    cells: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)


class Page(HTMLParser):
    """Tables as rows of cell texts (entities decoded) and <img> sources; links by text."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[list[TableRow]] = []
        self.links: dict[str, str] = {}
        self._cell = False
        self._link: str | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append(TableRow())
        elif tag in ("td", "th"):
            self.tables[-1][-1].cells.append("")
            self._cell = True
        elif tag == "img" and self._cell:
            self.tables[-1][-1].images.append(found["src"] or "")
        elif tag == "a":
            self._link = found["href"]

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th"):
            self._cell = False

    def handle_data(self, data: str) -> None:
        if self._cell:
            self.tables[-1][-1].cells[-1] += data
        if self._link is not None:
            self.links[data.strip()] = self._link
            self._link = None

    def portfolios(self) -> dict[str, TableRow]:
        """The first table (portfolios) by key, in page order."""
        return {row.cells[0]: row for row in self.tables[0][1:] if len(row.cells) == 6}


def demo_settings(demo: Path, **more: Any) -> Settings:
    return load_settings(
        None,
        database_url=f"sqlite:///{demo / 'portfolio-sync.db'}",
        storage_url=str(demo / "storage"),
        **more,
    )


def images_in(folder: Path) -> list[str]:
    """The image names of a demo folder, in the dashboard's (natural) order."""
    return sorted((p.name for p in folder.iterdir() if p.suffix in (".jpg", ".png")),
                  key=natural_key)  # fmt: skip


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Runtime]]:
    """The console on its own app, as `create_app` mounts it, over a real Runtime."""
    with open_service(settings) as svc:
        runtime = Runtime(svc, watch=False, catch_up=False)
        app = FastAPI()
        dashboard.install(app, runtime)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as client:
            yield client, runtime


async def page(client: httpx.AsyncClient, url: str = "/") -> Page:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    return Page(response.text)


@pytest.fixture
def demo(tmp_path: Path) -> Path:
    """The demo set, fully synced, then key 2 gets a new image nobody synced yet."""
    directory = tmp_path / "demo"
    create_demo(directory, portfolios=20)
    with open_service(demo_settings(directory)) as svc:
        assert svc.reconciler.sync_all("test").ok
    make_image(directory / "storage" / "2" / "photo-9.jpg", hue=0.1, label="new")
    (directory / "storage" / "1" / "notes.txt").write_text("not an image")
    (directory / "secret.jpg").write_bytes(
        (directory / "storage" / "1" / "photo-1.jpg").read_bytes()
    )
    return directory


# ---- the page ------------------------------------------------------------------------------
async def test_page_shows_keys_badges_and_header(demo: Path) -> None:
    async with serving(demo_settings(demo)) as (client, runtime):
        schema.record_error(runtime.service.catalog.engine, "3", "listing failed: <timeout>")
        response = await client.get("/")
        parsed = Page(response.text)
    assert response.status_code == 200
    assert "script-src 'self';" in response.headers["content-security-policy"]  # no inline
    rows = parsed.portfolios()
    assert list(rows) == [str(n) for n in range(1, 21)]  # integer keys: natural order
    assert rows["1"].cells[1] == "in sync"
    assert rows["2"].cells[1].startswith("out of sync +1")
    in_folder = len(images_in(demo / "storage" / "2"))
    assert rows["2"].cells[2] == f"{in_folder} (row {in_folder - 1})"
    assert rows["3"].cells[5] == "listing failed: <timeout>"
    text = response.text
    for fact in ("sqlite:///", f"folder {demo / 'storage'}", "portfolios", "0 pending · 0 running"):
        assert fact in text
    assert "not scheduled" in text  # runtime not started
    errors, passes, recent = parsed.tables[1:4]
    assert [r.cells[0] for r in errors[1:]] == ["3"] and errors[1].cells[3].endswith("<timeout>")
    assert [c.strip() for c in passes[1].cells[1:7]] == ["ok", "test", "20", "14", "1", "0"]
    assert len(recent) > 2 and recent[1].cells[2] == "test"  # history of the fixture's pass


async def test_thumbnails_serve_the_exact_image_bytes(demo: Path) -> None:
    for n in (7, 8):  # key 4 gets 8 images: 6 thumbnails and a "+2"
        make_image(demo / "storage" / "4" / f"photo-{n}.jpg", hue=0.3, label=str(n))
    async with serving(demo_settings(demo)) as (client, _):
        rows = (await page(client)).portfolios()
        assert len(rows["4"].images) == 6 and rows["4"].cells[3].strip() == "+2"
        thumbs = rows["1"].images
        assert thumbs == [f"/files/1/{name}" for name in images_in(demo / "storage" / "1")]
        assert {src.rpartition(".")[2] for src in thumbs} == {"jpg", "png"}
        for src in thumbs:
            response = await client.get(src)
            assert response.status_code == 200
            on_disk = (demo / "storage" / src.removeprefix("/files/")).read_bytes()
            assert response.content == on_disk
            kind = "png" if src.endswith(".png") else "jpeg"
            assert response.headers["content-type"] == f"image/{kind}"
            assert response.headers["cache-control"] == "max-age=60"
            with Image.open(io.BytesIO(response.content)) as image:
                assert image.format == kind.upper()
                image.load()


async def test_pagination_follows_key_order(demo: Path) -> None:
    async with serving(demo_settings(demo)) as (client, _):
        first = await page(client, "/?limit=5")
        assert list(first.portfolios()) == ["1", "2", "3", "4", "5"]
        assert "« first page" not in first.links
        nxt = first.links["next page »"]
        assert parse_qs(urlsplit(nxt).query) == {"after": ["5"], "limit": ["5"]}
        second = await page(client, nxt)
        assert list(second.portfolios()) == ["6", "7", "8", "9", "10"]
        assert "« first page" in second.links
        last = await page(client, "/?after=17&limit=5")
        assert list(last.portfolios()) == ["18", "19", "20"] and "next page »" not in last.links
        assert (await page(client, "/?after=20")).portfolios() == {}
        assert list((await page(client, "/?after=x&limit=2")).portfolios()) == ["1", "2"]
        assert len((await page(client, "/?limit=100000")).portfolios()) == 20  # capped, not 422


async def test_public_url_thumbnails(demo: Path) -> None:
    settings = demo_settings(demo, public_url="https://cdn.example.com/media/{path}")
    async with serving(settings) as (client, _):
        rows = (await page(client)).portfolios()
    assert rows["1"].images[0] == "https://cdn.example.com/media/1/photo-1.jpg"


async def test_live_runtime_shows_next_full_pass(demo: Path) -> None:
    async with serving(demo_settings(demo)) as (client, runtime):
        await runtime.start()
        try:
            response = await client.get("/")
        finally:
            await runtime.stop()
    assert runtime.next_full_pass is not None
    assert runtime.next_full_pass.strftime("%Y-%m-%d %H:%M:%S") in response.text


async def test_database_down_is_503(demo: Path) -> None:
    async with serving(demo_settings(demo)) as (client, _):
        with sqlite3.connect(demo / "portfolio-sync.db") as db:
            db.execute("ALTER TABLE portfolios RENAME TO gone")
        db.close()
        response = await client.get("/")
    assert response.status_code == 503 and "Database unavailable" in response.text


async def test_hostile_keys_and_names_are_escaped(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    hostile = "<img src=x onerror=alert(2)>"
    make_image(storage / hostile / '<b>"1".jpg', hue=0.6, label="x")
    db = sqlite3.connect(tmp_path / "app.db")
    with db:
        db.execute("CREATE TABLE portfolios (id TEXT PRIMARY KEY, images TEXT)")
        db.executemany("INSERT INTO portfolios VALUES (?, NULL)",
                       [("<script>alert(1)</script>",), (hostile,), ("a&b",)])  # fmt: skip
    db.close()
    settings = load_settings(None, database_url=f"sqlite:///{tmp_path / 'app.db'}",
                             storage_url=str(storage))  # fmt: skip
    async with serving(settings) as (client, runtime):
        schema.record_error(runtime.service.catalog.engine, hostile, "<script>alert(3)</script>")
        response = await client.get("/")
        body = response.text
        assert response.status_code == 200
        for raw in ("<script>alert", "<img src=x", "<b>"):
            assert raw not in body
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
        rows = Page(body).portfolios()
        assert set(rows) == {"<script>alert(1)</script>", hostile, "a&b"}
        [src] = rows[hostile].images
        assert src == "/files/%3Cimg%20src%3Dx%20onerror%3Dalert%282%29%3E/%3Cb%3E%221%22.jpg"
        image = await client.get(src)
        assert image.content == (storage / hostile / '<b>"1".jpg').read_bytes()
        link = "/p/%3Cimg%20src%3Dx%20onerror%3Dalert%282%29%3E"
        assert f'href="{link}"' in body
        detail = await client.get(link)
        assert detail.status_code == 200
        for raw in ("<script>alert", "<img src=x", "<b>"):
            assert raw not in detail.text
        assert "&lt;b&gt;&#34;1&#34;.jpg" in detail.text


# ---- /files --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "status"),
    [
        ("/files/..%2Fsecret.jpg", 400),
        ("/files/1/..%2F..%2Fsecret.jpg", 400),
        ("/files/%2Fetc%2Fhostname", 400),
        ("/files/1%5Cphoto-1.jpg", 400),
        ("/files/1/notes.txt", 404),  # exists, but not an image
        ("/files/1/.hidden.jpg", 404),
        ("/files/1/missing.jpg", 404),
        ("/files/1/link.jpg", 404),  # a symlink out of the storage root
        ("/files/1/huge.jpg", 413),
        ("/files/1/loop.jpg", 502),  # a symlink loop: a real storage error
    ],
)
async def test_files_refuses(demo: Path, url: str, status: int) -> None:
    folder = demo / "storage" / "1"
    (folder / ".hidden.jpg").write_bytes((folder / "photo-1.jpg").read_bytes())
    os.symlink(demo / "secret.jpg", folder / "link.jpg")
    os.symlink("loop.jpg", folder / "loop.jpg")
    with open(folder / "huge.jpg", "wb") as handle:
        handle.truncate(dashboard.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    async with serving(demo_settings(demo)) as (client, _):
        response = await client.get(url)
    assert response.status_code == status, response.text
    assert response.content != (demo / "secret.jpg").read_bytes()
    if status == 502:
        assert "storage error" in response.json()["detail"]


# ---- S3 --------------------------------------------------------------------------------------
async def test_files_streams_s3_objects(tmp_path: Path, pg_url: str, s3_bucket: S3Target) -> None:
    make_image(tmp_path / "a.jpg", hue=0.2, label="s3 a")
    make_image(tmp_path / "b.png", hue=0.7, label="s3 b", png=True)
    world = World(kind="postgres-s3", database_url=pg_url, s3=s3_bucket)
    try:
        world.create_table()
        world.insert(7, None)
        world.insert(10, ["10/gone.jpg"])
        world.put("7/a.jpg", (tmp_path / "a.jpg").read_bytes())
        world.put("7/b.png", (tmp_path / "b.png").read_bytes())
        async with serving(world.settings()) as (client, _):
            rows = (await page(client)).portfolios()
            assert list(rows) == ["7", "10"]  # integer keys in natural order, on PostgreSQL
            assert list((await page(client, "/?after=7")).portfolios()) == ["10"]
            assert rows["7"].cells[1].startswith("out of sync +2")
            assert rows["7"].images == ["/files/7/a.jpg", "/files/7/b.png"]
            for src, name, kind in zip(
                rows["7"].images, ("a.jpg", "b.png"), ("jpeg", "png"), strict=True
            ):
                response = await client.get(src)
                assert response.status_code == 200
                assert response.content == (tmp_path / name).read_bytes()
                assert response.headers["content-type"] == f"image/{kind}"
                with Image.open(io.BytesIO(response.content)) as image:
                    assert image.format == kind.upper()
            assert (await client.get("/files/10/gone.jpg")).status_code == 404
    finally:
        world.close()
