"""What a user sees when something is wrong: one line naming what failed and what to do,
once, with the documented exit code (0 ok, 1 sync errors, 2 usage or configuration).

Every failure is real: a closed local port for PostgreSQL, moto for S3 (stopped for an
outage, with credential checks on for wrong keys), files that are not there.
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.command import run
from tests.servers import MotoServer, S3Target, free_port


def _sqlite_world(folder: Path) -> dict[str, str]:
    """A SQLite table (1 row) and a storage folder; the environment pointing at both."""
    folder.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(folder / "app.db") as db:
        db.execute("CREATE TABLE portfolios (id INTEGER PRIMARY KEY, images TEXT)")
        db.execute("INSERT INTO portfolios (id, images) VALUES (1, NULL)")
    (folder / "storage" / "1").mkdir(parents=True)
    (folder / "storage" / "1" / "a.jpg").write_bytes(b"\xff\xd8" + b"0" * 60)
    return {
        "PATH": os.environ["PATH"],
        "PORTFOLIO_SYNC_DATABASE_URL": f"sqlite:///{folder / 'app.db'}",
        "PORTFOLIO_SYNC_STORAGE_URL": str(folder / "storage"),
    }


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port nothing listens on (held bound, not listening, for the test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


# ---- database ---------------------------------------------------------------------------
def test_postgres_down_is_one_line_naming_host_and_port(tmp_path: Path, closed_port: int) -> None:
    env = _sqlite_world(tmp_path)
    env["PORTFOLIO_SYNC_DATABASE_URL"] = f"postgresql://app:s3cret@127.0.0.1:{closed_port}/db"
    proc = run("status", env=env)
    line = _one_line(proc.stderr)
    assert proc.returncode == 1
    assert line == (
        f"error: cannot connect to the database at 127.0.0.1:{closed_port} "
        f"(postgresql+psycopg://app:***@127.0.0.1:{closed_port}/db); "
        "start the database server or fix PORTFOLIO_SYNC_DATABASE_URL"
    )
    assert "s3cret" not in proc.stderr and "sqlalche.me" not in proc.stderr


def test_vv_adds_the_traceback(tmp_path: Path, closed_port: int) -> None:
    env = _sqlite_world(tmp_path)
    env["PORTFOLIO_SYNC_DATABASE_URL"] = f"postgresql://app@127.0.0.1:{closed_port}/db"
    proc = run("-vv", "status", env=env)
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "psycopg.OperationalError" in proc.stderr
    assert proc.stderr.rstrip().splitlines()[-1].startswith("error: cannot connect")


def test_missing_postgres_database_is_named(tmp_path: Path, postgres_server_url: str) -> None:
    env = _sqlite_world(tmp_path)
    env["PORTFOLIO_SYNC_DATABASE_URL"] = postgres_server_url.rsplit("/", 1)[0] + "/no_such_db"
    proc = run("status", env=env)
    assert proc.returncode == 1
    assert "database 'no_such_db' does not exist at" in _one_line(proc.stderr)


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    env = _sqlite_world(tmp_path / "site")
    env["PORTFOLIO_SYNC_DATABASE_URL"] = "sqlite:///nope.db"
    proc = run("sync", "--all", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert _one_line(proc.stderr).startswith(
        f"error: SQLite database {tmp_path / 'nope.db'} does not exist; "
    )
    assert not (tmp_path / "nope.db").exists()


def test_unopenable_sqlite_path_is_reported_resolved(tmp_path: Path) -> None:
    env = _sqlite_world(tmp_path / "site")
    (tmp_path / "a-folder.db").mkdir()
    env["PORTFOLIO_SYNC_DATABASE_URL"] = "sqlite:///a-folder.db"
    proc = run("status", env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert _one_line(proc.stderr).startswith(
        f"error: cannot open SQLite database {tmp_path / 'a-folder.db'}: "
    )


def test_unknown_table_and_columns_are_configuration_errors(tmp_path: Path) -> None:
    env = _sqlite_world(tmp_path)
    proc = run("--table", "nope", "sync", "--all", env=env)
    assert proc.returncode == 2
    assert _one_line(proc.stderr) == (
        f"error: table 'nope' does not exist in sqlite:///{tmp_path / 'app.db'}; "
        "create it, or name yours with --table / PORTFOLIO_SYNC_TABLE"
    )
    proc = run("--images-column", "photos", "sync", "1", env=env)
    assert proc.returncode == 2
    assert "has no images column(s) photos; name yours with --images-column" in proc.stderr
    proc = run("--key-column", "slug", "status", env=env)
    assert proc.returncode == 2 and "has no key column 'slug'" in proc.stderr


def test_config_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = _sqlite_world(site)
    del env["PORTFOLIO_SYNC_DATABASE_URL"], env["PORTFOLIO_SYNC_STORAGE_URL"]
    (site / "portfolio-sync.toml").write_text(
        'database_url = "sqlite:///app.db"\nstorage_url = "storage"\n', encoding="utf-8"
    )
    proc = run("-c", "site/portfolio-sync.toml", "sync", "1", env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "1: updated (+1 -0)" in proc.stdout
    assert not (tmp_path / "app.db").exists()


# ---- exit codes ---------------------------------------------------------------------------
def test_sync_of_a_key_without_row_or_folder_exits_1(tmp_path: Path) -> None:
    env = _sqlite_world(tmp_path)
    proc = run("sync", "999", env=env)
    assert proc.returncode == 1 and proc.stdout.strip() == "999: no row and no folder"


def test_demo_refuses_a_folder_that_is_not_a_demo(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("mine")
    proc = run("demo", "--dir", "mine", env={"PATH": os.environ["PATH"]}, cwd=tmp_path)
    assert proc.returncode == 2
    assert _one_line(proc.stderr) == (
        f"error: {tmp_path / 'mine'} exists and is not a portfolio-sync demo; "
        "pick another --dir (the demo replaces only a folder it created)"
    )
    assert (tmp_path / "mine" / "keep.txt").read_text() == "mine"


def test_port_in_use_exits_2_with_a_hint(tmp_path: Path) -> None:
    env = _sqlite_world(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run("serve", "--port", str(port), env=env, timeout=60)
    assert proc.returncode == 2
    assert f"error: port {port} on 127.0.0.1 is already in use; " in proc.stderr
    assert "--port" in proc.stderr and "Errno" not in proc.stderr


# ---- storage ------------------------------------------------------------------------------
def _s3_env(tmp_path: Path, endpoint: str, bucket: str, **aws: str) -> dict[str, str]:
    env = _sqlite_world(tmp_path)
    env.update(
        PORTFOLIO_SYNC_STORAGE_URL=f"s3://{bucket}",
        PORTFOLIO_SYNC_S3_ENDPOINT=endpoint,
        AWS_REGION="us-east-1",
        # Where the SDK looks for an instance role: a closed local port, never the network.
        AWS_METADATA_ENDPOINT=f"http://127.0.0.1:{free_port()}",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        **aws,
    )
    return env


def test_no_credentials(tmp_path: Path, s3_bucket: S3Target) -> None:
    env = _s3_env(tmp_path, s3_bucket.endpoint, s3_bucket.bucket)
    proc = run("sync", "--all", env=env)
    assert proc.returncode == 1
    assert f"aborted: no credentials for s3://{s3_bucket.bucket}; set AWS_ACCESS_KEY_ID and " in (
        proc.stderr
    )
    assert "Debug source" not in proc.stderr and proc.stderr.count("no credentials") == 1


def test_missing_bucket(tmp_path: Path, s3_bucket: S3Target) -> None:
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    env = _s3_env(tmp_path, s3_bucket.endpoint, "no-such-bucket", **keys)
    proc = run("sync", "1", env=env)
    assert proc.returncode == 1
    assert proc.stdout.strip() == (
        f"1: error: bucket of s3://no-such-bucket does not exist on {s3_bucket.endpoint}; "
        "create it or fix PORTFOLIO_SYNC_STORAGE_URL (s3://bucket[/prefix])"
    )
    assert proc.stderr == ""


def test_rejected_credentials(tmp_path: Path) -> None:
    with MotoServer(env={"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as moto:
        keys = {"AWS_ACCESS_KEY_ID": "unknown", "AWS_SECRET_ACCESS_KEY": "wrong"}
        env = _s3_env(tmp_path, moto.endpoint, "photos", **keys)
        proc = run("sync", "--all", env=env)
    assert proc.returncode == 1
    assert (
        f"aborted: {moto.endpoint} rejected the credentials for s3://photos "
        "(InvalidAccessKeyId); check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    ) in proc.stderr


def test_unreachable_endpoint_is_reported_once(
    tmp_path: Path, moto_server_private: MotoServer
) -> None:
    endpoint = moto_server_private.endpoint
    moto_server_private.stop()
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    env = _s3_env(tmp_path, endpoint, "photos", **keys)
    proc = run("sync", "--all", env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        f"aborted: cannot reach {endpoint} for s3://photos; check that the endpoint is up "
        "and PORTFOLIO_SYNC_S3_ENDPOINT is right"
    )
    assert proc.stdout.strip().startswith("0 changed, 0 unchanged, 0 orphans, 0 errors")


def test_tls_to_a_plain_http_endpoint(tmp_path: Path, s3_bucket: S3Target) -> None:
    endpoint = s3_bucket.endpoint.replace("http://", "https://")
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    proc = run("sync", "1", env=_s3_env(tmp_path, endpoint, s3_bucket.bucket, **keys))
    assert proc.returncode == 1
    assert f"1: error: TLS failed talking to {endpoint} for s3://{s3_bucket.bucket}; " in (
        proc.stdout
    )
