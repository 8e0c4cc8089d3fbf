"""Who may press the console's buttons: the POST API's rule, carried by a browser session.

The JSON API authenticates each request (`sources/auth.py`); a browser cannot add those
headers to a form, so the console keeps the same rule with a cookie instead:

* without ``PORTFOLIO_SYNC_WEBHOOK_SECRET``, actions are allowed from loopback clients
  only (as the POST API);
* with it, the login form takes the secret and sets a signed session cookie
  (``HttpOnly``, ``SameSite=Strict``, ``Secure`` over HTTPS, 12 h).

Every page gets a session (anonymous until login) and every form carries a CSRF token
bound to it; an action is refused when the token is missing or stale, or when the browser
says the request comes from another site (``Sec-Fetch-Site``, ``Origin``). Without the
token a page on another site could make a loopback browser press the buttons.

Cookies are ``<base64 JSON>.<HMAC-SHA256>``; the key is derived from the secret, so
changing the secret ends every session. Without a secret a random per-process key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from fastapi import Request, Response

from portfolio_sync.errors import PayloadError
from portfolio_sync.web.access import is_loopback

COOKIE = "portfolio_sync_session"
SESSION_SECONDS = 12 * 3600
FORM_BYTES = 8192  # a console form is a token and a key or the secret


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    sid: str
    logged_in: bool
    expires: int


class ConsoleAuth:
    """Sessions, CSRF tokens and the action check for one app."""

    def __init__(self, secret: str | None) -> None:
        self.secret = secret or ""
        self._key = (
            hmac.new(self.secret.encode(), b"portfolio-sync console session", "sha256").digest()
            if self.secret
            else secrets.token_bytes(32)
        )

    # ---- sessions -----------------------------------------------------------------------
    def _sign(self, payload: bytes) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, payload, "sha256").digest()).decode()

    def read(self, request: Request) -> Session | None:
        """The request's valid, unexpired session, or None."""
        value = request.cookies.get(COOKIE, "")
        body, _, signature = value.partition(".")
        try:
            payload = base64.urlsafe_b64decode(body.encode())
        except (binascii.Error, ValueError):
            return None
        if not body or not hmac.compare_digest(self._sign(payload).encode(), signature.encode()):
            return None
        try:
            data = json.loads(payload)
            session = Session(
                sid=str(data["sid"]), logged_in=bool(data["in"]), expires=int(data["exp"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires > time.time() else None

    def new(self, *, logged_in: bool) -> Session:
        """A new session (a new id: login never keeps the anonymous one's)."""
        return Session(
            sid=secrets.token_urlsafe(18),
            logged_in=logged_in,
            expires=int(time.time()) + SESSION_SECONDS,
        )

    def attach(self, response: Response, request: Request, session: Session) -> None:
        """Set `session` as the cookie of `response`."""
        raw = json.dumps({"sid": session.sid, "in": session.logged_in, "exp": session.expires})
        payload = raw.encode()
        response.set_cookie(
            COOKIE,
            f"{base64.urlsafe_b64encode(payload).decode()}.{self._sign(payload)}",
            max_age=SESSION_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def end(self, response: Response) -> None:
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")

    def csrf(self, session: Session) -> str:
        return self._sign(b"csrf:" + session.sid.encode())

    # ---- actions ------------------------------------------------------------------------
    @property
    def needs_login(self) -> bool:
        return bool(self.secret)

    def may_act(self, request: Request, session: Session | None) -> bool:
        """Whether buttons should be offered (the check itself is `authorize`)."""
        if self.secret:
            return session is not None and session.logged_in
        return is_loopback(request.client.host if request.client else None)

    async def form(self, request: Request) -> tuple[Session, dict[str, str]]:
        """The posted form of a same-site request with a valid CSRF token; else 403."""
        refuse_cross_site(request)
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            raise PayloadError("expected a form (application/x-www-form-urlencoded)", status=415)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > FORM_BYTES:
                raise PayloadError(f"form larger than {FORM_BYTES} bytes", status=413)
        fields = {
            k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"), max_num_fields=10).items()
        }
        session = self.read(request)
        token = fields.get("csrf", "")
        if session is None or not hmac.compare_digest(token.encode(), self.csrf(session).encode()):
            raise PayloadError(
                "the form's token is missing or stale (or cookies are off); reload the page",
                status=403,
            )
        return session, fields

    def authorize(self, request: Request, session: Session) -> None:
        """Raise unless this session may run actions: the POST API's rule."""
        if self.secret:
            if not session.logged_in:
                raise PayloadError("log in with the webhook secret first", status=401)
        elif not is_loopback(request.client.host if request.client else None):
            raise PayloadError(
                "PORTFOLIO_SYNC_WEBHOOK_SECRET is not set, so only requests "
                "from this machine are accepted",
                status=403,
            )

    def check_secret(self, offered: str) -> bool:
        return bool(self.secret) and hmac.compare_digest(
            hashlib.sha256(offered.encode("utf-8", "surrogatepass")).digest(),
            hashlib.sha256(self.secret.encode()).digest(),
        )


def refuse_cross_site(request: Request) -> None:
    """403 when the browser says the request was started by another site.

    ``Sec-Fetch-Site`` is set by the browser and cannot be set by a page, so when it is
    there it decides (and a proxy that rewrites ``Host`` changes nothing). Browsers too old
    to send it are judged by ``Origin`` against ``Host`` or ``X-Forwarded-Host``.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        if site not in ("same-origin", "none"):
            reason = f"cross-site request refused (Sec-Fetch-Site: {site[:20]})"
            raise PayloadError(reason, status=403)
        return
    origin = request.headers.get("origin")
    if origin is None:
        return
    if origin == "null":
        raise PayloadError("cross-site request refused (Origin: null)", status=403)
    hosts = {request.headers.get(name, "").lower() for name in ("host", "x-forwarded-host")} - {""}
    if urlsplit(origin).netloc.lower() not in hosts:
        raise PayloadError("cross-site request refused (Origin is another site)", status=403)
