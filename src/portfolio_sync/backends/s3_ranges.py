"""Listing a large S3 prefix in parallel key ranges, yielded in key order.

S3 lists 1,000 keys per request, and each request waits for the one before it (the next
page starts after the last key of this one), so a bucket of a million objects costs a
thousand round trips in a row. ListObjectsV2 can start anywhere (``start-after``), so
the key space can be cut into ranges listed side by side, as rclone and s5cmd do. Where
to cut is unknown (keys are not spread evenly), so the cuts are made as the listing runs,
by work stealing: a worker with nothing to do splits the unlisted part of a range at a key
half-way through (``midpoint``); a range that turns out empty costs one request, and a
range whose last page runs past its end costs part of one. Pages come out in key order,
exactly the keys and order of one sequential listing, whatever the ranges were.

Memory stays bounded: beyond the range being consumed, workers stop fetching while
``max_buffered`` pages wait. The caller lists the first pages sequentially and only
hands over (``start_after``) once they showed the listing is long, so a listing of a few
pages costs what it always did.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from portfolio_sync.errors import StorageError
from portfolio_sync.models import ObjectInfo

__all__ = ["midpoint", "parallel_pages"]

Page = list[ObjectInfo]
Fetch = Callable[[str | None], Page]
"""``fetch(after)``: one request, the page of keys > ``after`` (None: from the start)."""

_LOW, _HIGH = 0x21, 0x7E  # cut points are printable ASCII: valid UTF-8 whatever the keys
_ALPHABET_DEPTH = 64  # key bytes remembered per position, for the choice of cuts
_LONG = 16  # full pages a range must have listed before it is split: short ranges end soon


def midpoint(
    low: str | None,
    high: str | None,
    *,
    floor: str = "",
    alphabet: Sequence[frozenset[int]] = (),
) -> str | None:
    """A key strictly between ``low`` and ``high`` in S3's order (UTF-8 bytes), or None.

    ``None`` bounds are open (``low``: ``floor``, the listing's prefix). The cut is
    ``low``'s first bytes plus one printable ASCII character between ``low``'s and
    ``high``'s at the first position where one fits, so it is always valid UTF-8 and never
    cuts a multi-byte character. Among the characters that fit, those in ``alphabet[i]``
    (bytes seen at that position of keys so far) are preferred: a cut between digits
    where keys are numbers lands among keys, not in an empty stretch of the key space.
    """
    a = (low if low is not None else floor).encode()
    b = high.encode() if high is not None else None
    bounded = b is not None  # False once the cut is already below `high`
    for i in range(len(a) + 1):
        lo = a[i] if i < len(a) else -1  # past the end of `a`, anything is above it
        if bounded and b is not None and i >= len(b):
            return None  # `high` is a prefix of `low`: nothing lies between
        hi = b[i] if bounded and b is not None else 0x100
        fits = range(max(lo + 1, _LOW), min(hi - 1, _HIGH) + 1)
        if fits and (low is not None or i >= len(a)):
            known = alphabet[i] if i < len(alphabet) else frozenset()
            choice = [c for c in fits if c in known] or list(fits)
            return (a[:i] + bytes([choice[len(choice) // 2]])).decode()
        if i >= len(a):
            return None
        if lo != hi:
            bounded = False  # a[:i+1] is now below `high`: only `a` bounds what follows
    return None


@dataclass(slots=True, eq=False)
class _Range:
    """Keys in (after, end]; ``end`` None is open."""

    after: str | None
    end: str | None
    pages: deque[Page] = field(default_factory=deque)
    busy: bool = False
    done: bool = False
    full_pages: int = 0  # since the range was made or last split
    parent: _Range | None = None  # the range it was split from
    listed: int = 0  # keys listed in it


class _Listing:
    def __init__(
        self,
        fetch: Fetch,
        *,
        start_after: str | None,
        floor: str,
        page_size: int,
        max_buffered: int,
    ) -> None:
        self.fetch = fetch
        self.floor = floor
        self.page_size = page_size
        self.max_buffered = max_buffered
        self.ranges: list[_Range] = [_Range(after=start_after, end=None, full_pages=_LONG)]
        self.alphabet: list[frozenset[int]] = []
        self._learn([start_after or floor])
        self.cond = threading.Condition()
        self.error: BaseException | None = None
        self.stopped = False

    # ---- workers ------------------------------------------------------------------------
    def work(self) -> None:
        while True:
            with self.cond:
                job = self._take()
                while job is None:
                    if self.stopped or not self.ranges:
                        return
                    self.cond.wait()
                    job = self._take()
                after = job.after
            try:
                page = self.fetch(after)
            except BaseException as exc:
                with self.cond:
                    self.error = self.error or exc
                    self.stopped = True
                    self.cond.notify_all()
                return
            with self.cond:
                self._store(job, page)
                self.cond.notify_all()

    def _learn(self, keys: list[str]) -> None:
        """Note the bytes at each position of ``keys`` (a sample), for ``midpoint``."""
        for key in keys:
            for i, byte in enumerate(key.encode()[:_ALPHABET_DEPTH]):
                if i == len(self.alphabet):
                    self.alphabet.append(frozenset())
                if byte not in self.alphabet[i]:
                    self.alphabet[i] = self.alphabet[i] | {byte}

    def _take(self) -> _Range | None:
        """The range to fetch next (marked busy), splitting one if none is free."""
        if self.stopped:
            return None
        # A range may fetch while fewer than `max_buffered` pages wait in it and the ranges
        # before it: the consumer needs those first, and memory stays bounded.
        buffered, open_ranges = 0, len(self.ranges)
        for index, r in enumerate(self.ranges):
            buffered += len(r.pages)
            if buffered >= self.max_buffered:
                open_ranges = index
                break
            if not r.busy and not r.done:
                r.busy = True
                return r
        # Split the first long range (that may fetch): pages come out in key order, so
        # the work nearest the head of the listing is what the consumer waits for.
        for r in self.ranges[:open_ranges]:
            if r.done or r.full_pages < _LONG:
                continue
            cut = midpoint(r.after, r.end, floor=self.floor, alphabet=self.alphabet)
            if cut is None:
                continue
            new = _Range(after=cut, end=r.end, busy=True, parent=r)
            r.end = cut
            r.full_pages = 0  # each half must show again that it is long before a split
            self.ranges.insert(self.ranges.index(r) + 1, new)
            return new
        return None

    def _store(self, r: _Range, page: Page) -> None:
        r.busy = False
        if r not in self.ranges:  # the consumer went away
            return
        end = r.end
        kept = page if end is None else [obj for obj in page if obj.path <= end]
        if kept:
            r.pages.append(kept)
            r.after = kept[-1].path
            self._learn([obj.path for obj in kept[::50]])
        r.listed += len(kept)
        if len(page) < self.page_size or len(kept) < len(page):
            r.done = True  # the listing ended, or the page ran into the next range
            if not r.listed and r.parent is not None:
                # the cut fell past the keys: its parent is as long as before, split again
                r.parent.full_pages = max(r.parent.full_pages, _LONG)
        else:
            r.full_pages += 1

    # ---- the consumer -------------------------------------------------------------------
    def pages(self) -> Iterator[Page]:
        while True:
            with self.cond:
                while True:
                    if self.error is not None:
                        raise self.error
                    if not self.ranges:
                        return
                    head = self.ranges[0]
                    if head.pages:
                        page = head.pages.popleft()
                        self.cond.notify_all()
                        break
                    if head.done:
                        self.ranges.pop(0)
                        self.cond.notify_all()
                        continue
                    self.cond.wait()
            yield page

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.ranges.clear()
            self.cond.notify_all()


def parallel_pages(
    fetch: Fetch,
    *,
    workers: int,
    start_after: str | None = None,
    floor: str = "",
    page_size: int = 1000,
    max_buffered: int = 256,
) -> Iterator[Page]:
    """Pages of the keys above ``start_after``, in key order, fetched by up to ``workers``
    threads at once.

    ``fetch(after)`` makes one request for the page of keys above ``after``; a page
    shorter than ``page_size`` ends the listing. ``floor`` is the listing's prefix (every
    key is above it), used when ``start_after`` is None. An error of any request ends the
    listing with it (wrapped in ``StorageError`` unless it is one).
    """
    listing = _Listing(
        fetch,
        start_after=start_after,
        floor=floor,
        page_size=page_size,
        max_buffered=max_buffered,
    )
    threads = [
        threading.Thread(target=listing.work, name=f"s3-range-{i}", daemon=True)
        for i in range(max(1, workers))
    ]
    for thread in threads:
        thread.start()
    try:
        yield from listing.pages()
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"listing failed: {exc}") from exc
    finally:
        listing.stop()
        for thread in threads:
            thread.join(timeout=30)
