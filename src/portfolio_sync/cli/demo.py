"""`portfolio-sync demo`: a self-contained SQLite + folder setup with real images.

It leaves some rows stale on purpose (missing images, a deleted one still listed, NULL),
so the first sync has something to show.
"""

from __future__ import annotations

import colorsys
import os
import shutil
import sqlite3
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from portfolio_sync.backends import outbox
from portfolio_sync.cli import console
from portfolio_sync.config import load_settings
from portfolio_sync.errors import ConfigError
from portfolio_sync.logs import enter_service_mode
from portfolio_sync.wiring import open_service

MARKER = ".portfolio-sync-demo"
TITLES = (
    "Harbour",
    "Dunes",
    "Forest",
    "City lights",
    "Alps",
    "Market",
    "Desert",
    "Coast",
    "Meadow",
    "Rooftops",
    "Glacier",
    "Canyon",
    "Orchard",
    "Lagoon",
    "Volcano",
    "Bridges",
    "Islands",
    "Fjord",
    "Steppe",
    "Vineyard",
)


def make_image(path: Path, *, hue: float, label: str, png: bool = False) -> None:
    """A small gradient picture with a label: real, decodable, distinct per file."""
    width, height = 320, 213
    image = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(image)
    for y in range(height):
        r, g, b = colorsys.hsv_to_rgb(hue, 0.55, 0.35 + 0.6 * y / height)
        draw.line([(0, y), (width, y)], fill=(int(r * 255), int(g * 255), int(b * 255)))
    draw.rectangle([(12, 12), (12 + 8 * len(label) + 16, 40)], fill=(0, 0, 0))
    draw.text((20, 20), label, fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG" if png else "JPEG", quality=80)


def create_demo(directory: Path, *, portfolios: int = 20) -> Path:
    """Create (or recreate) the demo folder; returns the config file written in it."""
    if directory.exists():
        if not (directory / MARKER).exists():
            raise ConfigError(
                f"{directory.resolve()} exists and is not a portfolio-sync demo",
                hint="pick another --dir (the demo replaces only a folder it created)",
            )
        shutil.rmtree(directory)
    storage = directory / "storage"
    storage.mkdir(parents=True)
    (directory / MARKER).write_text("created by portfolio-sync demo\n")
    db = sqlite3.connect(directory / "portfolio-sync.db")
    with db:
        db.execute(
            "CREATE TABLE portfolios (id INTEGER PRIMARY KEY, title TEXT NOT NULL, images TEXT)"
        )
        for n in range(1, portfolios + 1):
            hue = (n * 0.137) % 1.0
            count = 2 + n % 5
            names = [f"{n}/photo-{i}.{'png' if i == count else 'jpg'}" for i in range(1, count + 1)]
            for i, name in enumerate(names, 1):
                make_image(
                    storage / name,
                    hue=(hue + i * 0.04) % 1.0,
                    label=f"#{n} {TITLES[(n - 1) % len(TITLES)]} {i}",
                    png=name.endswith(".png"),
                )
            # Stale rows on purpose: a third are in sync, others miss or keep images.
            stale: str | None
            if n % 3 == 0:
                stale = _json(names)
            elif n % 3 == 1:
                stale = _json([*names[:1], f"{n}/deleted-long-ago.jpg"])
            else:
                stale = None
            db.execute(
                "INSERT INTO portfolios (id, title, images) VALUES (?, ?, ?)",
                (n, TITLES[(n - 1) % len(TITLES)], stale),
            )
    db.close()
    (storage / f"{portfolios + 1}").mkdir()  # an orphan folder: no row for it
    make_image(storage / f"{portfolios + 1}" / "stray.jpg", hue=0.5, label="orphan")
    config = directory / "portfolio-sync.toml"
    config.write_text(
        'database_url = "sqlite:///portfolio-sync.db"\nstorage_url = "storage"\n'
        'table = "portfolios"\n',
        encoding="utf-8",
    )
    return config


def _json(values: list[str]) -> str:
    import json

    return json.dumps(values)


def command_from(directory: Path) -> str:
    """How to run this command again from inside `directory`: `portfolio-sync` when that
    is what PATH finds, else the path it was started by (`make demo` runs
    `.venv/bin/portfolio-sync`, which is not on PATH)."""
    started = Path(sys.argv[0]).resolve()
    found = shutil.which("portfolio-sync")
    if found is not None and Path(found).resolve() == started:
        return "portfolio-sync"
    if not started.name.startswith("portfolio-sync"):  # e.g. python -m, or embedded
        return "portfolio-sync"
    if Path(sys.argv[0]).is_absolute():
        return str(started)
    return os.path.relpath(started, directory.resolve())


def run_demo(
    directory: Path, *, portfolios: int = 20, serve: bool = False, port: int = 8080
) -> None:
    config = create_demo(directory, portfolios=portfolios)
    console.out.print(
        f"created {directory}/: {portfolios} portfolios in portfolio-sync.db, "
        f"images in {directory}/storage/<id>/"
    )
    settings = load_settings(
        None,
        database_url=f"sqlite:///{(directory / 'portfolio-sync.db').resolve()}",
        storage_url=str((directory / "storage").resolve()),
    )
    with open_service(settings) as svc:
        report = console.run_pass(svc, trigger="demo", dry_run=False)
        console.print_report(report, as_json=False)
        outbox.run(svc.catalog, outbox.install_sql(svc.catalog))
    if not serve:
        command = command_from(directory)
        print(
            f"\nNext: cd {directory} && {command} status   (config: {config.name})\n"
            f"      drop a .jpg into storage/3/ and run: {command} sync 3\n"
            f"      {command} serve   keeps every row in sync as files and rows change"
        )
        return
    url = f"http://127.0.0.1:{port}"
    print(  # plain print: commands must not be wrapped
        f"\nServing the demo on {url}/  (operator console; API docs at {url}/docs; Ctrl-C stops)\n"
        f"Try: cp {directory}/storage/1/photo-1.jpg {directory}/storage/3/new.jpg\n"
        f"     curl {url}/portfolios/3     (the row lists new.jpg within a second)\n"
        f'     sqlite3 {directory}/portfolio-sync.db "INSERT INTO portfolios (id, title) '
        f"VALUES ({portfolios + 1}, 'Orphan no more')\"\n",
        flush=True,
    )
    from portfolio_sync.web.serve import run_server

    enter_service_mode()
    run_server(settings, host="127.0.0.1", port=port)
