"""Authenticate webhook requests against the one shared secret (``PORTFOLIO_SYNC_WEBHOOK_SECRET``).

Senders differ in what they can do, so several credentials are accepted; any one that
matches the secret lets the request in:

* ``Authorization: Bearer <secret>``: MinIO's ``auth_token``, the self-hosted Supabase
  Storage API (``WEBHOOK_API_KEY``), any script or queue forwarder.
* ``X-Webhook-Secret: <secret>``: Supabase database webhooks go through pg_net, which
  cannot sign; users add the secret as a custom header in the webhook's settings.
* ``Authorization: Basic`` whose password is the secret (any user name): AWS SNS can set
  no header but does send credentials embedded in the endpoint URL
  (``https://sync:<secret>@host/hooks/storage``) as Basic auth.
* Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id``,
  ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``, a space-separated list
  of ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``. Only these also bind the
  body and carry replay protection (``tolerance`` seconds either way).

Signing key, per the Standard Webhooks spec: a secret starting with ``whsec_`` is
base64 of the key bytes (what Svix-style providers hand out); any other secret is used as
its UTF-8 bytes, so one plain secret works for bearer and signatures alike. Bearer,
header and Basic credentials are always compared with the whole secret string.

Every comparison is constant-time (``hmac.compare_digest`` on bytes). Every failure is a
``PayloadError`` with status 401 whose message says what was wrong, never the secret.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Mapping

from portfolio_sync.errors import PayloadError

__all__ = ["sign", "verify_request"]

_PREFIX = "whsec_"
_TIMESTAMP = re.compile(r"[0-9]{1,15}")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return the Standard Webhooks ``webhook-signature`` value (``v1,<base64>``) for a
    message, as a sender would compute it. Raises ``ValueError`` for a ``whsec_`` secret
    whose remainder is not base64."""
    return "v1," + _signature(_signing_key(secret), msg_id, str(timestamp), body)


def verify_request(
    *,
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    tolerance: float = 300.0,
) -> None:
    """Return if the request carries a credential matching ``secret``; else raise
    ``PayloadError(status=401)``. Header names are matched case-insensitively.

    ``now`` (Unix seconds, default the current time) and ``tolerance`` bound the age of a
    Standard Webhooks timestamp in both directions, so a captured request cannot be
    replayed later and a future-dated one cannot be stockpiled. An empty ``secret``
    rejects everything: an unconfigured server must fail closed, not open.
    """
    if not secret:
        raise PayloadError("no webhook secret is configured; refusing the request", status=401)
    lower = _lower(headers)
    expected = _bytes(secret)
    failures: list[str] = []

    authorization = lower.get("authorization")
    if authorization is not None:
        scheme, _, credential = authorization.strip().partition(" ")
        credential = credential.strip()
        if scheme.lower() == "bearer":
            if hmac.compare_digest(_bytes(credential), expected):
                return
            failures.append("wrong bearer token")
        elif scheme.lower() == "basic":
            if hmac.compare_digest(_basic_password(credential), expected):
                return
            failures.append("wrong basic-auth password")
        else:
            failures.append(f"unsupported Authorization scheme {scheme[:20]!r}")

    header_secret = lower.get("x-webhook-secret")
    if header_secret is not None:
        if hmac.compare_digest(_bytes(header_secret.strip()), expected):
            return
        failures.append("wrong x-webhook-secret")

    if any(name in lower for name in ("webhook-id", "webhook-timestamp", "webhook-signature")):
        reason = _standard_webhooks(secret, lower, body, now, tolerance)
        if reason is None:
            return
        failures.append(reason)

    if not failures:
        raise PayloadError(
            "no credentials: send Authorization: Bearer <secret>, an X-Webhook-Secret "
            "header, or Standard Webhooks signature headers",
            status=401,
        )
    raise PayloadError("; ".join(failures), status=401)


def _standard_webhooks(
    secret: str, lower: Mapping[str, str], body: bytes, now: float | None, tolerance: float
) -> str | None:
    """Return why the Standard Webhooks headers do not authenticate ``body``, or None."""
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        if not lower.get(name):
            return f"missing {name} header"
    msg_id, stamp, signatures = (
        lower["webhook-id"],
        lower["webhook-timestamp"].strip(),
        lower["webhook-signature"],
    )
    if not _TIMESTAMP.fullmatch(stamp):
        return "webhook-timestamp is not an integer number of Unix seconds"
    try:
        key = _signing_key(secret)
    except ValueError:
        return "the configured whsec_ secret is not valid base64; signatures cannot be checked"
    if not isinstance(body, bytes | bytearray | memoryview):
        return "body is not bytes"
    expected = _signature(key, msg_id, stamp, bytes(body)).encode("ascii")
    matched = False
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        # Keep comparing after a match: the time taken must not depend on which entry fits.
        if version == "v1" and hmac.compare_digest(_bytes(value), expected):
            matched = True
    if not matched:
        return "webhook-signature does not match the body"
    current = time.time() if now is None else now
    age = current - int(stamp)
    if age > tolerance:
        return f"webhook-timestamp is {int(age)} s old (replay protection allows {tolerance:g} s)"
    if age < -tolerance:
        return f"webhook-timestamp is {int(-age)} s in the future (allowed {tolerance:g} s)"
    return None


def _signing_key(secret: str) -> bytes:
    if secret.startswith(_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(_PREFIX), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("a whsec_ secret must be followed by base64") from exc
    return _bytes(secret)


def _signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    signed = _bytes(msg_id) + b"." + _bytes(timestamp) + b"." + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def _basic_password(credential: str) -> bytes:
    try:
        decoded = base64.b64decode(credential, validate=True)
    except (binascii.Error, ValueError):
        return b""
    _, sep, password = decoded.partition(b":")
    return password if sep else b""


def _bytes(text: str) -> bytes:
    # surrogatepass: header values can hold any code point; encoding must never raise.
    return text.encode("utf-8", "surrogatepass")


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    lower: dict[str, str] = {}
    try:
        items = list(headers.items())
    except (AttributeError, TypeError):
        return lower
    for name, value in items:
        if isinstance(name, str) and isinstance(value, str):
            lower[name.lower()] = value
    return lower
