"""The real-service fixtures of ``tests/conftest.py`` do what the other tests rely on."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import psycopg
import pytest
import sqlalchemy as sa
from botocore.exceptions import EndpointConnectionError

from tests.servers import (
    FORCE_PGSERVER_ENV,
    TEST_DATABASE_URL_ENV,
    CountingProxy,
    CountingS3,
    MotoServer,
    S3Target,
    create_schema,
    drop_schema,
    normalize_postgres_url,
    plan_postgres,
    redact_url,
    request_kind,
    s3_client,
    sqlalchemy_url,
    with_search_path,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- environment


def test_environment_has_no_product_or_aws_settings() -> None:
    allowed = {"AWS_CA_BUNDLE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"}
    leaked = [
        name
        for name in os.environ
        if name.startswith(("PORTFOLIO_SYNC_", "AWS_")) and name not in allowed
    ]
    assert leaked == []
    assert os.environ["AWS_CONFIG_FILE"] == os.environ["AWS_SHARED_CREDENTIALS_FILE"] == os.devnull


# --------------------------------------------------------------------------- PostgreSQL


def test_url_helpers() -> None:
    url = "postgresql://postgres:@/postgres?host=/tmp/pg"
    assert normalize_postgres_url("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert with_search_path(url, "t_1") == f"{url}&options=-csearch_path%3Dt_1"
    assert with_search_path("postgresql://u@h/db?options=-cwork_mem%3D1MB", "t_1").endswith(
        "options=-cwork_mem%3D1MB+-csearch_path%3Dt_1"
    )
    assert redact_url("postgresql://u:secret@h:1/db") == "postgresql://u:***@h:1/db"


def test_postgres_plan_resolution_order() -> None:
    env_url = "postgresql+psycopg://u@db.example:6543/x"
    unreachable = "postgresql://postgres@127.0.0.1:1/test"
    forced = plan_postgres({FORCE_PGSERVER_ENV: "1", TEST_DATABASE_URL_ENV: env_url})
    assert (forced.kind, forced.url) == ("pgserver", None)
    explicit = plan_postgres({TEST_DATABASE_URL_ENV: env_url}, local_url=unreachable)
    assert (explicit.kind, explicit.url) == ("env", "postgresql://u@db.example:6543/x")
    fallback = plan_postgres({FORCE_PGSERVER_ENV: "0"}, local_url=unreachable)
    assert fallback.kind == "pgserver" and "127.0.0.1:1/test" in fallback.reason


def test_postgres_server_answers(postgres_server_url: str) -> None:
    with psycopg.connect(postgres_server_url) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_pg_url_isolates_psycopg_connections(pg_url: str) -> None:
    with psycopg.connect(pg_url) as conn:
        schema = conn.execute("select current_schema()").fetchone()
        assert schema is not None and re.fullmatch(r"t_[0-9a-f]{16}", schema[0])
        conn.execute("create table things (id int)")
        # Other sessions may have their own "things"; resolve ours through search_path.
        found = conn.execute(
            "select n.nspname from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            " where c.oid = 'things'::regclass"
        ).fetchall()
        assert found == [schema]


def test_pg_url_isolates_sqlalchemy_connections(pg_url: str) -> None:
    engine = sa.create_engine(sqlalchemy_url(pg_url))
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("create table things (id int)"))
            conn.execute(sa.text("insert into things values (1)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("select current_schema()")).scalar_one().startswith("t_")
            assert conn.execute(sa.text("select count(*) from things")).scalar_one() == 1
    finally:
        engine.dispose()


def test_schema_is_dropped_with_its_tables(postgres_server_url: str) -> None:
    schema = create_schema(postgres_server_url)
    with psycopg.connect(with_search_path(postgres_server_url, schema)) as conn:
        conn.execute("create table things (id int)")
    drop_schema(postgres_server_url, schema)
    with psycopg.connect(postgres_server_url) as conn:
        found = conn.execute("select 1 from pg_namespace where nspname = %s", [schema])
        assert found.fetchall() == []


def _postgres_is_gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # reaped by init, or not
    except psutil.NoSuchProcess:
        return True


def test_forced_pgserver_fallback_runs_a_real_session() -> None:
    """A child pytest with PORTFOLIO_SYNC_TEST_PGSERVER=1 uses, then stops, an embedded server.

    The child also gets leaked settings and a bogus database URL, to prove the force switch
    wins and that the scrub hides them from tests.
    """
    env = {
        **os.environ,
        "PORTFOLIO_SYNC_TEST_PGSERVER": "1",
        "PORTFOLIO_SYNC_TEST_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
        "PORTFOLIO_SYNC_STORAGE_URL": "s3://leaked",
        "AWS_ACCESS_KEY_ID": "leaked",
    }
    env.pop("PYTEST_ADDOPTS", None)
    this = Path(__file__).relative_to(REPO_ROOT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"{this}::test_environment_has_no_product_or_aws_settings",
            f"{this}::test_pg_url_isolates_psycopg_connections",
            f"{this}::test_pg_url_isolates_sqlalchemy_connections",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "3 passed" in output
    assert "postgres: embedded pgserver, started on first use (forced by" in output
    used = re.search(r"postgres used: embedded pgserver pid (\d+), data (\S+) \(stopped\)", output)
    assert used is not None, output
    assert _postgres_is_gone(int(used[1]))
    assert not Path(used[2]).exists()


# --------------------------------------------------------------------------- S3


def test_moto_endpoint_serves_s3(moto_endpoint: str) -> None:
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", moto_endpoint)
    client = s3_client(
        moto_endpoint, access_key="testing", secret_key="testing", region="us-east-1"
    )
    try:
        assert client.list_buckets()["ResponseMetadata"]["HTTPStatusCode"] == 200
    finally:
        client.close()


def test_s3_bucket_helpers_and_env(s3_bucket: S3Target) -> None:
    assert re.fullmatch(r"t-[0-9a-f]{16}", s3_bucket.bucket)
    assert s3_bucket.keys() == []
    s3_bucket.put("b/2.jpg", b"two")
    s3_bucket.put("a/1.jpg", b"one")
    assert s3_bucket.keys() == ["a/1.jpg", "b/2.jpg"]
    s3_bucket.delete("a/1.jpg")
    assert s3_bucket.keys() == ["b/2.jpg"]
    assert s3_bucket.env() == {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "PORTFOLIO_SYNC_S3_ENDPOINT": s3_bucket.endpoint,
        "PORTFOLIO_SYNC_STORAGE_URL": f"s3://{s3_bucket.bucket}",
    }


def test_private_moto_can_stop_and_restart(moto_server_private: MotoServer) -> None:
    target = S3Target(endpoint=moto_server_private.endpoint, bucket="t-restart")
    try:
        target.create_bucket()
        target.put("k", b"v")
        moto_server_private.stop()
        with pytest.raises(EndpointConnectionError):
            target.keys()
        moto_server_private.start()
        assert target.endpoint == moto_server_private.endpoint  # same port after restart
        assert target.client.list_buckets()["Buckets"] == []  # in-memory state is lost
    finally:
        target.close()


def test_counting_s3_counts_list_calls(counting_s3: CountingS3) -> None:
    for _ in range(3):
        counting_s3.target.keys()
    assert counting_s3.count("GET", "bucket") == 3
    assert counting_s3.count() == 3
    assert all(
        r.query.startswith("list-type=2") or "list-type=2" in r.query for r in counting_s3.requests
    )


def test_counting_proxy_forwards_objects_faithfully(counting_s3: CountingS3) -> None:
    target = counting_s3.target
    target.put("photo.jpg", b"x" * 100_000)
    head = target.client.head_object(Bucket=target.bucket, Key="photo.jpg")
    assert head["ContentLength"] == 100_000
    body = target.client.get_object(Bucket=target.bucket, Key="photo.jpg")["Body"].read()
    assert body == b"x" * 100_000
    target.delete("photo.jpg")  # 204 No Content through the proxy
    assert target.keys() == []
    assert [(r.method, r.kind, r.status) for r in counting_s3.requests] == [
        ("PUT", "object", 200),
        ("HEAD", "object", 200),
        ("GET", "object", 200),
        ("DELETE", "object", 204),
        ("GET", "bucket", 200),
    ]
    counting_s3.reset()
    assert counting_s3.count() == 0


def test_counting_proxy_reports_a_down_upstream_as_502(moto_server_private: MotoServer) -> None:
    with CountingProxy(moto_server_private.endpoint) as proxy:
        moto_server_private.stop()
        target = S3Target(endpoint=proxy.endpoint, bucket="t-down")
        try:
            with pytest.raises(Exception, match="502"):
                target.keys()
        finally:
            target.close()
        assert [(r.method, r.status) for r in proxy.requests] == [("GET", 502)]


def test_request_kind() -> None:
    assert request_kind("/") == "service"
    assert request_kind("/b") == request_kind("/b/") == "bucket"
    assert request_kind("/b/k/with/slashes") == "object"
    assert request_kind("/moto-api/reset") == "moto-api"
