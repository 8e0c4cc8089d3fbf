"""Parallel key-range listing: same pages as one sequential listing, few extra requests."""

from __future__ import annotations

import bisect
import math
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portfolio_sync.backends.s3_ranges import midpoint, parallel_pages
from portfolio_sync.errors import StorageError
from portfolio_sync.models import ObjectInfo


class Bucket:
    """Keys in S3's order (UTF-8 bytes) answering ListObjectsV2-style pages."""

    def __init__(self, keys: list[str], *, page_size: int, delay: float = 0.0) -> None:
        self.keys = sorted(set(keys), key=str.encode)
        self.encoded = [k.encode() for k in self.keys]
        self.page_size = page_size
        self.delay = delay
        self.requests = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        self.fail_after: int | None = None

    def fetch(self, after: str | None) -> list[ObjectInfo]:
        with self.lock:
            self.requests += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.fail_after is not None and self.requests > self.fail_after:
                self.in_flight -= 1
                raise OSError("connection reset")
        try:
            if self.delay:
                time.sleep(self.delay)
            start = 0 if after is None else bisect.bisect_right(self.encoded, after.encode())
            chosen = self.keys[start : start + self.page_size]
            return [ObjectInfo(path=k, size=1, mtime=0.0) for k in chosen]
        finally:
            with self.lock:
                self.in_flight -= 1

    def sequential(self) -> tuple[list[str], int]:
        """What one sequential listing (S3 continuation) returns, and its requests."""
        return self.keys, max(1, math.ceil(len(self.keys) / self.page_size))


def listed(bucket: Bucket, *, workers: int, head: int = 1) -> list[str]:
    """`head` pages in sequence, then the rest in parallel ranges (as S3Storage does)."""
    out: list[str] = []
    after = None
    for _ in range(head):
        page = bucket.fetch(after)
        out += [o.path for o in page]
        if len(page) < bucket.page_size:
            return out
        after = page[-1].path
    for page in parallel_pages(
        bucket.fetch, workers=workers, start_after=after, page_size=bucket.page_size
    ):
        assert page, "no empty pages are yielded"
        out += [o.path for o in page]
    return out


names = st.text(
    alphabet=st.sampled_from(list("0123456789/-_.aZ ~é😀\u00ff")), min_size=1, max_size=12
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    keys=st.lists(names, min_size=0, max_size=300),
    page=st.integers(1, 7),
    workers=st.integers(1, 6),
)
def test_same_keys_in_the_same_order_as_one_sequential_listing(
    keys: list[str], page: int, workers: int
) -> None:
    bucket = Bucket(keys, page_size=page)
    assert listed(bucket, workers=workers) == bucket.sequential()[0]


def test_folders_like_1_and_10_keep_their_byte_order() -> None:
    keys = [f"{k}/{i}.jpg" for k in (1, 10, 100, 2, 20, 9) for i in range(30)]
    keys += ["1-x/a.jpg", "1.5/a.jpg", "1/ü.jpg", "10/\u00e9.jpg", "10/e\u0301.jpg"]
    bucket = Bucket(keys, page_size=4)
    assert listed(bucket, workers=5) == bucket.sequential()[0]


def test_a_long_listing_runs_side_by_side_with_few_extra_requests() -> None:
    keys = [f"{k}/IMG_{i:04d}.JPG" for k in range(1, 2001) for i in range(10)]
    bucket = Bucket(keys, page_size=20, delay=0.01)
    started = time.monotonic()
    assert listed(bucket, workers=8) == bucket.sequential()[0]
    took = time.monotonic() - started
    pages = bucket.sequential()[1]  # 1,000 pages: 10 s in sequence
    assert bucket.most_in_flight == 8
    # each cut costs at most the page that runs into it; cuts past the keys one request
    assert bucket.requests <= pages * 1.05 + 10, (bucket.requests, pages)
    assert took < 0.5 * pages * bucket.delay, took  # ~0.25 on an idle machine


def test_a_failed_request_fails_the_listing() -> None:
    bucket = Bucket([f"{i:05d}" for i in range(500)], page_size=10)
    bucket.fail_after = 12
    with pytest.raises(StorageError, match="connection reset"):
        listed(bucket, workers=4)


def test_stopping_early_stops_the_workers() -> None:
    bucket = Bucket([f"{i:05d}" for i in range(5000)], page_size=10, delay=0.005)
    pages = parallel_pages(bucket.fetch, workers=4, start_after="00009", page_size=10)
    next(pages)
    pages.close()
    settled = bucket.requests
    time.sleep(0.1)
    assert bucket.requests <= settled + 4  # at most the requests already in flight


@pytest.mark.parametrize(
    ("low", "high"),
    [
        ("1/a.jpg", None),
        ("1/a.jpg", "2"),
        ("1/a.jpg", "1/b"),
        ("10", "100"),
        ("a", "a!"),
        ("é/1.jpg", "ü"),
        ("😀/x", None),
        ("a\x7f", "b"),
    ],
)
def test_midpoint_lies_strictly_between_and_is_valid_text(low: str, high: str | None) -> None:
    cut = midpoint(low, high)
    if cut is None:
        return
    assert low.encode() < cut.encode()
    assert high is None or cut.encode() < high.encode()
    cut.encode("utf-8")  # no lone surrogates


@given(a=names, b=names)
def test_midpoint_of_any_two_keys(a: str, b: str) -> None:
    low, high = sorted([a, b], key=str.encode)
    cut = midpoint(low, high)
    if cut is not None:
        assert low.encode() < cut.encode() < high.encode()


def test_midpoint_from_the_prefix_stays_inside_it() -> None:
    cut = midpoint(None, None, floor="photos/")
    assert cut is not None and cut.startswith("photos/") and len(cut) > len("photos/")
