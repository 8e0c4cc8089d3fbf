# ruff: noqa: RUF001, RUF002
"""Image objects (`image_fields`): the first metadata import and the no-op pass after it.

Data: `sizes.image_files` real images (JPEG, PNG and WebP in turn, 1600×1200 photos with
an EXIF block, made once per format and variant by Pillow and copied), 10 per portfolio,
in a local folder and in moto S3 (in this process, filled through its backend). The table
is SQLite (JSON text). The product runs in this process through `open_service`, with
`image_fields=path,width,height,type` (header reads only; `placeholder` would read every
file whole, see README). Bytes read per image are the product's own count
(`ImageCache.bytes_read`: every byte the storage returned, re-reads when a read was
widened included). The no-op pass runs on the synced table with a warm cache; it is
compared with the same pass over plain strings (`image_fields` unset, same tree, a table
synced to strings) and with the floor (one `os.scandir` walk plus one SELECT).
"""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from context import Context, Row
from measure import Stat

FORMATS = (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp"))
PER_PORTFOLIO = 10
FIELDS = "path,width,height,type"
BUCKET = "portfolio-sync-bench-images"


def _photo(fmt: str, variant: int) -> bytes:
    """A 1600×1200 picture that compresses like a photo (smooth areas and detail)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(variant)
    im = Image.new("RGB", (1600, 1200), (rng.randrange(256), 120, 160))
    draw = ImageDraw.Draw(im)
    for _ in range(300):
        x, y = rng.randrange(1600), rng.randrange(1200)
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        draw.ellipse((x, y, x + rng.randrange(20, 300), y + rng.randrange(20, 300)), colour)
    im = im.filter(ImageFilter.GaussianBlur(2))
    exif = Image.Exif()
    exif[0x010F] = "Bench Camera"
    exif[0x0112] = 1 + variant % 8
    buffer = io.BytesIO()
    options: dict[str, Any] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        options["quality"] = 88
    im.save(buffer, fmt, **options)
    return buffer.getvalue()


def _tree(ctx: Context, root: Path, count: int) -> dict[str, bytes]:
    """path -> bytes of `count` images, written under `root`."""
    sources = {(fmt, v): _photo(fmt, v) for fmt, _ in FORMATS for v in range(4)}
    files: dict[str, bytes] = {}
    for i in range(count):
        fmt, ext = FORMATS[i % len(FORMATS)]
        path = f"{i // PER_PORTFOLIO + 1}/img{i % PER_PORTFOLIO:02d}.{ext}"
        files[path] = sources[(fmt, i % 4)]
    for path, data in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return files


def _table(path: Path, portfolios: int) -> str:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE portfolios (id INTEGER PRIMARY KEY, title TEXT, images TEXT)")
        db.executemany(
            "INSERT INTO portfolios (id, title) VALUES (?, 't')",
            [(k,) for k in range(1, portfolios + 1)],
        )
    return f"sqlite:///{path}"


def _pass(settings: dict[str, Any]) -> tuple[float, int, int, int]:
    """One full pass: (seconds, rows changed, files read, bytes read)."""
    from portfolio_sync.config import load_settings
    from portfolio_sync.wiring import open_service

    with open_service(load_settings(None, **settings)) as svc:
        svc.catalog.count_rows()  # warm connection, as the other full-pass figures do
        began = time.perf_counter()
        report = svc.reconciler.sync_all("bench")
        seconds = time.perf_counter() - began
        cache = svc.reconciler.images
        assert report.ok, report.errors[:3]
        read = (cache.files_read, cache.bytes_read) if cache else (0, 0)
    return seconds, len(report.changed), *read


def _floor(root: Path, url: str) -> float:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
        began = time.perf_counter()
        found = 0
        for top in os.scandir(root):
            for entry in os.scandir(top.path):
                entry.stat()
                found += 1
        conn.exec_driver_sql("SELECT id, images FROM portfolios").fetchall()
        seconds = time.perf_counter() - began
    engine.dispose()
    return seconds


def images(ctx: Context) -> None:
    logging.getLogger("portfolio_sync").setLevel(logging.ERROR)
    count = ctx.sizes.image_files
    portfolios = count // PER_PORTFOLIO
    root = ctx.work / "tree-images"
    files = _tree(ctx, root, count)
    label = f"{count} images ({portfolios} × {PER_PORTFOLIO}; JPEG/PNG/WebP 1600×1200)"
    print(f"  built {label}, {sum(map(len, files.values())) / count / 1024:.0f} KiB average")
    local = {"storage_url": str(root), "image_fields": FIELDS}
    setups = {"SQLite + folder": local}
    server = _moto(files)
    if server is not None:
        setups["SQLite + S3 (moto)"] = {
            "storage_url": f"s3://{BUCKET}",
            "s3_endpoint": server[1],
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "aws_region": "us-east-1",
            "image_fields": FIELDS,
        }
    try:
        for setup, settings in setups.items():
            rates, per_image = [], []
            for run in range(ctx.runs):
                url = _table(ctx.work / f"images-{len(rates)}-{setup[9:11]}.db", portfolios)
                seconds, changed, read, spent = _pass({**settings, "database_url": url})
                assert changed == portfolios and read == count, (changed, read)
                rates.append(count / seconds)
                per_image.append(spent / read / 1024)
                if run == ctx.runs - 1 and setup == "SQLite + folder":
                    _noop(ctx, root, url, settings, portfolios)
            scenario = f"image metadata import, {label}"
            ctx.add(Row(scenario, setup, "images per second", Stat.of(rates), "images/s"))
            mean = Stat.of(per_image)
            ctx.add(
                Row(
                    scenario,
                    setup,
                    "bytes read per image (average)",
                    mean,
                    "KiB",
                    "≤ 64 KiB",
                    mean.high <= 64,
                )
            )
    finally:
        if server is not None:
            server[0].stop()
        shutil.rmtree(root, ignore_errors=True)


def _noop(ctx: Context, root: Path, url: str, settings: dict[str, Any], portfolios: int) -> None:
    """The no-op pass with objects (warm cache), with strings, and the floor, interleaved."""
    strings = _table(ctx.work / "images-strings.db", portfolios)
    _pass({"database_url": strings, "storage_url": str(root)})
    ours, plain, floor = [], [], []
    for _ in range(ctx.warmup + ctx.runs):
        seconds, changed, read, _spent = _pass({**settings, "database_url": url})
        assert changed == 0 and read == 0, (changed, read)  # reads no image bytes
        ours.append(seconds)
        plain.append(_pass({"database_url": strings, "storage_url": str(root)})[0])
        floor.append(_floor(root, url))
    ours, plain, floor = ours[ctx.warmup :], plain[ctx.warmup :], floor[ctx.warmup :]
    scenario = f"no-op full pass with image objects, {portfolios} × {PER_PORTFOLIO}"
    setup = "SQLite + folder"
    ctx.add(Row(scenario, setup, "time", Stat.of(ours), "s", note="0 image bytes read"))
    to_floor = Stat.of([o / f for o, f in zip(ours, floor, strict=True)])
    ctx.add(Row(scenario, setup, "time ÷ floor", to_floor, "×"))
    ctx.add(
        Row(
            scenario,
            setup,
            "time ÷ same pass with strings",
            Stat.of([o / p for o, p in zip(ours, plain, strict=True)]),
            "×",
        )
    )


def _moto(files: dict[str, bytes]) -> tuple[Any, str] | None:
    try:
        from moto.core import DEFAULT_ACCOUNT_ID  # type: ignore[attr-defined]
        from moto.s3.models import s3_backends
        from moto.server import ThreadedMotoServer
    except ImportError:
        print("  moto is not installed: the S3 rows are skipped", flush=True)
        return None
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    backend.create_bucket(BUCKET, "us-east-1")
    for path, data in files.items():
        backend.put_object(BUCKET, path, data)
    return server, f"http://{host}:{port}"
