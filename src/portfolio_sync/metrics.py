"""Prometheus metrics, on a registry per runtime (so several runtimes in one test process
do not collide). Trigger labels are cut to their kind (`storage`, `database`, `schedule`…)
to keep label cardinality fixed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from portfolio_sync.models import PassReport, SyncResult


def trigger_kind(trigger: str) -> str:
    return trigger.partition(":")[0][:32] or "unknown"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.syncs = Counter(
            "portfolio_sync_syncs",
            "Syncs of one portfolio by outcome.",
            ["trigger", "status"],
            registry=r,
        )
        self.sync_seconds = Histogram(
            "portfolio_sync_sync_duration_seconds",
            "Duration of one portfolio sync.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.rows_written = Counter("portfolio_sync_rows_written", "Rows written.", registry=r)
        self.passes = Counter(
            "portfolio_sync_full_passes", "Full passes by outcome.", ["outcome"], registry=r
        )
        self.pass_seconds = Gauge(
            "portfolio_sync_last_full_pass_duration_seconds",
            "Duration of the last full pass.",
            registry=r,
        )
        self.pass_timestamp = Gauge(
            "portfolio_sync_last_full_pass_timestamp_seconds",
            "When the last full pass finished.",
            registry=r,
        )
        self.last_pass_success = Gauge(
            "portfolio_sync_last_pass_success",
            "1 if the last full pass completed without errors, 0 if it failed or was aborted.",
            registry=r,
        )
        self.failed_passes = Gauge(
            "portfolio_sync_consecutive_failed_passes",
            "Full passes that failed or were aborted since the last successful one.",
            registry=r,
        )
        self.orphans = Gauge(
            "portfolio_sync_orphan_folders",
            "Folders without a row at the last full pass.",
            registry=r,
        )
        self.events = Counter(
            "portfolio_sync_events",
            "Incoming events by source and outcome.",
            ["source", "outcome"],
            registry=r,
        )
        self.queue_pending = Gauge(
            "portfolio_sync_queue_pending", "Keys waiting to sync.", registry=r
        )
        self.queue_running = Gauge("portfolio_sync_queue_running", "Syncs running now.", registry=r)
        self.held = Gauge(
            "portfolio_sync_held_writes",
            "Emptying writes held by the mass-deletion guard until an operator releases them.",
            registry=r,
        )
        self.http_requests = Counter(
            "portfolio_sync_http_requests",
            "HTTP requests answered, by route template (not the raw path) and status class.",
            ["method", "route", "status"],
            registry=r,
        )
        self.retries = Counter(
            "portfolio_sync_retries",
            "Failed attempts that will be retried or given up.",
            ["reason"],
            registry=r,
        )

    def count_skipped_names(self, read: Callable[[], int]) -> None:
        """Export `read()` (names not valid UTF-8 skipped by listings) as a counter."""
        self.registry.register(_SkippedNames(read))

    def sync_done(self, result: SyncResult, trigger: str) -> None:
        self.syncs.labels(trigger_kind(trigger), result.status).inc()
        self.sync_seconds.observe(result.duration_ms / 1000.0)
        if result.status == "changed" and not result.dry_run:
            self.rows_written.inc()

    def passes_known(self, summary: dict[str, Any]) -> None:
        """From `schema.pass_summary`: the database's record, shared by every process."""
        last = summary["last"]
        if last is not None:
            self.last_pass_success.set(1 if last["outcome"] == "ok" else 0)
        self.failed_passes.set(summary["consecutive_failures"])

    def pass_done(self, report: PassReport, finished_at: float) -> None:
        self.passes.labels("aborted" if report.aborted else "ok").inc()
        self.pass_seconds.set(report.duration_ms / 1000.0)
        self.pass_timestamp.set(finished_at)
        self.orphans.set(len(report.orphans))
        self.rows_written.inc(len(report.changed))


class _SkippedNames(Collector):
    """A counter kept by the storage backend (it counts in threads without a registry)."""

    def __init__(self, read: Callable[[], int]) -> None:
        self.read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "portfolio_sync_skipped_names",
            "File and folder names skipped because they are not valid UTF-8.",
            value=self.read(),
        )
