"""Exceptions raised by portfolio-sync.

The tree::

    PortfolioSyncError
    ├── ConfigError          bad settings; the message names the setting
    ├── StorageError         listing or reading storage failed (never treated as "empty")
    │   ├── ObjectNotFound   no object at that path (storage.py)
    │   └── ObjectTooLarge   refused to read an object over the size limit (storage.py)
    ├── CatalogError         the database refused, or the table is not what we expect
    │   └── ValueShapeError  a row's images value is not a list of strings
    ├── GuardTripped         a bulk pass would empty too many rows
    └── PayloadError         an HTTP payload we cannot use (carries an HTTP status)

Third-party errors are wrapped once, at the backend boundary (``raise StorageError(...)
from exc``), so callers only ever catch our classes.
"""

from __future__ import annotations


class PortfolioSyncError(Exception):
    """portfolio-sync failed."""

    def __init__(self, message: str | None = None, *, hint: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())
        #: What to do about it, when we know (shown after the message, on the same line).
        self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class ConfigError(PortfolioSyncError):
    """The configuration is invalid."""


class StorageError(PortfolioSyncError):
    """Storage could not be listed; nothing was written for the affected portfolios."""


class CatalogError(PortfolioSyncError):
    """The database could not be read or written."""


class ValueShapeError(CatalogError):
    """A row's images value is not a list of strings; it was left untouched."""


class GuardTripped(PortfolioSyncError):
    """The bulk pass would empty too many rows and was aborted; use --force to apply."""


class PayloadError(PortfolioSyncError):
    """The request payload cannot be used."""

    def __init__(
        self, message: str | None = None, *, status: int = 422, hint: str | None = None
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
