"""Who may read, and who the client is behind a local reverse proxy.

Reads (``GET /portfolios/{key}``, the dashboard and its image previews) show the table's
contents and the bucket's file names. They are open by default, as before; two settings
close them:

* ``read_secret`` (``PORTFOLIO_SYNC_READ_SECRET``): every read needs it, as
  ``Authorization: Bearer <secret>``, an ``X-Read-Secret: <secret>`` header, or the
  password of ``Authorization: Basic`` (any user name; what a browser sends after the
  401's ``WWW-Authenticate`` prompt, so the dashboard works in a browser). No cookie is
  ever set, so no other site can make a browser read with the user's credential.
* ``read_loopback_only`` (``PORTFOLIO_SYNC_READ_LOOPBACK_ONLY``): reads are answered only
  for clients on this machine (403 otherwise), e.g. behind an SSH tunnel.

Both may be set; then both apply. ``/healthz``, ``/readyz`` and ``/metrics`` stay open for
probes and scrapers. :func:`require_read` is the FastAPI dependency every read route
takes (``dependencies=[Depends(require_read)]``).

The client address: uvicorn takes it from ``X-Forwarded-For`` when the direct peer is on
127.0.0.1. :class:`ForwardedFor` does the same for the standard ``Forwarded: for=…``
header (RFC 7239), trusted under the same rule, so a local proxy that only sends
``Forwarded`` does not make every caller look local, and nobody else can claim to be.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import re

from fastapi import HTTPException, Request
from prometheus_client import Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CountRequests", "ForwardedFor", "client_address", "is_loopback", "require_read"]

_BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="portfolio-sync", charset="UTF-8"'}
_FOR = re.compile(r'(?:^|;)\s*for\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)', re.IGNORECASE)


def is_loopback(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


async def require_read(request: Request) -> None:
    """Refuse a read the settings do not allow: 403 off loopback when reads are local
    only, 401 (with a Basic challenge) without the read secret when one is set."""
    settings = request.app.state.runtime.settings
    if settings.read_loopback_only and not is_loopback(client_address(request)):
        raise HTTPException(403, "reads are answered only on this machine (read_loopback_only)")
    secret: str | None = settings.read_secret
    if not secret:
        return
    offered = _credentials(request)
    if not offered:
        raise HTTPException(
            401,
            "this server needs the read secret: Authorization: Bearer <secret>, "
            "X-Read-Secret, or Basic auth with the secret as password",
            headers=_BASIC_CHALLENGE,
        )
    expected = _bytes(secret)
    matched = False
    for credential in offered:  # compare all: timing must not tell which one was close
        matched |= hmac.compare_digest(credential, expected)
    if not matched:
        raise HTTPException(401, "wrong read secret", headers=_BASIC_CHALLENGE)


def _credentials(request: Request) -> list[bytes]:
    found = []
    header = request.headers.get("x-read-secret")
    if header is not None:
        found.append(_bytes(header.strip()))
    scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer":
        found.append(_bytes(value.strip()))
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            decoded = b""
        found.append(decoded.partition(b":")[2])
    return found


def _bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


class ForwardedFor:
    """ASGI middleware: with a loopback peer, the client is the right-most address of the
    ``Forwarded`` header's ``for=`` parameters that is not itself loopback (the last hop
    our proxy saw). Unparseable, ``unknown`` or obfuscated (``_x``) values are taken as
    they are, so such a client is never mistaken for a local one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            if client and is_loopback(client[0]):
                forwarded = [
                    v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"forwarded"
                ]
                host = forwarded_client(", ".join(forwarded)) if forwarded else None
                if host is not None:
                    scope = dict(scope, client=(host, 0))
        await self.app(scope, receive, send)


def forwarded_client(header: str) -> str | None:
    """The client ``Forwarded`` names (see :class:`ForwardedFor`), or None if it names
    none. Elements are comma-separated; each may have one ``for=``."""
    hosts = []
    for element in _split_elements(header):
        match = _FOR.search(element)
        if match is not None:
            hosts.append(_host(match.group(1)))
    for host in reversed(hosts):
        if not is_loopback(host):
            return host
    return hosts[0] if hosts else None


def _split_elements(header: str) -> list[str]:
    """Split on commas outside quoted strings."""
    elements: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in header:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            elements.append("".join(current))
            current = []
            continue
        current.append(char)
    elements.append("".join(current))
    return elements


def _host(value: str) -> str:
    """``"[2001:db8::1]:4711"`` → ``2001:db8::1``; ``192.0.2.1:80`` → ``192.0.2.1``."""
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    if value.startswith("["):
        return value[1:].partition("]")[0]
    if value.count(":") == 1:
        return value.partition(":")[0]
    return value


class CountRequests:
    """ASGI middleware counting every answered request in ``counter`` (labels method,
    route template such as ``/sync/{key}`` or ``other``, status class such as ``4xx``),
    so load and rejections are visible in ``/metrics`` with a fixed label set."""

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "other"
            method = scope.get("method", "")
            known = method if method in ("GET", "HEAD", "POST", "PUT", "DELETE") else "other"
            self.counter.labels(known, route, f"{status // 100}xx" if status else "none").inc()
