"""Log hygiene: what a service logs at its default level, and repeats counted, not spammed."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from portfolio_sync.errors import StorageError
from portfolio_sync.logs import RepeatFilter, configure_logging
from portfolio_sync.models import SyncResult
from portfolio_sync.reconcile import log_result


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("portfolio_sync")
    handlers, level, our_level = root.handlers[:], root.level, ours.level
    yield
    root.handlers[:], root.level = handlers, level
    ours.setLevel(our_level)


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_service_default_logs_one_info_line_per_change(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", 0, service=True)
    log_result(SyncResult(key="3", status="unchanged", duration_ms=1.0), "watcher")
    log_result(
        SyncResult(key="3", status="changed", added=("3/a.jpg", "3/b.jpg"), duration_ms=4.25),
        "watcher",
    )
    (line,) = _lines(capsys)
    assert " INFO portfolio_sync.reconcile: portfolio updated action=row_updated key=3 " in line
    assert line.endswith("trigger=watcher duration_ms=4.2 added=2 removed=0")


def test_one_shot_default_logs_only_errors(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", 0)
    log_result(SyncResult(key="3", status="error", error="storage down"), "manual")
    assert _lines(capsys) == []  # the command prints the result itself
    configure_logging("text", 1)
    log_result(SyncResult(key="3", status="error", error="storage down"), "manual")
    (line,) = _lines(capsys)
    assert "WARNING portfolio_sync.reconcile: sync failed action=sync_failed key=3" in line


def test_expected_failures_have_no_traceback_below_vv(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("portfolio_sync.queue.local")
    configure_logging("text", 1)
    try:
        raise StorageError("cannot reach http://127.0.0.1:9 for s3://b", hint="start it")
    except StorageError as exc:
        logger.warning("sync gave up after retries", exc_info=exc, extra={"action": "x"})
    (line,) = _lines(capsys)
    assert line.endswith("action=x")
    configure_logging("text", 2)
    try:
        raise StorageError("cannot reach")
    except StorageError as exc:
        logger.warning("sync gave up after retries", exc_info=exc, extra={"action": "y"})
    assert "Traceback" in capsys.readouterr().err


def test_repeats_are_dropped_then_counted() -> None:
    now = [0.0]
    repeat = RepeatFilter(window=30.0, clock=lambda: now[0])

    def record(key: str, error: str = "cannot reach S3") -> logging.LogRecord:
        rec = logging.LogRecord(
            "portfolio_sync.reconcile", logging.WARNING, "", 0, "sync failed", (), None
        )
        rec.action, rec.key, rec.error = "sync_failed", key, error
        return rec

    assert repeat.filter(record("1"))
    assert [repeat.filter(record(str(k))) for k in range(2, 100)] == [False] * 98
    assert repeat.filter(record("1", error="another error"))  # a different error is news
    now[0] = 31.0
    later = record("5")
    assert repeat.filter(later) and later.repeated == 98  # type: ignore[attr-defined]
    info = logging.LogRecord("x", logging.INFO, "", 0, "portfolio updated", (), None)
    assert all(repeat.filter(info) for _ in range(5))  # INFO lines are never dropped
