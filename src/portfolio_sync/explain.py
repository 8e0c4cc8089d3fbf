"""Third-party failures as one line a person can act on: the one place they are worded.

Drivers describe a failure for their own developers: obstore ends its messages with a
30-line Rust debug dump, SQLAlchemy repeats the driver's text and adds a link, psycopg
says "connection failed" three ways. Users need what failed (the endpoint or database,
password hidden), why in a few words, and what to do. The storage and catalog backends
wrap every driver error through `storage_error` / `database_error`, and the CLI and the
service print or log `str(error)`: one line, message then hint.

Classification is by the driver's text (obstore raises `GenericError` for all of these;
psycopg raises `OperationalError`), so each rule names the fragment it relies on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from portfolio_sync.errors import CatalogError, ConfigError, StorageError

if TYPE_CHECKING:
    import sqlalchemy as sa

_DEBUG_DUMP = re.compile(r"\s*Debug source:.*", re.DOTALL)
_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def first_line(text: str) -> str:
    """The driver's own summary: no debug dump, no SQLAlchemy link, one line."""
    text = _DEBUG_DUMP.sub("", text)
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", text)
    text = re.sub(r"\[(SQL|parameters): .*?\](?=\s*(\[|$))", "", text, flags=re.DOTALL)
    text = re.sub(r"^\([\w.]+\) ", "", text.strip())  # SQLAlchemy's "(psycopg.Error) " prefix
    return " ".join(text.split())[:300]


def _has(text: str, *fragments: str) -> bool:
    lowered = text.lower()
    return any(f.lower() in lowered for f in fragments)


def storage_error(exc: BaseException, *, where: str, endpoint: str | None) -> StorageError:
    """`exc` from an S3 request to `where` (``s3://bucket/prefix``), worded for a person."""
    text = str(exc)
    code = _S3_CODE.search(text)
    s3_code = code.group(1) if code else ""
    server = endpoint or "AWS S3"
    if s3_code in ("InvalidAccessKeyId", "SignatureDoesNotMatch") or _has(text, "401 Unauthorized"):
        return StorageError(
            f"{server} rejected the credentials for {where} ({s3_code or '401'})",
            hint="check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_REGION)",
        )
    if _has(text, "169.254.169.254", "api/token", "credential", "NoCredentialProviders"):
        return StorageError(
            f"no credentials for {where}",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or run where an "
            "instance role provides them)",
        )
    if s3_code == "AccessDenied" or _has(text, "403 Forbidden"):
        return StorageError(
            f"access denied to {where} on {server}",
            hint="give these credentials permission to list the bucket (s3:ListBucket)",
        )
    if s3_code == "NoSuchBucket":
        return StorageError(
            f"bucket of {where} does not exist on {server}",
            hint="create it or fix PORTFOLIO_SYNC_STORAGE_URL (s3://bucket[/prefix])",
        )
    if _has(text, "certificate", "tls", "ssl", "InvalidMessage", "handshake"):
        return StorageError(
            f"TLS failed talking to {server} for {where}",
            hint="check that PORTFOLIO_SYNC_S3_ENDPOINT uses the right scheme (http:// or "
            "https://) and that its certificate is trusted (AWS_CA_BUNDLE)",
        )
    if _has(text, "error sending request", "connect", "dns error", "timed out", "refused"):
        return StorageError(
            f"cannot reach {server} for {where}",
            hint="check that the endpoint is up and PORTFOLIO_SYNC_S3_ENDPOINT is right",
        )
    return StorageError(f"storage request to {where} on {server} failed: {first_line(text)}")


def _host_port(url: sa.URL) -> str:
    return f"{url.host or 'localhost'}:{url.port or 5432}"


def database_error(exc: BaseException, url: sa.URL, *, doing: str = "") -> CatalogError:
    """A SQLAlchemy or driver error on the database at `url`, worded for a person.

    `doing` says what was being done ("reading portfolios"), for the errors that are not
    about the connection itself.
    """
    text = first_line(str(exc))
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() == "sqlite":
        if _has(text, "database is locked"):
            path = Path(url.database or "").resolve()
            return CatalogError(
                f"{doing + ' failed' if doing else 'database access failed'} in SQLite "
                f"database {path}: it is locked by another connection",
                hint="retry when it has finished, or stop the process holding it "
                "(add ?timeout=SECONDS to PORTFOLIO_SYNC_DATABASE_URL to wait longer)",
            )
        if _has(text, "unable to open database file", "disk I/O error", "readonly database"):
            path = Path(url.database or "").resolve()
            return CatalogError(
                f"cannot open SQLite database {path}: {text}",
                hint="check that the folder exists and is writable, or fix "
                "PORTFOLIO_SYNC_DATABASE_URL",
            )
        return CatalogError(f"database {shown}: {doing + ' failed: ' if doing else ''}{text}")
    where = _host_port(url)
    if _has(text, "password authentication failed", "no password supplied", 'role "'):
        return CatalogError(
            f"database at {where} refused the login ({shown})",
            hint="check the user and password in PORTFOLIO_SYNC_DATABASE_URL (URL-encode "
            "special characters in the password)",
        )
    if _has(text, 'database "') and _has(text, "does not exist"):
        return CatalogError(
            f"database {url.database!r} does not exist at {where}",
            hint="create it or fix the database name in PORTFOLIO_SYNC_DATABASE_URL",
        )
    if _has(
        text,
        "terminating connection",
        "server closed the connection",
        "connection is closed",
        "connection is lost",
    ):
        return CatalogError(
            f"lost the connection to the database at {where} ({shown})",
            hint="the operation is retried; if this persists, check the server and network",
        )
    if _has(
        text,
        "connection refused",
        "could not translate host name",
        "failed to resolve",
        "timeout expired",
        "connection failed",
        "could not connect",
    ):
        return CatalogError(
            f"cannot connect to the database at {where} ({shown})",
            hint="start the database server or fix PORTFOLIO_SYNC_DATABASE_URL",
        )
    return CatalogError(f"database {shown}: {doing + ' failed: ' if doing else ''}{text}")


def missing_table(table: str, url: sa.URL) -> ConfigError:
    return ConfigError(
        f"table {table!r} does not exist in {url.render_as_string(hide_password=True)}",
        hint="create it, or name yours with --table / PORTFOLIO_SYNC_TABLE",
    )
