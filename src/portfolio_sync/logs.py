"""Logging setup for the CLI and server: JSON lines for machines, short text for people.

Library modules only call `logging.getLogger(__name__)` and put facts in `extra`; only
this module (called from the CLI) configures handlers.

Levels: a service (`serve`, `worker`) logs INFO by default: one line per sync that changed
something, one WARNING per expected failure. One-shot commands print their own results,
so by default they log only ERROR (what they would not print themselves); `-v` and `-vv`
add INFO and DEBUG to either. Tracebacks of expected failures (`PortfolioSyncError`) are
only logged at `-vv`. Identical records (same logger, message, action and error, whatever
the key) repeated within `REPEAT_WINDOW` seconds are dropped; the next one let through
carries `repeated=N`, the count dropped since: an outage logs a line per window, not a
line per key and retry.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Literal

from pythonjsonlogger.json import JsonFormatter

from portfolio_sync.errors import PortfolioSyncError

LogFormat = Literal["text", "json"]
REPEAT_WINDOW = 30.0
_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}


class _TextFormatter(logging.Formatter):
    """`time level logger: message key=value …` with the structured fields appended."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(
            f"{k}={v}"
            for k, v in record.__dict__.items()
            if k not in _RESERVED and v is not None and v != ()
        )
        if not fields:
            return line
        head, sep, rest = line.partition("\n")  # a traceback, if any, stays last
        return f"{head} {fields}{sep}{rest}"


class RepeatFilter(logging.Filter):
    """Drop repeats of a WARNING or ERROR within `window` seconds, counting them."""

    def __init__(
        self, window: float = REPEAT_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._seen: dict[tuple[object, ...], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        signature = (
            record.name,
            record.levelno,
            record.msg,
            getattr(record, "action", None),
            str(getattr(record, "error", "")),
        )
        now = self._clock()
        since, dropped = self._seen.get(signature, (None, 0))
        if since is not None and now - since < self.window:
            self._seen[signature] = (since, dropped + 1)
            return False
        if dropped:
            record.repeated = dropped
        if len(self._seen) > 1000:  # bounded: forget the oldest half
            for old in sorted(self._seen, key=lambda s: self._seen[s][0])[:500]:
                del self._seen[old]
        self._seen[signature] = (now, 0)
        return True


class _ExpectedWithoutTraceback(logging.Filter):
    """Strip the traceback of an expected failure: its one-line message says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = record.exc_info
        if info and isinstance(info[1], PortfolioSyncError):
            record.exc_info = None
            record.exc_text = None
        return True


def level_for(verbosity: int, *, service: bool) -> int:
    if verbosity >= 2:
        return logging.DEBUG
    if verbosity == 1 or service:
        return logging.INFO
    return logging.ERROR


_verbosity = 0


def enter_service_mode() -> None:
    """A one-shot command turned service (`demo --serve`): log at the service level."""
    logging.getLogger("portfolio_sync").setLevel(level_for(_verbosity, service=True))


def configure_logging(
    fmt: LogFormat = "text", verbosity: int = 0, *, service: bool = False
) -> None:
    global _verbosity
    _verbosity = verbosity
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RepeatFilter())
    if verbosity < 2:
        handler.addFilter(_ExpectedWithoutTraceback())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("portfolio_sync").setLevel(level_for(verbosity, service=service))
