"""Real services for the integration and acceptance tests: PostgreSQL, moto S3, a counting proxy.

Fixtures live in ``tests/conftest.py``; this module holds the code behind them so a test can
also drive a server directly (stop moto mid-test, start a throwaway embedded PostgreSQL).

Everything binds to 127.0.0.1 (or a Unix socket), is bounded in time, and is closed
explicitly: the suite runs with ``filterwarnings = error``, so a leaked socket, file or
child process would fail an unrelated test through a ``ResourceWarning``.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterable, Mapping
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

#: boto3 clients are generated at runtime; without stub packages they are ``Any``.
S3Client = Any

#: Explicit server for the whole session; wins over the local probe, loses to the force switch.
TEST_DATABASE_URL_ENV = "PORTFOLIO_SYNC_TEST_DATABASE_URL"
#: ``1`` forces the embedded pgserver even when another server is reachable (proves the fallback).
FORCE_PGSERVER_ENV = "PORTFOLIO_SYNC_TEST_PGSERVER"
#: The developer/CI server tried before falling back to the embedded one.
LOCAL_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

LOOPBACK = "127.0.0.1"


class ServerUnavailable(RuntimeError):
    """A test server could not be found or started; the message says what was tried."""


# --------------------------------------------------------------------------- PostgreSQL URLs


def normalize_postgres_url(url: str) -> str:
    """Return the plain libpq form of ``url`` (``postgresql://``), dropping any SQLAlchemy driver.

    ``PORTFOLIO_SYNC_TEST_DATABASE_URL`` may be written either way; fixtures hand out the plain
    form because that is what the product accepts and what ``psycopg.connect`` understands.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in {"postgresql", "postgres"}:
        raise ValueError(f"not a PostgreSQL URL: {redact_url(url)}")
    return f"postgresql://{rest}"


def sqlalchemy_url(url: str) -> str:
    """Turn a plain ``postgresql://`` URL into the ``postgresql+psycopg://`` form for SQLAlchemy.

    Without the driver suffix SQLAlchemy would pick psycopg2, which is not installed.
    """
    return "postgresql+psycopg://" + normalize_postgres_url(url).partition("://")[2]


def with_search_path(url: str, schema: str) -> str:
    """Return ``url`` with ``options=-csearch_path=<schema>`` so every connection lands in it.

    Both ``psycopg.connect`` and SQLAlchemy's psycopg dialect pass ``options`` to the server,
    so product code needs no schema awareness. Existing ``options`` are kept.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    others = [(k, v) for k, v in query if k != "options"]
    options = [v for k, v in query if k == "options"]
    options.append(f"-csearch_path={schema}")
    new_query = urlencode([*others, ("options", " ".join(options))], safe="/")
    return urlunsplit(parts._replace(query=new_query))


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for headers and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def describe_postgres_url(url: str) -> str:
    """Short human form: ``host:port/db`` or ``socket /dir/db``."""
    parts = urlsplit(url)
    database = parts.path.lstrip("/") or "postgres"
    if parts.hostname:
        return f"{parts.hostname}:{parts.port or 5432}/{database}"
    host = dict(parse_qsl(parts.query)).get("host", "default socket")
    return f"socket {host}/{database}"


def connection_error(url: str, *, timeout: float = 2.0) -> str | None:
    """Try ``select 1`` on ``url``; return ``None`` on success, else a one-line reason."""
    try:
        with psycopg.connect(url, connect_timeout=max(1, round(timeout))) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    return None


# --------------------------------------------------------------------------- PostgreSQL servers


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class PostgresPlan:
    """Which server the session will use, decided once (cheaply) before any test runs.

    ``url`` is ``None`` for the embedded server: it only exists once started, and it is only
    started if a test asks for Postgres.
    """

    kind: Literal["env", "local", "pgserver"]
    url: str | None
    reason: str

    def describe(self) -> str:
        if self.kind == "env":
            assert self.url is not None
            return f"{describe_postgres_url(self.url)} ({TEST_DATABASE_URL_ENV})"
        if self.kind == "local":
            assert self.url is not None
            return f"{describe_postgres_url(self.url)} (local server)"
        return f"embedded pgserver, started on first use ({self.reason})"


def plan_postgres(
    environ: Mapping[str, str], *, local_url: str = LOCAL_POSTGRES_URL
) -> PostgresPlan:
    """Resolve force switch > ``PORTFOLIO_SYNC_TEST_DATABASE_URL`` > local 5432 > pgserver.

    An explicit URL is never second-guessed: if it is broken the fixture fails loudly rather
    than silently testing against another server.
    """
    if environ.get(FORCE_PGSERVER_ENV, "").strip() not in {"", "0"}:
        return PostgresPlan(kind="pgserver", url=None, reason=f"forced by {FORCE_PGSERVER_ENV}")
    env_url = environ.get(TEST_DATABASE_URL_ENV, "").strip()
    if env_url:
        return PostgresPlan(kind="env", url=normalize_postgres_url(env_url), reason="")
    error = connection_error(local_url, timeout=2.0)
    if error is None:
        return PostgresPlan(kind="local", url=local_url, reason="")
    return PostgresPlan(
        kind="pgserver", url=None, reason=f"{describe_postgres_url(local_url)}: {error}"
    )


class EmbeddedPostgres:
    """A private PostgreSQL from the ``pgserver`` wheel, in a temp dir, on a Unix socket only.

    Used when no server is configured or reachable, so the Postgres tests never skip. Starting
    takes one to a few seconds (initdb + pg_ctl). As root, pgserver runs postgres as a ``pgserver``
    system user it creates. ``stop()`` stops the server and deletes its data.
    """

    def __init__(self, base_dir: Path, server: Any) -> None:
        self.base_dir = base_dir
        self._server: Any = server
        self.url: str = server.get_uri()
        self.pid: int = server.get_pid()

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pgdata"

    @classmethod
    def start(cls) -> EmbeddedPostgres:
        base_dir = Path(tempfile.mkdtemp(prefix="psync-pg-"))
        try:
            with warnings.catch_warnings():
                # platformdirs warns at import (class body) when XDG_RUNTIME_DIR is unset.
                warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
                import pgserver

                server = pgserver.get_server(base_dir / "pgdata", cleanup_mode="delete")
        except Exception as exc:
            shutil.rmtree(base_dir, ignore_errors=True)
            raise ServerUnavailable(f"embedded pgserver failed to start: {exc!r}") from exc
        return cls(base_dir, server)

    def stop(self) -> None:
        """Stop postgres (``pg_ctl stop``) and remove the data directory; idempotent."""
        try:
            self._server.cleanup()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def create_schema(server_url: str) -> str:
    """Create a uniquely named schema ``t_<hex>`` and return its name.

    Random names let several sessions share one server without clashing.
    """
    schema = f"t_{secrets.token_hex(8)}"
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return schema


def drop_schema(server_url: str, schema: str) -> None:
    """Drop ``schema`` and everything in it.

    A lock timeout keeps teardown bounded: if a test leaked a connection that holds a lock in
    the schema, teardown fails with a clear error instead of hanging the session.
    """
    with psycopg.connect(server_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# --------------------------------------------------------------------------- moto S3


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (callers must cope with a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def _service_environ() -> dict[str, str]:
    """Environment for server subprocesses, without our own or AWS settings leaking in."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PORTFOLIO_SYNC_", "AWS_", "PYTEST_"))
    }


class MotoServer:
    """``moto_server`` in a subprocess on 127.0.0.1, which a test may stop and start again.

    ``start()`` after ``stop()`` reuses the same port, so a client configured with
    ``endpoint`` sees the "S3 outage" end. moto keeps state in memory: a restart loses every
    bucket and object. The server's output goes to a temp file, quoted in startup errors.
    """

    def __init__(
        self, *, startup_timeout: float = 20.0, env: Mapping[str, str] | None = None
    ) -> None:
        self.startup_timeout = startup_timeout
        self.env = dict(env or {})  # e.g. INITIAL_NO_AUTH_ACTION_COUNT=0: check credentials
        self._port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        if self._port is None:
            raise RuntimeError("MotoServer has not been started")
        return f"http://{LOOPBACK}:{self._port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers HTTP; no-op if already running."""
        if self._process is not None:
            return
        # A fresh port may be grabbed by someone else between probe and bind: retry then.
        # A restart must keep its port, so it gets one attempt.
        attempts = 1 if self._port is not None else 3
        for attempt in range(1, attempts + 1):
            port = self._port if self._port is not None else free_port()
            log = tempfile.TemporaryFile()
            process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**_service_environ(), **self.env},
            )
            try:
                self._wait_until_ready(process, port, log)
            except ServerUnavailable:
                _terminate(process)
                log.close()
                if attempt == attempts:
                    raise
                continue
            self._process, self._log, self._port = process, log, port
            return

    def stop(self) -> None:
        """Terminate the server (kill after 5 s) and reap it; idempotent. The port is kept."""
        process, log = self._process, self._log
        self._process = self._log = None
        if process is not None:
            _terminate(process)
        if log is not None:
            log.close()

    def reset(self) -> None:
        """Forget all buckets and objects (moto's ``/moto-api/reset``) without a restart."""
        _http_request(self.endpoint, "POST", "/moto-api/reset")

    def _wait_until_ready(
        self, process: subprocess.Popen[bytes], port: int, log: IO[bytes]
    ) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ServerUnavailable(
                    f"moto_server exited with {process.returncode} on port {port}:\n{_tail(log)}"
                )
            try:
                _http_request(f"http://{LOOPBACK}:{port}", "GET", "/", timeout=1.0)
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
                continue
            if process.poll() is None:
                return
        raise ServerUnavailable(
            f"moto_server did not answer on port {port} within {self.startup_timeout:.0f} s:\n"
            f"{_tail(log)}"
        )

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait(timeout=5)


def _tail(log: IO[bytes], limit: int = 2000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-limit:]


def _http_request(endpoint: str, method: str, path: str, *, timeout: float = 10.0) -> int:
    parts = urlsplit(endpoint)
    conn = http.client.HTTPConnection(parts.hostname or LOOPBACK, parts.port, timeout=timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def s3_client(endpoint: str, *, access_key: str, secret_key: str, region: str) -> S3Client:
    """A boto3 S3 client for test set-up and inspection, path-style and without retries.

    No retries keeps request counts exact and makes "server is down" fail fast. Close it
    (``client.close()``) or its pooled sockets surface as ``ResourceWarning`` errors.
    """
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class S3Target:
    """One bucket on a moto endpoint, plus the settings the product needs to reach it.

    ``put``/``delete``/``keys`` are test conveniences using boto3 (never the product's code
    path); call ``close()`` when done (the fixtures do).
    """

    endpoint: str
    bucket: str
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        """Environment variables that point the product at this bucket."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "PORTFOLIO_SYNC_S3_ENDPOINT": self.endpoint,
            "PORTFOLIO_SYNC_STORAGE_URL": f"s3://{self.bucket}",
        }

    @cached_property
    def client(self) -> S3Client:
        return s3_client(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
        )

    def create_bucket(self) -> None:
        self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def keys(self) -> list[str]:
        """All keys in the bucket, sorted."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def close(self) -> None:
        if "client" in self.__dict__:
            self.client.close()


def random_bucket_name() -> str:
    """``t-<hex>``: valid S3 bucket syntax, unique per test."""
    return f"t-{secrets.token_hex(8)}"


# --------------------------------------------------------------------------- counting proxy

#: Headers that describe one HTTP hop and must not be forwarded as-is.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)

RequestKind = Literal["service", "bucket", "object", "moto-api"]

#: What a ``CountingProxy`` does to requests while ``fault`` is set (see ``_ProxyHandler``).
Fault = Literal["500", "slow", "reset", "truncate-listing"]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    """One request seen by the proxy. ``status`` is 502 if moto could not be reached."""

    method: str
    path: str
    query: str
    kind: RequestKind
    status: int


def request_kind(path: str) -> RequestKind:
    """Classify a path-style S3 path: ``/`` service, ``/b`` bucket, ``/b/key`` object."""
    if path.startswith("/moto-api"):
        return "moto-api"
    segments = path.strip("/").split("/", 1)
    if segments == [""]:
        return "service"
    if len(segments) == 1 or segments[1] == "":
        return "bucket"
    return "object"


class CountingProxy:
    """A threaded HTTP reverse proxy on 127.0.0.1 that counts requests on their way to moto.

    moto has no per-request counter: its "recorder" (``/moto-api/recorder/*``) writes every
    request with its base64 body to one server-global file, which is too heavy for
    benchmarks and shared by all tests. Counting at this hop measures what the product
    actually sends over the wire, retries included. Each request is forwarded on a fresh
    upstream connection (simple, and survives a moto restart); bodies are buffered, which
    is fine at test sizes.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream_host: str = parts.hostname
        self.upstream_port: int = parts.port
        self._lock = threading.Lock()
        self._records: list[RecordedRequest] = []
        self._server: _ProxyServer | None = None
        #: Injected fault, applied to every request until set back to None: "500" answers
        #: an S3 InternalError, "slow" waits ``slow_seconds`` before forwarding, "reset"
        #: drops the connection without an answer, "truncate-listing" sends half of each
        #: bucket listing's body under the full Content-Length and closes.
        self.fault: Fault | None = None
        self.slow_seconds = 2.0
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        if self._server is None:
            raise RuntimeError("CountingProxy has not been started")
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def start(self) -> None:
        if self._server is not None:
            return
        server = _ProxyServer((LOOPBACK, 0), _ProxyHandler)
        server.proxy = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="counting-proxy",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def count(self, method: str | None = None, kind: RequestKind | None = None) -> int:
        """Requests seen so far, optionally only one method and/or path kind."""
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper()) and (kind is None or r.kind == kind)
        )

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def _record(self, record: RecordedRequest) -> None:
        with self._lock:
            self._records.append(record)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    proxy: CountingProxy


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    timeout = 30  # an idle keep-alive client must not pin a thread forever
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:
        """Silence per-request stderr logging; the records are the log."""

    def _forward(self) -> None:
        proxy = self.server.proxy
        parts = urlsplit(self.path)
        status = 502
        fault = proxy.fault
        try:
            body = self._read_body()
            if fault == "500":
                status = 500
                error = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
                self._reply(500, [("Content-Type", "application/xml")], error)
                return
            if fault == "reset":
                status = 0
                self._reset()
                return
            if fault == "slow":
                time.sleep(proxy.slow_seconds)
            headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
            try:
                status, reply_headers, data = self._upstream(proxy, headers, body)
            except (OSError, http.client.HTTPException) as exc:
                self._reply(502, [("Content-Type", "text/plain")], f"upstream: {exc}".encode())
            else:
                listing = self.command == "GET" and request_kind(parts.path) == "bucket"
                if fault == "truncate-listing" and listing and status == 200:
                    self._reply(status, reply_headers, data, cut=len(data) // 2)
                    self._reset()
                    return
                self._reply(status, reply_headers, data)
        finally:
            proxy._record(
                RecordedRequest(
                    method=self.command,
                    path=parts.path,
                    query=parts.query,
                    kind=request_kind(parts.path),
                    status=status,
                )
            )

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _forward

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # discard trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length else None

    def _upstream(
        self, proxy: CountingProxy, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
        try:
            # The client's own Host header is forwarded: moto routes on it, SigV4 signs it.
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            data = response.read()
            reply_headers = [
                (k, v)
                for k, v in response.getheaders()
                if k.lower() not in _HOP_BY_HOP
                or (self.command == "HEAD" and k.lower() == "content-length")
            ]
            return response.status, reply_headers, data
        finally:
            conn.close()

    def _reply(
        self, status: int, headers: list[tuple[str, str]], data: bytes, cut: int | None = None
    ) -> None:
        """Answer; with ``cut``, only that many bytes of ``data`` follow its full length."""
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        if self.command != "HEAD" and status not in (204, 304):
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data if cut is None else data[:cut])

    def _reset(self) -> None:
        """Drop the connection with a TCP reset (SO_LINGER 0), answering nothing more."""
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountingS3:
    """A bucket reached through a ``CountingProxy``: point the product at ``target``.

    Counts start at zero once the bucket exists; ``target.put`` etc. are counted too.
    """

    target: S3Target
    proxy: CountingProxy

    @property
    def endpoint(self) -> str:
        return self.proxy.endpoint

    @property
    def requests(self) -> list[RecordedRequest]:
        return self.proxy.requests

    def count(self, method: str | None = None, kind: RequestKind | None = None) -> int:
        """Requests seen so far, e.g. ``count("GET", "bucket")`` for list calls."""
        return self.proxy.count(method, kind)

    def reset(self) -> None:
        self.proxy.reset()
