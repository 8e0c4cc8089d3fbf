"""reconcile.py's pure parts: `plan()`, `fingerprint()`, `Plan.empties` and `Guard`.

`plan()` is invariant 2 (smart updates): None exactly when every column already equals
its rendered listing. The guard is invariant 4's bulk-pass limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio_sync.layout import Collection, Layout
from portfolio_sync.models import ObjectInfo, Plan, Row
from portfolio_sync.reconcile import Guard, fingerprint, plan

BEFORE_AFTER = Layout(
    collections=(
        Collection(column="before_images", subfolder="before_images/"),
        Collection(column="after_images", subfolder="after_images/"),
    )
)


def obj(path: str, size: int = 100, mtime: float = 1.0) -> ObjectInfo:
    return ObjectInfo(path=path, size=size, mtime=mtime)


def row(*values: list[str] | None, key: str = "k") -> Row:
    """A row as a driver returned it: `raw` is the JSON text, distinct from `values`."""
    return Row(
        key=key,
        key_value=f"id:{key}",
        values=tuple(values),
        raw=tuple(None if v is None else json.dumps(v) for v in values),
    )


def make_plan(
    current: Row, images: Sequence[Sequence[ObjectInfo]], layout: Layout | None = None
) -> Plan | None:
    return plan(current, images, layout or Layout())


# ---- plan: examples -------------------------------------------------------------------


def test_no_write_when_the_row_matches() -> None:
    images = [obj("k/b.jpg"), obj("k/a.jpg")]
    assert make_plan(row(["k/a.jpg", "k/b.jpg"]), [images]) is None


def test_no_write_for_an_empty_row_and_an_empty_folder() -> None:
    assert make_plan(row([]), [[]]) is None


def test_new_images_are_added() -> None:
    current = row(["k/a.jpg"])
    change = make_plan(current, [[obj("k/c.jpg"), obj("k/a.jpg"), obj("k/b.jpg")]])
    assert change == Plan(
        key="k",
        key_value="id:k",
        expected=('["k/a.jpg"]',),
        replaced=(["k/a.jpg"],),
        new=(["k/a.jpg", "k/b.jpg", "k/c.jpg"],),
        added=("k/b.jpg", "k/c.jpg"),
        removed=(),
        fingerprint=fingerprint([obj("k/c.jpg"), obj("k/a.jpg"), obj("k/b.jpg")]),
        before=1,
    )
    assert not change.empties


def test_deleted_images_are_removed() -> None:
    change = make_plan(row(["k/a.jpg", "k/b.jpg", "k/c.jpg"]), [[obj("k/b.jpg")]])
    assert change is not None
    assert change.new == (["k/b.jpg"],)
    assert change.added == ()
    assert change.removed == ("k/a.jpg", "k/c.jpg")
    assert not change.empties


def test_a_reorder_alone_is_a_write_with_nothing_added_or_removed() -> None:
    change = make_plan(row(["k/b.jpg", "k/a.jpg"]), [[obj("k/a.jpg"), obj("k/b.jpg")]])
    assert change is not None
    assert change.new == (["k/a.jpg", "k/b.jpg"],)
    assert change.added == change.removed == ()
    assert not change.empties


def test_duplicates_in_the_row_are_written_away() -> None:
    change = make_plan(row(["k/a.jpg", "k/a.jpg"]), [[obj("k/a.jpg")]])
    assert change is not None
    assert change.new == (["k/a.jpg"],)
    assert change.added == change.removed == ()


def test_a_null_column_with_no_images_becomes_an_empty_list() -> None:
    change = make_plan(row(None), [[]])
    assert change is not None
    assert change.new == ([],)
    assert change.expected == (None,)
    assert change.added == change.removed == ()
    assert not change.empties  # nothing is lost, so the guard does not count it


def test_a_null_column_with_images_gets_them() -> None:
    change = make_plan(row(None), [[obj("k/a.jpg")]])
    assert change is not None
    assert change.new == (["k/a.jpg"],)
    assert change.added == ("k/a.jpg",)


def test_emptying_a_row_is_flagged() -> None:
    change = make_plan(row(["k/a.jpg", "k/b.jpg"]), [[]])
    assert change is not None
    assert change.new == ([],)
    assert change.removed == ("k/a.jpg", "k/b.jpg")
    assert change.empties


def test_replacing_every_image_is_not_emptying() -> None:
    change = make_plan(row(["k/a.jpg"]), [[obj("k/b.jpg")]])
    assert change is not None
    assert change.added == ("k/b.jpg",) and change.removed == ("k/a.jpg",)
    assert not change.empties


def test_plan_compares_rendered_values() -> None:
    layout = Layout(public_url="https://cdn/{path}")
    images = [[obj("k/a b.jpg")]]
    assert make_plan(row(["https://cdn/k/a%20b.jpg"]), images, layout) is None
    change = make_plan(row(["k/a b.jpg"]), images, layout)
    assert change is not None
    assert change.added == ("https://cdn/k/a%20b.jpg",)
    assert change.removed == ("k/a b.jpg",)


def test_plan_under_the_preserve_policy() -> None:
    layout = Layout(order="preserve")
    images = [[obj("k/a.jpg"), obj("k/b.jpg"), obj("k/c.jpg")]]
    assert make_plan(row(["k/c.jpg", "k/a.jpg", "k/b.jpg"]), images, layout) is None
    change = make_plan(row(["k/c.jpg", "k/a.jpg"]), images, layout)
    assert change is not None
    assert change.new == (["k/c.jpg", "k/a.jpg", "k/b.jpg"],)
    assert change.added == ("k/b.jpg",)


def test_plan_under_the_uploaded_policy() -> None:
    layout = Layout(order="uploaded")
    images = [[obj("k/a.jpg", mtime=2.0), obj("k/b.jpg", mtime=1.0)]]
    assert make_plan(row(["k/b.jpg", "k/a.jpg"]), images, layout) is None
    assert make_plan(row(["k/a.jpg", "k/b.jpg"]), images, layout) is not None


def test_plan_with_several_collections() -> None:
    images = [[obj("k/before_images/1.jpg")], [obj("k/after_images/1.jpg")]]
    current = row(["k/before_images/1.jpg"], None)
    change = plan(current, images, BEFORE_AFTER)
    assert change is not None
    assert change.new == (["k/before_images/1.jpg"], ["k/after_images/1.jpg"])
    assert change.expected == ('["k/before_images/1.jpg"]', None)
    assert change.added == ("k/after_images/1.jpg",)
    assert change.removed == ()
    assert plan(row(*change.new), images, BEFORE_AFTER) is None


def test_a_value_moving_between_columns_is_neither_added_nor_removed() -> None:
    layout = Layout(
        collections=(Collection(column="a", subfolder=""), Collection(column="b", subfolder=""))
    )
    images = [[obj("k/x.jpg")], []]
    change = plan(row([], ["k/x.jpg"]), images, layout)
    assert change is not None
    assert change.new == (["k/x.jpg"], [])
    assert change.added == change.removed == ()
    assert not change.empties


def test_emptying_only_one_of_several_columns_is_not_emptying_the_row() -> None:
    images: list[list[ObjectInfo]] = [[obj("k/before_images/1.jpg")], []]
    change = plan(row(["k/before_images/1.jpg"], ["k/after_images/1.jpg"]), images, BEFORE_AFTER)
    assert change is not None
    assert change.removed == ("k/after_images/1.jpg",)
    assert not change.empties
    emptied = plan(row(["k/before_images/1.jpg"], None), [[], []], BEFORE_AFTER)
    assert emptied is not None and emptied.empties


def test_plan_rejects_images_for_a_different_number_of_columns() -> None:
    with pytest.raises(ValueError):
        make_plan(row(["k/a.jpg"]), [[], []])


def test_plan_carries_the_row_identity_and_raw_value() -> None:
    current = Row(key="7", key_value=7, values=(["x"],), raw=(["x"],))
    change = plan(current, [[]], Layout())
    assert change is not None
    assert (change.key, change.key_value, change.expected) == ("7", 7, (["x"],))


def test_plan_fingerprint_covers_every_collection() -> None:
    images = [[obj("k/before_images/1.jpg")], [obj("k/after_images/2.jpg", mtime=5.0)]]
    change = plan(row(None, None), images, BEFORE_AFTER)
    assert change is not None
    assert change.fingerprint == fingerprint([*images[0], *images[1]])


# ---- plan: properties ---------------------------------------------------------------

_STEMS = st.sampled_from(["a", "b", "C", "img2", "img10", "x y", "é"])


@st.composite
def folder_images(draw: st.DrawFn) -> list[ObjectInfo]:
    stems = draw(st.lists(_STEMS, unique=True, max_size=6))
    return [
        ObjectInfo(
            path=f"k/{stem}.jpg",
            size=1,
            mtime=draw(st.sampled_from([1.0, 2.0, 3.0])),
        )
        for stem in stems
    ]


_VALUES = st.none() | st.lists(
    st.sampled_from([f"k/{s}.jpg" for s in ["a", "b", "C", "img2", "img10", "gone"]]), max_size=6
)
_LAYOUTS = st.builds(
    Layout,
    order=st.sampled_from(["name", "uploaded", "preserve"]),
    public_url=st.sampled_from([None, "u/{path}"]),
)
_PROPERTY = settings(max_examples=120, deadline=None)


@_PROPERTY
@given(layout=_LAYOUTS, images=folder_images(), values=_VALUES)
def test_plan_is_none_iff_the_row_already_equals_the_rendering(
    layout: Layout, images: list[ObjectInfo], values: list[str] | None
) -> None:
    change = plan(row(values), [images], layout)
    rendered = layout.render(images, values)
    assert (change is None) == (rendered == values)
    if change is not None:
        assert change.new == (rendered,)
        assert change.expected == row(values).raw


@_PROPERTY
@given(layout=_LAYOUTS, before=folder_images(), after=folder_images(), data=st.data())
def test_plan_added_and_removed_are_exactly_the_set_differences(
    layout: Layout, before: list[ObjectInfo], after: list[ObjectInfo], data: st.DataObject
) -> None:
    two = Layout(
        collections=(Collection(column="a", subfolder=""), Collection(column="b", subfolder="")),
        order=layout.order,
        public_url=layout.public_url,
    )
    current = row(data.draw(_VALUES), data.draw(_VALUES))
    change = plan(current, [before, after], two)
    if change is None:
        return
    old = {v for values in current.values if values for v in values}
    new = {v for values in change.new for v in values}
    assert set(change.added) == new - old
    assert set(change.removed) == old - new
    assert len(change.added) == len(set(change.added))
    assert len(change.removed) == len(set(change.removed))
    assert change.empties == (not any(change.new) and bool(change.removed))


@_PROPERTY
@given(layout=_LAYOUTS, values=_VALUES)
def test_empties_iff_a_non_empty_row_loses_everything(
    layout: Layout, values: list[str] | None
) -> None:
    change = plan(row(values), [[]], layout)
    if not values:
        assert change is None if values == [] else change is not None and change.new == ([],)
        assert change is None or not change.empties
    else:
        assert change is not None
        assert change.new == ([],)
        assert change.empties
        assert set(change.removed) == set(values)


@_PROPERTY
@given(layout=_LAYOUTS, images=folder_images(), values=_VALUES)
def test_applying_a_plan_makes_the_next_plan_none(
    layout: Layout, images: list[ObjectInfo], values: list[str] | None
) -> None:
    change = plan(row(values), [images], layout)
    after = row(*change.new) if change is not None else row(values)
    assert plan(after, [images], layout) is None


@_PROPERTY
@given(layout=_LAYOUTS, images=folder_images())
def test_a_null_column_always_gets_a_list(layout: Layout, images: list[ObjectInfo]) -> None:
    change = plan(row(None), [images], layout)
    assert change is not None
    assert change.new == (layout.render(images),)
    assert not change.empties


# ---- Plan.empties -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("new", "removed", "empties"),
    [
        (([],), ("a",), True),
        (([], []), ("a",), True),
        (([],), (), False),  # NULL -> []: nothing lost
        ((["b"],), ("a",), False),
        (([], ["b"]), ("a",), False),
        ((["a"],), (), False),
    ],
)
def test_plan_empties(new: tuple[list[str], ...], removed: tuple[str, ...], empties: bool) -> None:
    change = Plan(key="k", key_value=1, expected=(), new=new, added=(), removed=removed)
    assert change.empties is empties


@pytest.mark.parametrize(
    ("before", "after", "drastic"),
    [
        (["a"], [], True),  # emptied
        (["a", "b", "c"], ["a"], True),  # two of three removed
        (["a", "b"], ["a"], False),  # exactly half: not more than half
        (["a", "b", "c", "d"], ["a", "b", "e"], False),
        (None, [], False),  # NULL -> []: nothing lost
        ([], ["a"], False),
    ],
)
def test_plan_drastic_is_emptying_or_removing_more_than_half(
    before: list[str] | None, after: list[str], drastic: bool
) -> None:
    current = row(None if before is None else [f"k/{name}.jpg" for name in before])
    change = make_plan(current, [[obj(f"k/{name}.jpg") for name in after]])
    assert change is not None and change.drastic is drastic


# ---- fingerprint --------------------------------------------------------------------


def test_fingerprint_is_a_short_hex_digest_independent_of_order() -> None:
    listing = [obj("k/b.jpg"), obj("k/a.jpg", size=3, mtime=2.5)]
    digest = fingerprint(listing)
    assert re.fullmatch(r"[0-9a-f]{32}", digest)
    assert fingerprint(list(reversed(listing))) == digest
    assert fingerprint([]) != digest
    assert re.fullmatch(r"[0-9a-f]{32}", fingerprint([]))


@pytest.mark.parametrize(
    "changed",
    [
        obj("k/a.jpg", size=4, mtime=2.5),
        obj("k/a.jpg", size=3, mtime=2.6),
        obj("k/A.jpg", size=3, mtime=2.5),
    ],
)
def test_fingerprint_changes_with_path_size_or_mtime(changed: ObjectInfo) -> None:
    base = fingerprint([obj("k/a.jpg", size=3, mtime=2.5)])
    assert fingerprint([changed]) != base


def test_fingerprint_ignores_sub_millisecond_mtime_noise() -> None:
    assert fingerprint([obj("k/a.jpg", mtime=2.0001)]) == fingerprint([obj("k/a.jpg", mtime=2.0)])


def test_fingerprint_of_odd_names() -> None:
    raw = b"caf\xe9.jpg".decode("utf-8", "surrogateescape")
    nfc, nfd = "k/\u00e9.jpg", "k/e\u0301.jpg"
    assert fingerprint([obj(f"k/{raw}")]) != fingerprint([obj("k/cafe.jpg")])
    assert fingerprint([obj(nfc)]) != fingerprint([obj(nfd)])


# ---- Guard --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("emptied", "nonempty", "trips"),
    [
        (0, 0, False),
        (0, 100, False),
        (4, 4, False),  # 100% but fewer than 5 rows
        (4, 10, False),
        (5, 5, True),
        (5, 49, True),  # 10.2%
        (5, 50, False),  # exactly 10% is allowed
        (5, 51, False),
        (6, 50, True),
        (10, 100, False),
        (11, 100, True),
        (100, 1000, False),
        (101, 1000, True),
    ],
)
def test_guard_boundaries(emptied: int, nonempty: int, trips: bool) -> None:
    assert Guard().trips(emptied, nonempty) is trips


def test_guard_defaults() -> None:
    guard = Guard()
    assert (guard.max_share, guard.min_rows) == (0.1, 5)


@settings(max_examples=300, deadline=None)
@given(nonempty=st.integers(0, 100_000), emptied=st.integers(0, 100_000))
def test_guard_trips_iff_at_least_5_rows_and_more_than_10_percent(
    nonempty: int, emptied: int
) -> None:
    expected = emptied >= 5 and emptied * 10 > nonempty  # exact integer arithmetic
    assert Guard().trips(emptied, nonempty) is expected


def test_guard_exactly_ten_percent_never_trips() -> None:
    guard = Guard()
    for tenth in range(5, 2000):
        assert not guard.trips(tenth, tenth * 10)
        assert guard.trips(tenth + 1, tenth * 10)


@pytest.mark.parametrize(
    ("guard", "emptied", "nonempty", "trips"),
    [
        (Guard(max_share=0.5, min_rows=1), 1, 2, False),
        (Guard(max_share=0.5, min_rows=1), 2, 3, True),
        (Guard(max_share=0.0, min_rows=1), 1, 1000, True),
        (Guard(max_share=1.0, min_rows=1), 10, 10, False),
        (Guard(max_share=0.1, min_rows=0), 0, 0, False),
        (Guard(max_share=0.1, min_rows=20), 19, 19, False),
    ],
)
def test_guard_with_other_limits(guard: Guard, emptied: int, nonempty: int, trips: bool) -> None:
    assert guard.trips(emptied, nonempty) is trips
