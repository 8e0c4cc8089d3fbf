"""What the commands print: documented JSON, natural key order, no wrapping into files,
and full passes, failed ones included, in `status`."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.command import run

JPEG = b"\xff\xd8" + b"0" * 60
KEYS = (1, 2, 10, 11)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """Rows 1, 2, 10, 11 (row 2 NULL with an empty folder), each folder with one image."""
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("CREATE TABLE portfolios (id INTEGER PRIMARY KEY, images TEXT)")
        for key in KEYS:
            db.execute("INSERT INTO portfolios VALUES (?, ?)", (key, None))
    for key in KEYS:
        (tmp_path / "storage" / str(key)).mkdir(parents=True)
        if key != 2:
            (tmp_path / "storage" / str(key) / "a.jpg").write_bytes(JPEG)
            (tmp_path / "storage" / str(key) / "b.jpg").write_bytes(JPEG)
    return {
        "PATH": os.environ["PATH"],
        "PORTFOLIO_SYNC_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "PORTFOLIO_SYNC_STORAGE_URL": str(tmp_path / "storage"),
    }


def _json(*args: str, env: dict[str, str], expect: int = 0) -> Any:
    proc = run(*args, "--json", env=env)
    assert proc.returncode == expect, proc.stderr + proc.stdout
    return json.loads(proc.stdout)


def _no_python_reprs(text: str) -> None:
    for repr_ in ("frozenset(", "datetime.datetime(", "set()", "{'"):
        assert repr_ not in text


def _iso(value: str) -> datetime:
    parsed = datetime.fromisoformat(value)
    assert "T" in value and parsed.tzinfo is not None, value
    return parsed


def test_every_json_output_is_documented_json(env: dict[str, str]) -> None:
    dry = _json("diff", env=env)
    assert [r["key"] for r in dry["changed"]] == ["1", "2", "10", "11"]
    one = _json("sync", "10", "1", env=env)
    assert one[0]["listed"] == ["10/a.jpg", "10/b.jpg"]  # a list, not "frozenset({...})"
    assert one[1]["added"] == ["1/a.jpg", "1/b.jpg"]
    report = _json("sync", "--all", env=env)
    assert [r["key"] for r in report["changed"]] == ["2", "11"]  # natural order, not 11, 2
    assert report["ok"] and report["aborted"] is None
    keyed = _json("diff", "1", "2", env=env)
    assert [r["status"] for r in keyed] == ["unchanged", "unchanged"]
    history = _json("history", "1", env=env)
    _iso(history["history"][0]["at"])
    _iso(history["state"]["last_synced_at"])
    status = _json("status", env=env)
    last = status["passes"]["last"]
    assert last["outcome"] == "ok" and last["rows"] == 4 and last["changed"] == 2
    _iso(last["finished_at"])
    assert [h["key"] for h in status["recent"]][:2] in (["11", "2"], ["2", "11"])
    for args in (("sync", "1"), ("sync", "--all"), ("diff",), ("status",), ("history", "2")):
        proc = run(*args, "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        json.loads(proc.stdout)
        _no_python_reprs(proc.stdout)


def test_text_output_natural_order_null_and_no_wrapping(env: dict[str, str]) -> None:
    proc = run("sync", "--all", env=env)
    assert proc.returncode == 0, proc.stderr
    updated = [line.split(":")[0] for line in proc.stdout.splitlines() if ": updated" in line]
    assert updated == ["1", "2", "10", "11"]
    # NULL -> [] for the empty folder: said in words, not as "(+0 -0)"
    assert "2: updated (same images, value rewritten)" in proc.stdout
    assert "(+0 -0)" not in proc.stdout
    # piped output keeps long lines whole
    storage = Path(env["PORTFOLIO_SYNC_STORAGE_URL"])
    long_name = "a-very-long-file-name-" + "x" * 90 + ".jpg"
    (storage / "1" / long_name).write_bytes(JPEG)
    proc = run("sync", "1", env=env)
    assert f"  + 1/{long_name}" in proc.stdout.splitlines()


def test_aborted_pass_is_recorded_and_shown(env: dict[str, str]) -> None:
    assert run("sync", "--all", env=env).returncode == 0
    storage = Path(env["PORTFOLIO_SYNC_STORAGE_URL"])
    shutil.rmtree(storage)
    proc = run("sync", "--all", env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"aborted: storage folder {storage} does not exist or is not a folder"
    )
    status = _json("status", env=env)
    passes = status["passes"]
    assert passes["last"]["outcome"] == "aborted"
    assert passes["last"]["reason"] == f"storage folder {storage} does not exist or is not a folder"
    assert passes["last_ok"]["outcome"] == "ok" and passes["consecutive_failures"] == 1
    text = run("status", env=env).stdout
    assert "last full pass          FAILED " in text
    assert "failed passes in a row  1" in text
    assert "keys with errors        0 recorded; unknown since the pass" in text
    assert "keys with errors        0\n" not in text
