"""Domain values passed between layers: plain frozen data, no behaviour beyond tiny helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectInfo:
    """One stored object. `path` is relative to the storage root, `/`-separated, byte-exact."""

    path: str
    size: int
    mtime: float  # seconds since the epoch


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageMeta:
    """What reading an image told (cached per path, size and mtime); `error` when it failed."""

    width: int | None = None
    height: int | None = None
    type: str | None = None
    placeholder: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """A portfolio row as read, before any listing was taken.

    `raw` holds each images column exactly as the driver returned it: compare-and-set
    compares against it, so a concurrent writer is detected even when it wrote an
    equivalent-looking value. `values` is the decoded list (None for SQL NULL).
    """

    key: str
    key_value: Any
    values: tuple[list[Any] | None, ...]
    raw: tuple[Any, ...]
    invalid: str | None = None  # why a value could not be decoded (replaced by the listing)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """The write that makes a row match its folder; `None` from `plan()` means no write."""

    key: str
    key_value: Any
    expected: tuple[Any, ...]
    new: tuple[list[Any], ...]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    fingerprint: str | None = None  # digest of the listing the plan was made from
    before: int = 0  # images the row held before (all columns)
    replaced: tuple[list[Any] | None, ...] = ()  # the decoded values it overwrites (history)
    invalid: str | None = None  # why the old value was unreadable (history keeps it raw)

    @property
    def empties(self) -> bool:
        """True when a non-empty row would become empty (counted by the mass-deletion guard)."""
        return not any(self.new) and bool(self.removed)

    @property
    def drastic(self) -> bool:
        """Empties the row, or removes more than half of its images: such a write needs a
        healthy storage root, and per-key syncs count it in the streaming guard's window."""
        return self.empties or 2 * len(self.removed) > self.before > 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RootProbe:
    """What the storage root looks like right now (see `Storage.probe`)."""

    device: int | None  # st_dev of a local root; None for S3
    has_objects: bool  # the folder holding the portfolio folders is not empty


Status = Literal["changed", "unchanged", "orphan", "missing", "error", "conflict", "held"]


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncResult:
    """What happened to one key."""

    key: str
    status: Status
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    error: str | None = None
    duration_ms: float = 0.0
    dry_run: bool = False
    listed: frozenset[str] = frozenset()  # storage paths the listing showed (sync_one only)


@dataclass(slots=True, kw_only=True)
class PassReport:
    """Summary of a full pass (mutable while the pass runs)."""

    changed: list[SyncResult] = field(default_factory=list)
    unchanged: int = 0
    orphans: list[str] = field(default_factory=list)
    errors: list[SyncResult] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    faulted: list[str] = field(default_factory=list)  # keys whose folder could not be listed
    held: list[str] = field(default_factory=list)  # held writes left for an operator
    aborted: str | None = None
    dry_run: bool = False
    rows: int = 0
    folders: int = 0
    duration_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors and self.aborted is None
