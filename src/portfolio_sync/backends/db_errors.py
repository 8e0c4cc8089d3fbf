"""Database errors told as one line a person can act on: what failed, in which database,
why, and what to do.

A driver's error carries the failing SQL, a link and the driver's own wording over several
lines; at start-up (opening the table, upgrading our tables) that was printed as a
traceback. Here it becomes a :class:`CatalogError` naming the database file or server; the
original stays in the debug log (``-vv``) with its traceback.
"""

from __future__ import annotations

import logging

import sqlalchemy as sa

from portfolio_sync.errors import CatalogError

logger = logging.getLogger(__name__)

#: The lock wait of SQLite connections unless the URL says otherwise (``?timeout=5``).
SQLITE_LOCK_TIMEOUT = 30.0


def sqlite_lock_timeout(url: sa.URL) -> float:
    """Seconds a SQLite connection waits for another one's lock (the URL's ``timeout``)."""
    value = url.query.get("timeout")
    try:
        return float(value) if isinstance(value, str) else SQLITE_LOCK_TIMEOUT
    except ValueError:
        return SQLITE_LOCK_TIMEOUT


def where(engine: sa.Engine) -> str:
    """The database file (SQLite) or ``host:port/name`` (server), without credentials."""
    url = engine.url
    if url.get_backend_name() == "sqlite":
        return url.database or ":memory:"
    port = f":{url.port}" if url.port else ""
    return f"{url.host or 'localhost'}{port}/{url.database or ''}"


def explain(exc: sa.exc.SQLAlchemyError, *, doing: str, engine: sa.Engine) -> CatalogError:
    """A one-line :class:`CatalogError` for ``exc`` raised while ``doing`` (e.g. "cannot
    upgrade portfolio-sync's tables"); raise it ``from None``, the cause is logged here."""
    logger.debug("database error", exc_info=exc, extra={"action": "database_error", "doing": doing})
    original = getattr(exc, "orig", None) or exc
    detail = (str(original).strip().splitlines() or [type(original).__name__])[0]
    sqlite = engine.url.get_backend_name() == "sqlite"
    if sqlite and "locked" in detail:
        waited = sqlite_lock_timeout(engine.url)
        reason = f"the database is locked by another connection (waited {waited:g} s)"
        advice = "retry when it has finished, or stop the process holding it"
    elif isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        reason = f"the connection was lost ({detail})"
        advice = "check that the server is up, then retry"
    elif isinstance(exc, sa.exc.OperationalError):
        reason = detail
        advice = "check that the database is reachable and not busy, then retry"
    else:
        reason = detail
        advice = "check the database and the settings, then retry"
    return CatalogError(f"{doing} in {where(engine)}: {reason}; {advice}")
