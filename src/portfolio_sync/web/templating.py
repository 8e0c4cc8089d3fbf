"""Console pages from Jinja2 templates (`web/templates/`), autoescaped.

Keys, paths and error texts come from outside (a key may well be `<script>`), so every
value is escaped by Jinja2's autoescape; nothing is marked safe. The pages load their
script and style from `/static/` and ship a CSP without 'unsafe-inline', so anything that
slipped through still could not run.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

CSP = (
    "default-src 'none'; img-src 'self' data: https: http:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_SPANS = ((90, 1, "s"), (5400, 60, "min"), (129600, 3600, "h"), (float("inf"), 86400, "d"))


def aware(value: object) -> datetime | None:
    """A datetime from a stored value (naive ones are UTC; ISO text is parsed)."""
    if isinstance(value, str) and value:
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def stamp(value: object) -> str:
    at = aware(value)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if at else "—"


def ago(value: object) -> str:
    """`3 min ago` / `in 2 h`."""
    at = aware(value)
    if at is None:
        return ""
    seconds = (datetime.now(UTC) - at).total_seconds()
    _, unit, name = next(span for span in _SPANS if abs(seconds) < span[0])
    size = f"{abs(seconds) / unit:.0f} {name}"
    return f"{size} ago" if seconds >= 0 else f"in {size}"


def path_url(path: str) -> str:
    """A storage path or key quoted for a URL path (names that are not UTF-8 included)."""
    return quote(path.encode("utf-8", "surrogateescape"), safe="/")


def query(**params: object) -> str:
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("portfolio_sync.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(stamp=stamp, ago=ago, path_url=path_url, iso=_iso, name=_name)
    env.globals.update(query=query)
    return env


def _iso(value: object) -> str:
    at = aware(value)
    return at.isoformat() if at else ""


def _name(path: str) -> str:
    return path.rpartition("/")[2]


def render(
    request: Request, template: str, context: dict[str, Any], *, status: int = 200
) -> HTMLResponse:
    base = request.scope.get("root_path", "").rstrip("/")
    page = environment().get_template(template).render(base=base, **context)
    headers = {"Content-Security-Policy": CSP, "Cache-Control": "no-store"}
    return HTMLResponse(page, status_code=status, headers=headers)
