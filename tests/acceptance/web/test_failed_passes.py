"""`serve` with its storage down: failed passes are visible (/readyz, /metrics, the
dashboard) and the log stays readable (one line per failure, repeats counted)."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from tests.acceptance.serve_process import serve_process, wait_for
from tests.servers import MotoServer


def test_storage_down_failed_passes_are_shown_and_logged_briefly(
    tmp_path: Path, moto_server_private: MotoServer
) -> None:
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE portfolios (id INTEGER PRIMARY KEY, images TEXT)")
        db.executemany("INSERT INTO portfolios VALUES (?, ?)", [(k, None) for k in range(1, 30)])
    endpoint = moto_server_private.endpoint
    moto_server_private.stop()
    env = {
        "PATH": os.environ["PATH"],
        "PORTFOLIO_SYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "PORTFOLIO_SYNC_STORAGE_URL": "s3://photos",
        "PORTFOLIO_SYNC_S3_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }
    with serve_process(env, tmp_path) as server:
        ready = wait_for(
            lambda: (r := server.client.get("/readyz")).json()["last_full_pass"] and r,
            timeout=30,
            what="a recorded pass",
        )
        assert ready.status_code == 503
        body = ready.json()
        assert body["checks"]["storage"].startswith(f"cannot reach {endpoint} for s3://photos")
        last = body["last_full_pass"]
        assert last["outcome"] == "aborted" and "cannot reach" in last["reason"]
        assert last["consecutive_failures"] >= 1
        assert server.metric("portfolio_sync_last_pass_success") == 0
        assert server.metric("portfolio_sync_consecutive_failed_passes") >= 1
        page = server.client.get("/").text
        assert "failed" in page and "rows not checked since the pass failed" in page
        # Keep failing for a while: passes on request, row syncs by the dozen.
        for key in range(1, 30):
            server.client.post(f"/sync/{key}")
        for _ in range(5):
            server.client.post("/sync")
            time.sleep(1)
        log = server.log()
    lines = [
        line
        for line in log.splitlines()
        if (" WARNING " in line or " ERROR " in line) and "no_webhook_secret" not in line
    ]
    assert "Traceback" not in log and "Debug source" not in log
    # one line for the aborted pass and one for the failing syncs, then counted repeats
    assert 1 <= len(lines) <= 6, "\n".join(lines)
    assert all("cannot reach" in line for line in lines), "\n".join(lines)
