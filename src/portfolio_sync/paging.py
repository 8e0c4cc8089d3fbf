"""Pages of one portfolio's paths, for reads that must stay small whatever the folder holds.

A page is a range of paths in natural order (`layout.natural_key`), ``(after, last]``,
holding at most ``limit`` distinct paths from the row's values and the listing together.
Both sides are cut to the same range, so a page compares like with like: a path missing
from one side of a page is missing from that side, not on another page. The cursor is the
last path of a page, so pages stay stable while files come and go between requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from portfolio_sync.layout import natural_key

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class PathRange:
    """``(after, last]`` in natural order; ``last`` None means no upper bound."""

    after: str | None
    last: str | None
    more: bool  # paths remain after ``last``

    def cut(self, values: Sequence[Any] | None) -> list[Any] | None:
        """The values of ``values`` in this range, in their own order (None stays None)."""
        if values is None:
            return None
        low = None if self.after is None else natural_key(self.after)
        high = None if self.last is None else natural_key(self.last)
        return [
            v
            for v in values
            if (low is None or natural_key(path_of(v)) > low)
            and (high is None or natural_key(path_of(v)) <= high)
        ]


def path_of(value: Any) -> str:
    """The path of a row element: the string itself, or an image object's ``path``."""
    return str(value["path"]) if isinstance(value, dict) else str(value)


def page_range(values: Iterable[Any], *, after: str | None, limit: int | None) -> PathRange:
    """The range of the page that starts after ``after`` and holds ``limit`` paths
    (all remaining ones when ``limit`` is None); elements may be paths or image objects."""
    start = None if after is None else natural_key(after)
    remaining = sorted(
        {p for p in map(path_of, values) if start is None or natural_key(p) > start},
        key=natural_key,
    )
    if limit is None or len(remaining) <= limit:
        return PathRange(after=after, last=None, more=False)
    return PathRange(after=after, last=remaining[limit - 1], more=True)
