"""LocalQueue: each rule of invariant 3 (coalescing), retries, shutdown.

Runs are real coroutines that record when they start and end on the loop clock; time is
real too, so delays are kept small and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from portfolio_sync.errors import PortfolioSyncError
from portfolio_sync.queue import ALL, QueueClosed, WorkQueue
from portfolio_sync.queue.local import LocalQueue, backoff_delay

LOGGER = "portfolio_sync.queue.local"


def now() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class Run:
    key: str
    trigger: str
    start: float
    end: float | None = None


@dataclass
class Recorder:
    """A runner that records every run and checks overlap as it happens."""

    duration: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)  # key -> runs that raise first
    gate: asyncio.Event | None = None  # when set, runs wait for it before finishing
    runs: list[Run] = field(default_factory=list)
    active: dict[str, int] = field(default_factory=dict)
    max_same_key: int = 0
    max_total: int = 0

    async def __call__(self, key: str, trigger: str) -> None:
        run = Run(key, trigger, now())
        self.runs.append(run)
        self.active[key] = self.active.get(key, 0) + 1
        self.max_same_key = max(self.max_same_key, self.active[key])
        self.max_total = max(self.max_total, sum(self.active.values()))
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.duration)
            if self.failures.get(key, 0) > 0:
                self.failures[key] -= 1
                raise OSError(f"storage down for {key}")
        finally:
            self.active[key] -= 1
            run.end = now()

    def of(self, key: str) -> list[Run]:
        return [r for r in self.runs if r.key == key]


async def wait_for(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.002)


async def join(queue: LocalQueue, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        await queue.join()


@pytest.fixture
async def make_queue() -> AsyncIterator[Callable[..., LocalQueue]]:
    """Build started-on-demand queues with fast test delays; stop them all at teardown."""
    queues: list[LocalQueue] = []

    def make(run: Recorder, **kwargs: Any) -> LocalQueue:
        options: dict[str, Any] = {
            "debounce": 0.05,
            "backoff_initial": 0.02,
            "backoff_max": 0.1,
            "backoff_jitter": 0.0,
        }
        options.update(kwargs)
        queue = LocalQueue(run, **options)
        queues.append(queue)
        return queue

    yield make
    for queue in queues:
        await queue.stop(timeout=1.0)


# Rule 1: a key is queued at most once.
async def test_requesting_a_queued_key_again_is_coalesced(make_queue: Any) -> None:
    gate = asyncio.Event()
    rec = Recorder(gate=gate)
    queue = make_queue(rec, workers=1)
    await queue.start()
    assert await queue.request("busy", "t")
    await wait_for(lambda: queue.running == {"busy"})

    assert await queue.request("a", "first") is True
    assert await queue.request("a", "second") is False
    assert await queue.request("a", "third") is False
    assert queue.pending == 1

    gate.set()
    await join(queue)
    assert [(r.key, r.trigger) for r in rec.of("a")] == [("a", "first")]


# Rule 2: requested while running -> exactly one more run, after the current one.
async def test_requests_during_a_run_cause_exactly_one_follow_up(make_queue: Any) -> None:
    gate = asyncio.Event()
    rec = Recorder(gate=gate)
    queue = make_queue(rec, debounce=0.05)
    await queue.start()
    await queue.request("a", "upload")
    await wait_for(lambda: queue.running == {"a"})

    results = [await queue.request("a", f"upload-{i}") for i in range(10)]
    assert results == [True] + [False] * 9
    assert queue.pending == 1

    gate.set()
    await join(queue)
    first, follow_up = rec.of("a")
    assert follow_up.trigger == "upload-0"
    assert first.end is not None
    assert follow_up.start >= first.end + 0.05 - 0.005  # loop clock granularity


# Rule 3: never two runs of one key at once, under mixed requests, failures and retries.
async def test_same_key_never_runs_concurrently(make_queue: Any) -> None:
    rec = Recorder(duration=0.005, failures={"k0": 2, "k1": 1, ALL: 1})
    queue = make_queue(rec, workers=8, debounce=0.01, backoff_initial=0.005)
    await queue.start()
    keys = ["k0", "k1", "k2", ALL]
    for i in range(400):
        await queue.request(keys[i % len(keys)], "mixed")
        if i % 7 == 0:
            await asyncio.sleep(0.001)
    await join(queue)

    assert rec.max_same_key == 1
    assert rec.max_total > 1  # different keys did overlap, so the check above means something
    for key in keys:
        runs = sorted(rec.of(key), key=lambda r: r.start)
        for before, after in itertools.pairwise(runs):
            assert before.end is not None and after.start >= before.end


# Rule 4: coalescing never delays the first event.
async def test_request_for_an_idle_key_is_not_debounced(make_queue: Any) -> None:
    rec = Recorder()
    queue = make_queue(rec, debounce=1.0)
    await queue.start()
    requested = now()
    await queue.request("a", "upload")
    await wait_for(lambda: len(rec.runs) == 1, timeout=0.5)
    assert rec.runs[0].start - requested < 0.05
    await join(queue)

    # Still true for a key that ran before, once it has been idle for its settle time.
    await asyncio.sleep(1.05)
    requested = now()
    await queue.request("a", "upload")
    await wait_for(lambda: len(rec.runs) == 2, timeout=0.5)
    assert rec.runs[1].start - requested < 0.05


async def test_trickle_slower_than_a_sync_still_coalesces(make_queue: Any) -> None:
    """Requests 30 ms apart while a sync takes 5 ms (a watcher delivering an upload batch
    at a time): the key is idle at every request, yet 1 s of them costs a handful of runs,
    and the last run still starts after the last request."""
    rec = Recorder(duration=0.005)
    queue = make_queue(rec, debounce=0.25, settle_max=1.0)
    await queue.start()
    deadline = now() + 1.0
    while now() < deadline:
        await queue.request("a", "upload")
        await asyncio.sleep(0.03)
    last_request = now()
    await join(queue, timeout=5)
    print(f"trickle runs: {len(rec.runs)}")
    assert len(rec.runs) <= 5
    assert rec.runs[0].start - (deadline - 1.0) < 0.05  # the first one was not delayed
    assert rec.runs[-1].start > last_request - 0.03


# Rule 4: a burst for one key costs a handful of runs, and the last run sees the end state.
async def test_burst_of_1000_requests_costs_a_handful_of_runs(make_queue: Any) -> None:
    rec = Recorder(duration=0.02)
    queue = make_queue(rec, debounce=0.25)
    await queue.start()
    await queue.request("a", "upload")
    await wait_for(lambda: len(rec.runs) == 1)  # the burst lands while "a" is syncing
    for _ in range(999):
        await queue.request("a", "upload")
        await asyncio.sleep(0)
    last_request = now()
    await join(queue)

    print(f"burst runs (fast): {len(rec.runs)}")
    assert len(rec.runs) <= 5
    assert rec.runs[-1].start > last_request


async def test_burst_spread_over_several_runs_stays_small(make_queue: Any) -> None:
    rec = Recorder(duration=0.02)
    queue = make_queue(rec, debounce=0.25)
    await queue.start()
    for _ in range(100):  # 1,000 requests over ~0.5 s, arriving faster than a run lasts
        for _ in range(10):
            await queue.request("a", "upload")
        await asyncio.sleep(0.004)
    last_request = now() - 0.004
    await join(queue)

    print(f"burst runs (spread): {len(rec.runs)}")
    assert 2 <= len(rec.runs) <= 5
    assert rec.runs[-1].start > last_request


async def test_long_burst_grows_the_settle_time_up_to_its_cap(make_queue: Any) -> None:
    """A bulk upload lasting 2.5 s (longer than several debounces) still costs <= 5 runs,
    and the last run starts within the cap (plus one run) after the last request."""
    rec = Recorder(duration=0.02)
    queue = make_queue(rec, debounce=0.25, settle_max=1.0)
    await queue.start()
    deadline = now() + 2.5
    while now() < deadline:
        await queue.request("a", "upload")
        await asyncio.sleep(0.005)
    last_request = now()
    await join(queue, timeout=10)

    starts = [r.start for r in rec.runs]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(starts)]
    print(f"long burst runs: {len(rec.runs)}, gaps {gaps}")
    assert len(rec.runs) <= 5
    assert gaps[0] >= 0.25 and gaps[1] >= 0.5  # doubling
    assert all(g < 1.0 + 0.1 for g in gaps)  # capped
    assert last_request < starts[-1] < last_request + 1.0 + 0.1


async def test_settle_time_resets_when_the_key_goes_idle(make_queue: Any) -> None:
    rec = Recorder(duration=0.01)
    queue = make_queue(rec, debounce=0.05, settle_max=1.0)
    await queue.start()
    for _ in range(3):  # two bursts separated by idleness: each starts from `debounce`
        await queue.request("a", "x")
        await wait_for(lambda: len(rec.runs) >= 1)
        await queue.request("a", "x")
        await join(queue)
    starts = [r.start for r in rec.runs]
    assert all(b - a < 0.5 for a, b in itertools.pairwise(starts))


# Rule 5: bounded concurrency overall, parallel across keys.
async def test_concurrency_is_bounded_by_workers(make_queue: Any) -> None:
    rec = Recorder(duration=0.05)
    queue = make_queue(rec, workers=3)
    await queue.start()
    started = now()
    for i in range(9):
        assert await queue.request(f"k{i}", "bulk")
    await join(queue)

    assert len(rec.runs) == 9
    assert rec.max_total == 3
    assert now() - started < 9 * 0.05  # parallel, not serial


# Rule 6: failures, backoff, give-up, callbacks.
async def test_failed_run_is_retried_with_backoff_until_it_succeeds(make_queue: Any) -> None:
    rec = Recorder(failures={"a": 2})
    failures: list[tuple[str, str, int]] = []
    successes: list[tuple[str, int]] = []

    async def on_failure(key: str, exc: BaseException, attempt: int) -> None:
        failures.append((key, type(exc).__name__, attempt))

    async def on_success(key: str, attempts: int) -> None:
        successes.append((key, attempts))

    queue = make_queue(
        rec, backoff_initial=0.04, backoff_max=1.0, on_failure=on_failure, on_success=on_success
    )
    await queue.start()
    await queue.request("a", "upload")
    await join(queue)

    assert failures == [("a", "OSError", 1), ("a", "OSError", 2)]
    assert successes == [("a", 3)]
    runs = rec.of("a")
    assert [r.trigger for r in runs] == ["upload"] * 3
    gaps = [b.start - a.end for a, b in itertools.pairwise(runs) if a.end]
    assert gaps[0] >= 0.04 - 0.005 and gaps[1] >= 0.08 - 0.005  # exponential


async def test_success_resets_the_attempt_count(make_queue: Any) -> None:
    rec = Recorder(failures={"a": 1})
    attempts: list[int] = []

    async def on_failure(key: str, exc: BaseException, attempt: int) -> None:
        attempts.append(attempt)

    queue = make_queue(rec, on_failure=on_failure)
    await queue.start()
    await queue.request("a", "t")
    await join(queue)
    rec.failures["a"] = 1
    await queue.request("a", "t")
    await join(queue)
    assert attempts == [1, 1]


async def test_gives_up_after_max_attempts_and_logs_an_error(
    make_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    rec = Recorder(failures={"a": 100})
    attempts: list[int] = []

    async def on_failure(key: str, exc: BaseException, attempt: int) -> None:
        attempts.append(attempt)

    queue = make_queue(rec, max_attempts=3, on_failure=on_failure)
    await queue.start()
    await queue.request("a", "webhook")
    await join(queue)

    assert len(rec.of("a")) == 3
    assert attempts == [1, 2, 3]
    gave_up = [r for r in caplog.records if getattr(r, "action", None) == "sync_gave_up"]
    assert len(gave_up) == 1
    record: Any = gave_up[0]
    assert record.levelno == logging.ERROR
    assert (record.key, record.trigger, record.attempt) == ("a", "webhook", 3)
    assert "storage down" in record.error
    retried = [r for r in caplog.records if getattr(r, "action", None) == "sync_retry_scheduled"]
    assert [getattr(r, "attempt", None) for r in retried] == [1, 2]

    # Given up means idle: the next request starts a fresh series.
    await queue.request("a", "webhook")
    await join(queue)
    assert attempts == [1, 2, 3, 1, 2, 3]


async def test_backoff_does_not_hold_a_worker(make_queue: Any) -> None:
    rec = Recorder(failures={"bad": 1})
    queue = make_queue(rec, workers=1, backoff_initial=0.3, backoff_max=1.0)
    await queue.start()
    await queue.request("bad", "t")
    await wait_for(lambda: queue.running == frozenset() and queue.pending == 1)

    requested = now()
    await queue.request("good", "t")
    await wait_for(lambda: len(rec.of("good")) == 1, timeout=0.2)
    assert rec.of("good")[0].start - requested < 0.05
    await join(queue)
    assert len(rec.of("bad")) == 2


async def test_request_during_backoff_is_coalesced_and_keeps_the_wait(make_queue: Any) -> None:
    rec = Recorder(failures={"a": 1})
    queue = make_queue(rec, backoff_initial=0.15, backoff_max=1.0)
    await queue.start()
    await queue.request("a", "t")
    await wait_for(lambda: len(rec.runs) == 1 and not queue.running)

    assert await queue.request("a", "again") is False
    await join(queue)
    first, retry = rec.of("a")
    assert first.end is not None and retry.start - first.end >= 0.15 - 0.005
    assert len(rec.runs) == 2


async def test_backoff_delay_grows_exponentially_with_bounded_jitter() -> None:
    exact = [backoff_delay(n, initial=0.5, maximum=30.0, jitter=0.0) for n in range(1, 8)]
    assert exact == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    for n in range(1, 6):
        delay = backoff_delay(n, initial=0.5, maximum=30.0, jitter=1.0)
        assert 0.5 * 2 ** (n - 1) <= delay <= 0.5 * 2 ** (n - 1) + 1.0
    assert backoff_delay(5000, initial=0.5, maximum=30.0, jitter=1.0) == 30.0


# Rule 7: the full pass is a key like any other.
async def test_full_pass_key_coalesces_and_never_overlaps(make_queue: Any) -> None:
    gate = asyncio.Event()
    rec = Recorder(gate=gate)
    queue = make_queue(rec)
    await queue.start()
    assert await queue.request_all("cron") is True
    await wait_for(lambda: queue.running == {ALL})
    assert await queue.request_all("manual") is True  # marks it dirty
    assert await queue.request(ALL, "cron") is False
    assert await queue.request_all("cron") is False

    gate.set()
    await join(queue)
    assert [r.trigger for r in rec.of(ALL)] == ["cron", "manual"]
    assert rec.max_same_key == 1


# Rule 8: callbacks that raise do not kill workers.
async def test_raising_callbacks_do_not_kill_workers(
    make_queue: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger=LOGGER)
    rec = Recorder(failures={"a": 1})

    async def on_failure(key: str, exc: BaseException, attempt: int) -> None:
        raise RuntimeError("metrics backend down")

    async def on_success(key: str, attempts: int) -> None:
        raise RuntimeError("metrics backend down")

    queue = make_queue(rec, workers=1, on_failure=on_failure, on_success=on_success)
    await queue.start()
    for key in ["a", "b", "c"]:
        await queue.request(key, "t")
    await join(queue)

    assert sorted(r.key for r in rec.runs) == ["a", "a", "b", "c"]
    callbacks = [r for r in caplog.records if getattr(r, "action", None) == "callback_failed"]
    assert {getattr(r, "callback", None) for r in callbacks} == {"on_failure", "on_success"}
    await queue.request("d", "t")  # the single worker is still alive
    await join(queue)
    assert rec.of("d")


# Lifecycle.
async def test_stop_lets_running_syncs_finish_and_drops_pending_work(make_queue: Any) -> None:
    rec = Recorder(duration=0.1)
    queue = make_queue(rec, workers=1)
    await queue.start()
    await queue.request("a", "t")
    await queue.request("b", "t")
    await wait_for(lambda: queue.running == {"a"})
    await queue.request("a", "t")  # dirty follow-up, dropped too

    dropped = await queue.stop(timeout=1.0)
    assert dropped == ["a", "b"]
    assert [r.key for r in rec.runs] == ["a"] and rec.runs[0].end is not None
    with pytest.raises(QueueClosed):
        await queue.request("c", "t")
    assert await queue.stop() == []


async def test_stop_cancels_syncs_that_outlive_the_timeout(make_queue: Any) -> None:
    rec = Recorder(gate=asyncio.Event())  # never released
    queue = make_queue(rec)
    await queue.start()
    await queue.request("stuck", "t")
    await wait_for(lambda: queue.running == {"stuck"})

    started = now()
    assert await queue.stop(timeout=0.1) == ["stuck"]
    assert now() - started < 0.5
    assert rec.runs[0].end is not None  # the run saw the cancellation
    assert queue.running == frozenset() and queue.pending == 0


async def test_requests_before_start_run_once_started_and_context_manager_stops() -> None:
    rec = Recorder()
    queue = LocalQueue(rec, debounce=0.01)
    assert await queue.request("early", "t")
    with pytest.raises(RuntimeError):
        await queue.join()  # would hang: no workers yet
    async with queue:
        await join(queue)
        assert [r.key for r in rec.runs] == ["early"]
    with pytest.raises(QueueClosed):
        await queue.start()


async def test_join_waits_for_retries_and_follow_ups(make_queue: Any) -> None:
    rec = Recorder(duration=0.01, failures={"a": 1})
    queue = make_queue(rec, backoff_initial=0.05, debounce=0.05)
    await queue.start()
    await queue.request("a", "t")
    await queue.request("b", "t")
    await wait_for(lambda: "b" in queue.running)
    await queue.request("b", "t")
    await join(queue)
    assert len(rec.of("a")) == 2 and len(rec.of("b")) == 2
    assert queue.pending == 0 and queue.running == frozenset()


async def test_satisfies_the_work_queue_protocol_and_error_tree() -> None:
    queue: WorkQueue = LocalQueue(Recorder())
    assert await queue.request("a", "t")
    assert issubclass(QueueClosed, PortfolioSyncError) and issubclass(QueueClosed, RuntimeError)
    assert isinstance(queue, LocalQueue)
    await queue.stop()


@pytest.mark.parametrize(
    "kwargs", [{"workers": 0}, {"max_attempts": 0}, {"debounce": -1.0}, {"backoff_max": -1.0}]
)
async def test_rejects_invalid_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LocalQueue(Recorder(), **kwargs)


async def test_health_reports_a_worker_that_ended() -> None:
    """A runner raising a BaseException (here CancelledError from inside the run) ends
    its worker task: /readyz must be able to tell, rather than the queue going quiet."""

    async def run(key: str, trigger: str) -> None:
        if key == "bad":
            raise asyncio.CancelledError()

    queue = LocalQueue(run, workers=2)
    await queue.start()
    try:
        assert queue.health() == "ok"
        await queue.request("good", "test")
        await queue.request("bad", "test")
        for _ in range(200):
            if queue.health() != "ok":
                break
            await asyncio.sleep(0.01)
        assert queue.health() == "down: 1 of 2 workers stopped"
    finally:
        await queue.stop(timeout=0.5)
    assert queue.health() == "ok"  # stopped on purpose: nothing to report
