"""The bulk pass's fast paths in layout.py answer exactly what the plain rules answer.

`Layout.renders_to` must equal `render(images, current) == current`, `_strictly_natural`
must equal comparing natural keys pair by pair, and the whole-list check of the default
`select` must pick exactly the objects `_wanted` picks one by one.
"""

from __future__ import annotations

import random
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from portfolio_sync.layout import Collection, Layout, _strictly_natural, natural_key
from portfolio_sync.models import ObjectInfo

CDN = "https://cdn.example.com/{path}"

# Digits, case, casefold expansions (ß), accents, separators: shapes that agree and differ.
_TEXT = st.text(alphabet="aAbB09 1-_.ßSsé\u00c9", min_size=0, max_size=7)
_NAME = st.builds(lambda stem, ext: f"{stem}.{ext}", _TEXT, st.sampled_from(["jpg", "JPG", "png"]))


@st.composite
def folders(draw: st.DrawFn, key: str = "k") -> list[ObjectInfo]:
    names = draw(st.lists(_NAME, unique=True, max_size=10))
    return [
        ObjectInfo(
            path=f"{key}/{name}",
            size=draw(st.integers(1, 10**6)),
            mtime=draw(st.sampled_from([1.0, 2.0, 3.0])),
        )
        for name in names
    ]


_LAYOUTS = st.builds(
    Layout,
    order=st.sampled_from(["name", "uploaded", "preserve"]),
    public_url=st.sampled_from([None, CDN]),
)


@st.composite
def current_values(draw: st.DrawFn, layout: Layout, images: list[ObjectInfo]) -> list[str] | None:
    """Mostly the rendering itself or a near miss of it, so the fast path is exercised."""
    rendered = layout.render(images)
    kind = draw(st.sampled_from(["same", "shuffled", "swap", "dup", "drop", "none", "other"]))
    values = list(rendered)
    if kind == "none":
        return None
    if kind == "shuffled":
        random.Random(draw(st.integers(0, 1000))).shuffle(values)
    elif kind == "swap" and len(values) >= 2:
        i = draw(st.integers(0, len(values) - 2))
        values[i], values[i + 1] = values[i + 1], values[i]
    elif kind == "dup" and values:
        values.insert(draw(st.integers(0, len(values))), draw(st.sampled_from(values)))
        values.pop()
    elif kind == "drop" and values:
        values.pop(draw(st.integers(0, len(values) - 1)))
        values.append("k/other.jpg")
    elif kind == "other":
        values = draw(st.lists(st.sampled_from([*rendered, "k/x.jpg", "k/X.jpg"]), max_size=10))
    return values


@settings(max_examples=400, deadline=None)
@given(layout=_LAYOUTS, images=folders(), data=st.data())
def test_renders_to_is_render_equals_current(
    layout: Layout, images: list[ObjectInfo], data: st.DataObject
) -> None:
    current = data.draw(current_values(layout, images))
    assert layout.renders_to(images, current) == (layout.render(images, current) == current)


@settings(max_examples=400, deadline=None)
@given(names=st.lists(_TEXT, max_size=8), data=st.data())
def test_strictly_natural_is_pairwise_natural_key_order(
    names: list[str], data: st.DataObject
) -> None:
    ordered = sorted(names, key=natural_key)
    values = data.draw(st.sampled_from([names, ordered, list(reversed(ordered))]))
    expected = all(natural_key(a) < natural_key(b) for a, b in pairwise(values))
    assert _strictly_natural(values) == expected


def test_strictly_natural_examples() -> None:
    assert _strictly_natural(["k/IMG_0041.JPG", "k/img_0042.jpg", "k/IMG_0100.JPG"])
    assert _strictly_natural(["k/9.jpg", "k/10.jpg", "k/11.jpg"])
    assert not _strictly_natural(["k/10.jpg", "k/9.jpg"])
    assert _strictly_natural(["k/A.jpg", "k/a.jpg"])  # casefold tie: raw order decides
    assert not _strictly_natural(["k/a.jpg", "k/A.jpg"])
    assert not _strictly_natural(["k/a.jpg", "k/a.jpg"])  # not strictly
    assert _strictly_natural(["k/img01.jpg", "k/img1.jpg"])  # equal numbers: raw text
    assert _strictly_natural(["k/STRASSE.jpg", "k/Straße.jpg"])  # ß casefolds to ss
    assert _strictly_natural([]) and _strictly_natural(["k/a.jpg"])


_SEGMENT = st.sampled_from(
    ["a.jpg", "B.PNG", "x.txt", "Thumbs.db", "desktop.ini", ".hidden.jpg", "._a.jpg", "jpg",
     "a\n.jpg", "sub/c.jpg", "d.", ".", "e.JpG", "f.heic", "", "g.ini"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    names=st.lists(_SEGMENT, max_size=8),
    sizes=st.lists(st.sampled_from([0, 1, 100, None]), min_size=8, max_size=8),
    extensions=st.sampled_from(
        [None, frozenset({"jpg", "ini", "db"}), frozenset({"jpg", "mp4", "heic"})]
    ),
)
def test_select_takes_exactly_the_wanted_objects(
    names: list[str], sizes: list[int | None], extensions: frozenset[str] | None
) -> None:
    layout = Layout() if extensions is None else Layout(extensions=extensions)
    objects = [
        ObjectInfo(path=f"key/{name}", size=size, mtime=1.0)  # type: ignore[arg-type]
        for name, size in zip(names, sizes, strict=False)
    ]
    expected = [o for o in objects if layout._wanted(o.path[len("key/") :], o.size)]
    assert layout.select("key", objects) == [expected]
    assert layout.select("key", iter(objects)) == [expected]  # any iterable


def test_select_of_several_collections_is_unchanged() -> None:
    layout = Layout(
        collections=(
            Collection(column="before", subfolder="before/"),
            Collection(column="after", subfolder="after/"),
        )
    )
    objects = [
        ObjectInfo(path="k/before/a.jpg", size=1, mtime=1.0),
        ObjectInfo(path="k/after/b.jpg", size=1, mtime=1.0),
        ObjectInfo(path="k/c.jpg", size=1, mtime=1.0),
    ]
    assert layout.select("k", objects) == [[objects[0]], [objects[1]]]
