"""`GET /events` on a real `serve`: finished syncs are announced, and an open stream does
not hold the server up when it stops (uvicorn waits for open responses)."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx

from portfolio_sync.cli.demo import create_demo
from tests.acceptance.serve_process import serve_process


def test_sync_is_announced_and_an_open_stream_does_not_delay_shutdown(tmp_path: Path) -> None:
    demo = tmp_path / "demo"
    create_demo(demo, portfolios=3)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PORTFOLIO_SYNC_", "AWS_"))},
        "PORTFOLIO_SYNC_DATABASE_URL": f"sqlite:///{demo / 'portfolio-sync.db'}",
        "PORTFOLIO_SYNC_STORAGE_URL": str(demo / "storage"),
    }
    lines: list[str] = []
    opened = threading.Event()
    with serve_process(env, tmp_path, "--no-watch") as server:
        server.client.get("/")  # the catch-up pass has been queued by now

        def listen() -> None:
            with httpx.stream("GET", f"{server.url}/events", timeout=30) as answer:
                assert answer.headers["content-type"].startswith("text/event-stream")
                opened.set()
                for line in answer.iter_lines():
                    lines.append(line)

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        assert opened.wait(10)
        assert server.client.post("/sync/2").status_code == 202
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any('"2"' in line for line in lines):
            time.sleep(0.05)
        events = [json.loads(line[6:]) for line in lines if line.startswith('data: {"')]
        assert {"keys": ["2"]} in events or {"all": True} in events, lines
        assert lines[0] == "retry: 2000"
        stopping = time.monotonic()
    # serve_process stopped the server here and required exit code 0.
    assert time.monotonic() - stopping < 8, "the open event stream held the server up"
    reader.join(5)
    assert not reader.is_alive()
