"""`make demo` runs `portfolio-sync demo --dir demo --serve`: what it promises, end to end."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx

from tests.acceptance.command import SCRIPT
from tests.acceptance.serve_process import free_port, wait_for


def _images(db: Path, key: int) -> str | None:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT images FROM portfolios WHERE id = ?", (key,)).fetchone()
    return None if row is None else row[0]


def test_demo_serve_follows_dropped_files_and_new_rows(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(SCRIPT), "demo", "--dir", "demo", "--serve", "--port", str(port)],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "PORTFOLIO_SYNC_SCHEDULE": "0 0 1 1 *"},
        )
    demo = tmp_path / "demo"
    db = demo / "portfolio-sync.db"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            def ready() -> bool:
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return proc.poll() is not None

            wait_for(ready, timeout=60, what="demo server")
            assert proc.poll() is None, log.read_text()
            assert f"http://127.0.0.1:{port}/" in log.read_text()
            # a file dropped into a portfolio folder reaches its row within a second
            shutil.copy(demo / "storage" / "1" / "photo-1.jpg", demo / "storage" / "3" / "new.jpg")
            dropped = time.monotonic()
            wait_for(
                lambda: "3/new.jpg" in (_images(db, 3) or ""),
                timeout=5,
                interval=0.01,
                what="dropped file in row 3",
            )
            assert time.monotonic() - dropped < 1.0
            # a row the app inserts (the orphan folder 21 exists) is synced by the triggers
            with sqlite3.connect(db) as conn:
                conn.execute("INSERT INTO portfolios (id, title) VALUES (21, 'new')")
            wait_for(
                lambda: _images(db, 21) == '["21/stray.jpg"]', timeout=5, what="inserted row 21"
            )
            page = client.get("/")
            assert page.status_code == 200 and "/files/3/new.jpg" in page.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(timeout=15) == 0, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def test_demo_next_hints_name_the_command_as_it_was_run(tmp_path: Path) -> None:
    """`make demo` runs `.venv/bin/portfolio-sync`, which is not on PATH: the hints must
    name a command that works when pasted, from inside the demo folder."""
    as_typed = os.path.relpath(SCRIPT, tmp_path)
    proc = subprocess.run(
        [as_typed, "demo", "--dir", "demo"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    command = os.path.relpath(SCRIPT, tmp_path / "demo")
    assert f"Next: cd demo && {command} status" in proc.stdout
    hinted = subprocess.run(
        [command, "status"], cwd=tmp_path / "demo", env={"PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert hinted.returncode == 0, hinted.stderr


def test_demo_serve_takes_its_port_from_the_environment(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(SCRIPT), "demo", "--dir", "demo", "--serve"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={
                "PATH": "/usr/bin:/bin",
                "PORTFOLIO_SYNC_SCHEDULE": "0 0 1 1 *",
                "PORTFOLIO_SYNC_PORT": str(port),
            },
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            def ready() -> bool:
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return proc.poll() is not None

            wait_for(ready, timeout=60, what="demo server")
            assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


def test_make_demo_takes_a_port() -> None:
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.run(
        ["make", "-n", "-C", str(repo), "demo", "PORT=8123"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "portfolio-sync demo --dir demo --serve --port 8123" in proc.stdout
