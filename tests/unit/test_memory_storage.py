"""MemoryStorage: the in-memory twin honours the `Storage` contract the reconciler relies on.

Above all the ordering contract of `iter_folders` (grouped by first segment, in
`folder_order`, i.e. UTF-8 bytes of `name/`), which the bulk pass's merge depends on, and
the rule that an outage is an error, never an empty folder.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio_sync.backends.storage import S3Storage, Storage, folder_order
from portfolio_sync.errors import StorageError
from portfolio_sync.models import ObjectInfo
from portfolio_sync.testing import MemoryStorage

NFC_E = unicodedata.normalize("NFC", "é")  # U+00E9
NFD_E = unicodedata.normalize("NFD", "é")  # e + U+0301

# Names whose order under `folder_order` differs from plain string order.
TRICKY = ["a", "a b", "a+b", "a#1", "a-b", "a.b", "a0", "ab", "A", "Z", NFC_E, NFD_E, "e", "z"]


def make(*paths: str) -> MemoryStorage:
    storage = MemoryStorage()
    for path in paths:
        storage.put(path)
    return storage


def folders(storage: MemoryStorage, prefix: str = "") -> list[tuple[str, list[str]]]:
    return [(name, [o.path for o in objs]) for name, objs in storage.iter_folders(prefix)]


class _ListingS3(S3Storage):
    """The real S3 grouping algorithm fed a byte-ordered listing, without a server."""

    page_size = 3  # several pages, like a real listing
    list_workers = 1  # the sequential listing (parallel ranges: tests/unit/test_s3_ranges.py)

    def __init__(self, paths: list[str]) -> None:
        self._paths = sorted(paths, key=lambda p: p.encode("utf-8", "surrogateescape"))

    def _pages(
        self, prefix: str, *, after: str | None = None, pages: int | None = None
    ) -> Iterator[list[ObjectInfo]]:
        found = [
            ObjectInfo(path=p, size=1, mtime=1.0)
            for p in self._paths
            if p.startswith(prefix) and (after is None or p > after)
        ]
        for start in range(0, len(found), self.page_size):
            yield found[start : start + self.page_size]


# ---- the ordering contract -------------------------------------------------------------


def test_folders_come_in_byte_order_of_name_slash() -> None:
    storage = make(*(f"{name}/x.jpg" for name in reversed(TRICKY)))
    names = [name for name, _ in storage.iter_folders("")]
    assert names == [
        "A",
        "Z",
        "a b",
        "a#1",
        "a+b",
        "a-b",
        "a.b",
        "a",  # "a/" sorts after "a b/", "a#1/", "a+b/", "a-b/", "a.b/"
        "a0",
        "ab",
        "e",
        NFD_E,  # e + U+0301: b"e\xcc\x81/" sorts after b"e/"
        "z",
        NFC_E,  # b"\xc3\xa9/"
    ]
    assert names == sorted(TRICKY, key=folder_order)
    assert names != sorted(TRICKY)  # plain str order would put "a" before "a b"


def test_nfc_and_nfd_names_are_distinct_byte_exact_folders() -> None:
    storage = make(f"{NFC_E}/1.jpg", f"{NFD_E}/2.jpg")
    groups = folders(storage)
    assert groups == [(NFD_E, [f"{NFD_E}/2.jpg"]), (NFC_E, [f"{NFC_E}/1.jpg"])]
    assert storage.list_prefix(f"{NFC_E}/") == [
        ObjectInfo(path=f"{NFC_E}/1.jpg", size=1, mtime=1.0)
    ]
    assert [o.path for o in storage.list_prefix(f"{NFD_E}/")] == [f"{NFD_E}/2.jpg"]


def test_each_folder_holds_its_objects_at_any_depth_and_root_files_are_skipped() -> None:
    storage = make(
        "loose.jpg",
        "a/1.jpg",
        "a/before_images/2.jpg",
        "a/x/y/z/3.jpg",
        "a b/1.jpg",
        "ab/1.jpg",
    )
    assert folders(storage) == [
        ("a b", ["a b/1.jpg"]),
        ("a", ["a/1.jpg", "a/before_images/2.jpg", "a/x/y/z/3.jpg"]),
        ("ab", ["ab/1.jpg"]),
    ]


def test_iter_folders_under_a_prefix_groups_by_the_segment_after_it() -> None:
    storage = make(
        "portfolios/b/1.jpg",
        "portfolios/a/1.jpg",
        "portfolios/a/sub/2.jpg",
        "portfolios/readme.txt",
        "portfoliosX/c/1.jpg",
        "other/d/1.jpg",
    )
    assert folders(storage, "portfolios/") == [
        ("a", ["portfolios/a/1.jpg", "portfolios/a/sub/2.jpg"]),
        ("b", ["portfolios/b/1.jpg"]),
    ]
    assert folders(storage, "missing/") == []


def test_list_prefix_is_recursive_prefix_exact_and_in_byte_order() -> None:
    storage = make("a/z.jpg", "a/B.jpg", "a/sub/1.jpg", "a b/1.jpg", "ab/1.jpg", "a/a.jpg")
    assert [o.path for o in storage.list_prefix("a/")] == [
        "a/B.jpg",
        "a/a.jpg",
        "a/sub/1.jpg",
        "a/z.jpg",
    ]
    assert storage.list_prefix("nope/") == []
    assert len(storage.list_prefix("")) == 6


_SEGMENT = st.text(
    alphabet=st.sampled_from(
        ["a", "A", "b", "0", "9", " ", "#", "+", "-", ".", "_", "é", "\u0301", "😀"]
    ),
    min_size=1,
    max_size=4,
)
_PATHS = st.lists(
    st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join), min_size=0, max_size=25, unique=True
)


@settings(max_examples=150, deadline=None)
@given(paths=_PATHS, prefix=st.sampled_from(["", "a/", "a b/", "é/"]))
def test_iter_folders_matches_the_s3_grouping_of_a_byte_ordered_listing(
    paths: list[str], prefix: str
) -> None:
    storage = make(*paths)
    expected = [(n, [o.path for o in objs]) for n, objs in _ListingS3(paths).iter_folders(prefix)]
    assert folders(storage, prefix) == expected


@settings(max_examples=150, deadline=None)
@given(paths=_PATHS)
def test_iter_folders_is_strictly_increasing_and_loses_nothing(paths: list[str]) -> None:
    storage = make(*paths)
    groups = folders(storage)
    keys = [folder_order(name) for name, _ in groups]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)  # what the merge checks
    nested = sorted(p for p in paths if "/" in p)
    assert sorted(p for _, ps in groups for p in ps) == nested
    for name, ps in groups:
        assert all(p.startswith(name + "/") for p in ps)


def test_surrogate_escaped_names_are_ordered_by_their_raw_bytes() -> None:
    raw = b"caf\xe9".decode("utf-8", "surrogateescape")  # a Latin-1 name from a local disk
    storage = make(f"{raw}/1.jpg", "cafe/1.jpg", "café/1.jpg")
    assert [name for name, _ in storage.iter_folders("")] == ["cafe", "café", raw]


# ---- objects, put and delete ----------------------------------------------------------


def test_put_records_size_and_mtime_and_replaces() -> None:
    storage = MemoryStorage()
    info = storage.put("k/a.jpg", size=10, mtime=5.5)
    assert info == ObjectInfo(path="k/a.jpg", size=10, mtime=5.5)
    assert storage.objects == {"k/a.jpg": (10, 5.5)}
    storage.put("k/a.jpg", size=0, mtime=6.0)
    assert storage.list_prefix("k/") == [ObjectInfo(path="k/a.jpg", size=0, mtime=6.0)]


def test_put_without_mtime_follows_call_order() -> None:
    storage = MemoryStorage()
    first = storage.put("k/b.jpg")
    second = storage.put("k/a.jpg")
    assert first.size == 1
    assert first.mtime < second.mtime


def test_constructor_takes_a_mapping() -> None:
    storage = MemoryStorage({"k/a.jpg": (3, 1.0)}, description="fake bucket")
    assert storage.description == "fake bucket"
    assert storage.list_prefix("k/") == [ObjectInfo(path="k/a.jpg", size=3, mtime=1.0)]


@pytest.mark.parametrize("path", ["", "/k/a.jpg", "k/", "k//a.jpg"])
def test_put_rejects_non_object_paths(path: str) -> None:
    with pytest.raises(ValueError):
        MemoryStorage().put(path)


def test_put_rejects_negative_size() -> None:
    with pytest.raises(ValueError):
        MemoryStorage().put("k/a.jpg", size=-1)


def test_delete_removes_and_is_idempotent() -> None:
    storage = make("k/a.jpg", "k/b.jpg")
    storage.delete("k/a.jpg")
    storage.delete("k/a.jpg")
    storage.delete("never/there.jpg")
    assert [o.path for o in storage.list_prefix("")] == ["k/b.jpg"]
    storage.delete("k/b.jpg")
    assert folders(storage) == []


def test_iteration_is_a_snapshot() -> None:
    storage = make("a/1.jpg", "b/1.jpg", "c/1.jpg")
    seen = []
    for name, _ in storage.iter_folders(""):
        seen.append(name)
        storage.put("bb/1.jpg")
        storage.delete("c/1.jpg")
    assert seen == ["a", "b", "c"]


# ---- outages -------------------------------------------------------------------------


def test_fail_with_raises_storage_error_chained_from_the_cause() -> None:
    storage = make("k/a.jpg")
    cause = TimeoutError("read timed out")
    storage.fail_with = cause
    with pytest.raises(StorageError, match="read timed out") as info:
        storage.list_prefix("k/")
    assert info.value.__cause__ is cause
    with pytest.raises(StorageError):
        storage.check()
    with pytest.raises(StorageError):
        list(storage.iter_folders(""))


def test_fail_with_a_storage_error_raises_it_as_is() -> None:
    storage = make("k/a.jpg")
    error = StorageError("bucket gone")
    storage.fail_with = error
    with pytest.raises(StorageError) as info:
        storage.list_prefix("k/")
    assert info.value is error


def test_iter_folders_fails_when_iterated_not_when_called() -> None:
    storage = make("k/a.jpg")
    storage.fail_with = OSError("down")
    stream = storage.iter_folders("")
    with pytest.raises(StorageError):
        next(stream)


def test_fail_after_breaks_the_stream_mid_way() -> None:
    storage = make("a/1.jpg", "b/1.jpg", "c/1.jpg")
    storage.fail_with = ConnectionResetError("reset")
    storage.fail_after = 2
    stream = storage.iter_folders("")
    assert [next(stream)[0], next(stream)[0]] == ["a", "b"]
    with pytest.raises(StorageError):
        next(stream)
    storage.fail_after = 5  # fewer folders than that: fails after the last one
    with pytest.raises(StorageError):
        list(storage.iter_folders(""))


def test_fail_after_without_fail_with_does_not_truncate() -> None:
    storage = make("a/1.jpg", "b/1.jpg", "c/1.jpg")
    storage.fail_after = 1
    assert [name for name, _ in storage.iter_folders("")] == ["a"]


def test_recovery_after_an_outage() -> None:
    storage = make("k/a.jpg")
    storage.fail_with = OSError("down")
    with pytest.raises(StorageError):
        storage.check()
    storage.fail_with = None
    storage.check()
    assert len(storage.list_prefix("k/")) == 1


# ---- the rest of the protocol --------------------------------------------------------


def test_requests_are_recorded() -> None:
    storage = make("k/a.jpg")
    storage.check()
    storage.list_prefix("k/")
    storage.iter_folders("p/")
    assert storage.requests == [("check", ""), ("list_prefix", "k/"), ("iter_folders", "p/")]


def test_close_and_description() -> None:
    storage: Storage = MemoryStorage()
    assert storage.description == "memory storage"
    storage.close()
    assert isinstance(storage, MemoryStorage) and storage.closed
