"""SQL that `portfolio-sync setup` installs on the user's table so row changes become work.

SQLite (embedded default): triggers append the key to `portfolio_sync_outbox`, which the
service drains. They fire on INSERT, DELETE, and UPDATE of any column *except* the images
columns, so the service's own writes never come back as work (architecture invariant 5).
`UPDATE OF` needs the column list: re-run `setup` after adding columns to the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

TRIGGER_PREFIX = "portfolio_sync_"


def sqlite_trigger_names(table: str) -> list[str]:
    base = TRIGGER_PREFIX + table.replace(".", "_")
    return [f"{base}_insert", f"{base}_update", f"{base}_delete"]


def sqlite_install(
    *,
    table: str,
    key: str,
    images: Sequence[str],
    others: Sequence[str],
    quote: Callable[[str], str],
) -> list[str]:
    """Statements (drop + create, so re-running `setup` picks up new columns)."""
    t, k = quote(table), quote(key)
    ins, upd, dele = sqlite_trigger_names(table)
    old_images = "json_object(" + ", ".join(f"'{c}', OLD.{quote(c)}" for c in images) + ")"
    watched = ", ".join(quote(c) for c in [key, *others])
    return [
        *(f"DROP TRIGGER IF EXISTS {quote(name)}" for name in (ins, upd, dele)),
        f"CREATE TRIGGER {quote(ins)} AFTER INSERT ON {t} BEGIN "
        f"INSERT INTO portfolio_sync_outbox (key, op) VALUES (CAST(NEW.{k} AS TEXT), 'INSERT'); "
        "END",
        f"CREATE TRIGGER {quote(upd)} AFTER UPDATE OF {watched} ON {t} BEGIN "
        f"INSERT INTO portfolio_sync_outbox (key, op) VALUES (CAST(NEW.{k} AS TEXT), 'UPDATE'); "
        f"INSERT INTO portfolio_sync_outbox (key, op, old_images) SELECT CAST(OLD.{k} AS TEXT), "
        f"'DELETE', {old_images} WHERE OLD.{k} IS NOT NEW.{k}; "
        "END",
        f"CREATE TRIGGER {quote(dele)} AFTER DELETE ON {t} BEGIN "
        f"INSERT INTO portfolio_sync_outbox (key, op, old_images) "
        f"VALUES (CAST(OLD.{k} AS TEXT), 'DELETE', {old_images}); "
        "END",
    ]


def sqlite_uninstall(*, table: str, quote: Callable[[str], str]) -> list[str]:
    return [f"DROP TRIGGER IF EXISTS {quote(name)}" for name in sqlite_trigger_names(table)]
