"""Console sessions: signed cookies that expire, and CSRF tokens bound to one session."""

from __future__ import annotations

import base64
import json
from http.cookies import SimpleCookie

from fastapi import Response
from starlette.requests import Request

from portfolio_sync.web.session import COOKIE, ConsoleAuth, Session


def request(cookie: str | None = None, scheme: str = "http") -> Request:
    headers = [(b"cookie", f"{COOKIE}={cookie}".encode())] if cookie is not None else []
    scope = {"type": "http", "scheme": scheme, "headers": headers, "server": ("x", 80), "path": "/"}
    return Request(scope)


def issued(auth: ConsoleAuth, session: Session, scheme: str = "http") -> tuple[str, str]:
    """The cookie value `auth` sets for `session`, and the whole Set-Cookie header."""
    response = Response()
    auth.attach(response, request(scheme=scheme), session)
    header = response.headers["set-cookie"]
    parsed: SimpleCookie = SimpleCookie()
    parsed.load(header)
    return parsed[COOKIE].value, header


def test_a_signed_session_reads_back_and_is_flagged() -> None:
    auth = ConsoleAuth("secret")
    session = auth.new(logged_in=True)
    value, header = issued(auth, session, scheme="https")
    assert auth.read(request(value)) == session
    for flag in ("HttpOnly", "SameSite=strict", "Secure", "Max-Age=43200", "Path=/"):
        assert flag in header
    assert "Secure" not in issued(auth, session)[1]  # plain HTTP (loopback): no Secure


def test_forged_expired_and_foreign_cookies_are_no_session() -> None:
    auth = ConsoleAuth("secret")
    session = auth.new(logged_in=False)
    value, _ = issued(auth, session)
    body, _, signature = value.partition(".")
    claims = json.loads(base64.urlsafe_b64decode(body))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "in": True}).encode()).decode()
    assert auth.read(request(f"{forged}.{signature}")) is None
    expired = Session(sid=session.sid, logged_in=True, expires=1)
    assert auth.read(request(issued(auth, expired)[0])) is None
    assert ConsoleAuth("other secret").read(request(value)) is None
    for junk in ("", ".", "x.y", "!!!.sig", value + "x"):
        assert auth.read(request(junk)) is None


def test_csrf_tokens_belong_to_one_session_and_one_key() -> None:
    auth = ConsoleAuth("secret")
    a, b = auth.new(logged_in=False), auth.new(logged_in=False)
    assert auth.csrf(a) == auth.csrf(a) != auth.csrf(b)
    assert ConsoleAuth("secret").csrf(a) == auth.csrf(a)  # same secret: survives a restart
    assert ConsoleAuth(None).csrf(a) != ConsoleAuth(None).csrf(a)  # no secret: per process


def test_the_secret_check() -> None:
    assert ConsoleAuth("secret").check_secret("secret")
    assert not ConsoleAuth("secret").check_secret("secret ")
    assert not ConsoleAuth(None).check_secret("")
