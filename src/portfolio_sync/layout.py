"""Where a portfolio's images live and how they become a column value. Pure: no I/O.

All the rules that decide what `row.images` should be live here, so they can be tested
exhaustively: key ⇄ folder mapping, which objects count as images, how an object is
rendered (its storage path, or a public URL), and the order of the list.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import compress, count, islice, repeat
from operator import and_, attrgetter, eq, itemgetter, lt, methodcaller, not_
from typing import Any
from urllib.parse import quote

from portfolio_sync.config import DEFAULT_EXTENSIONS, Order, Settings
from portfolio_sync.models import ObjectInfo

# Names that are never images even if an extension matched: OS and tool droppings.
_JUNK_NAMES = frozenset({"thumbs.db", "desktop.ini", ".ds_store", ".emptyfolderplaceholder"})
_split_digits = re.compile(r"([0-9]+)").split


def natural_key(text: str) -> tuple[object, ...]:
    """Sort key where `img2 < img10` and case only breaks ties.

    Hand-written rather than natsort's keygen: it is on the bulk pass's hot path (one call
    per image) and this is several times faster. Digit runs compare as numbers, text
    case-insensitively; the raw string last makes the order total and deterministic.

    The key is `((text, number, text, number, …, text, -1), raw)`: text parts and numbers
    alternate at fixed positions, so comparing the flat tuple is comparing the
    (text, number) pairs in turn; -1 ends it, so "a" sorts before "a1". Casefolding the
    whole string before splitting equals casefolding each text part: casefold maps each
    character on its own and never makes or removes an ASCII digit.
    """
    parts: list[Any] = _split_digits(text.casefold())  # text, digits, text, ..., text
    parts[1::2] = map(int, parts[1::2])
    parts.append(-1)
    return (tuple(parts), text)


@dataclass(frozen=True, slots=True, kw_only=True)
class Collection:
    """One images column and the sub-folder of the portfolio folder that fills it."""

    column: str
    subfolder: str  # "" for the portfolio folder itself, else "before_images/" etc.


@dataclass(frozen=True, slots=True, kw_only=True)
class Layout:
    """The mapping rules; build it once from Settings with `Layout.from_settings`."""

    prefix: str = ""  # static path before {key}, e.g. "portfolios/"
    collections: tuple[Collection, ...] = (Collection(column="images", subfolder=""),)
    extensions: frozenset[str] = frozenset(DEFAULT_EXTENSIONS)
    recursive: bool = False
    public_url: str | None = None
    order: Order = "name"
    image_fields: tuple[str, ...] = ()  # non-empty: elements are objects (image_objects.py)

    @classmethod
    def from_settings(cls, settings: Settings) -> Layout:
        collections = []
        prefix = ""
        for column, template in settings.collection_map().items():
            prefix, _, after = template.partition("{key}")
            collections.append(Collection(column=column, subfolder=after[1:]))
        return cls(
            prefix=prefix,
            collections=tuple(collections),
            extensions=frozenset(settings.extensions),
            recursive=settings.recursive,
            public_url=settings.public_url,
            order=settings.order,
            image_fields=settings.image_fields,
        )

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(c.column for c in self.collections)

    def folder(self, key: str) -> str:
        """The portfolio folder, relative to the storage root, listed once for all columns."""
        return f"{self.prefix}{key}/"

    def is_key(self, name: str) -> bool:
        """Whether a folder name can be a portfolio key (hidden folders never are)."""
        return bool(name) and not name.startswith(".") and "/" not in name

    def key_of(self, path: str) -> str | None:
        """The portfolio a storage path belongs to, or None if it is outside the layout."""
        if not path.startswith(self.prefix):
            return None
        key, sep, _ = path[len(self.prefix) :].partition("/")
        return key if sep and self.is_key(key) else None

    def affects(self, path: str) -> str | None:
        """The key whose column(s) a change at `path` may alter, else None.

        Used to drop events for objects no collection would ever list (wrong folder,
        hidden or non-image files) before they cost a sync.
        """
        key = self.key_of(path)
        if key is None:
            return None
        rel = path[len(self.prefix) + len(key) + 1 :]
        for collection in self.collections:
            if rel.startswith(collection.subfolder) and self._wanted(
                rel[len(collection.subfolder) :], size=None
            ):
                return key
        return None

    def _wanted(self, rest: str, size: int | None) -> bool:
        if not rest or (not self.recursive and "/" in rest):
            return False
        if rest.startswith(".") or "/." in rest:  # hidden files/folders, AppleDouble ._x
            return False
        name = rest.rpartition("/")[2]
        if name.lower() in _JUNK_NAMES:
            return False
        if size is not None and size <= 0:  # placeholders and half-written uploads
            return False
        return name.rpartition(".")[2].lower() in self.extensions and "." in name

    def select(self, key: str, objects: Iterable[ObjectInfo]) -> list[list[ObjectInfo]]:
        """Split one listing of the portfolio folder into the images of each collection."""
        base = len(self.prefix) + len(key) + 1
        if not self.recursive and len(self.collections) == 1 and not self.collections[0].subfolder:
            return [self._select_direct(base, objects)]
        chosen: list[list[ObjectInfo]] = [[] for _ in self.collections]
        for obj in objects:
            rel = obj.path[base:]
            for index, collection in enumerate(self.collections):
                sub = collection.subfolder
                if rel.startswith(sub) and self._wanted(rel[len(sub) :], obj.size):
                    chosen[index].append(obj)
        return chosen

    def _select_direct(self, base: int, objects: Iterable[ObjectInfo]) -> list[ObjectInfo]:
        """`select` for one collection of the folder's direct children (the default).

        A bulk pass runs this once per folder: when every object passes (the usual case)
        that is established with whole-list operations; otherwise each object is checked
        with the rules of `_wanted`, inlined.
        """
        objects = list(objects)
        pattern = _direct_images(self.extensions)
        if pattern is not None:
            joined = "\n".join(map(itemgetter(slice(base, None)), map(_path_of, objects)))
            if pattern.fullmatch(joined) and _all_positive(objects):
                return objects
        names = list(map(itemgetter(slice(base, None)), map(_path_of, objects)))
        if pattern is None and self._all_direct_images(names, objects):
            return objects
        extensions = self.extensions
        chosen = []
        for obj, name in zip(objects, names, strict=True):
            size = obj.size
            if (
                "." in name
                and "/" not in name
                and name[0] != "."
                and (size is None or size > 0)
                and name.rpartition(".")[2].lower() in extensions
                and name.lower() not in _JUNK_NAMES
            ):
                chosen.append(obj)
        return chosen

    def _all_direct_images(self, names: list[str], objects: list[ObjectInfo]) -> bool:
        """True only if `_wanted(name, size)` holds for every object (non-recursive)."""
        joined = "\n".join(names)
        # no sub-folder, no hidden name (a name with a newline may fail this: then the
        # caller checks one by one, which is only slower)
        if "/" in joined or joined.startswith(".") or "\n." in joined:
            return False
        if not all(map(str.__contains__, names, repeat("."))):
            return False
        extensions = map(str.lower, map(itemgetter(2), map(_rpartition_dot, names)))
        if not all(map(self.extensions.__contains__, extensions)):
            return False
        if not _JUNK_NAMES.isdisjoint(map(str.lower, names)):
            return False
        return _all_positive(objects)

    def render_path(self, path: str) -> str:
        """A stored value: the path from the storage root, or the public URL of it."""
        if self.public_url is None:
            return path
        raw = path.encode("utf-8", "surrogateescape")  # undecodable local names: raw bytes
        return self.public_url.replace("{path}", quote(raw, safe="/"))

    def renders_to(self, images: Sequence[ObjectInfo], current: Sequence[str] | None) -> bool:
        """Whether `render(images, current) == current`, i.e. the column needs no write."""
        return self.rendering_if_changed(images, current) is None

    def rendering_if_changed(
        self, images: Sequence[ObjectInfo], current: Sequence[str] | None
    ) -> list[str] | None:
        """`render(images, current)`, or None when that equals `current` (no write).

        Answered without rendering in the common case, because a bulk pass asks it once per
        row and most rows are in sync: with the value being the path (no public URL), a list
        equals its `name` rendering iff it holds the same paths and is strictly increasing
        in natural order, and its `preserve` rendering iff it holds the same paths without
        duplicates. A NULL column never equals a rendering, which is always a list.
        """
        if (
            current is not None
            and self.public_url is None
            and self.order != "uploaded"
            and len(current) == len(images)
        ):
            paths = set(map(_path_of, images))
            # a duplicate on either side makes a set smaller than its list
            if paths == set(current) and len(paths) == len(current):
                if self.order == "preserve" or _strictly_natural(current):
                    return None
        rendered = self.render(images, current)
        return None if rendered == current else rendered

    def render(
        self, images: Sequence[ObjectInfo], current: Sequence[str] | None = None
    ) -> list[str]:
        """The column value for these images under the order policy.

        `current` is the row's present value; only the `preserve` policy looks at it.
        """
        if self.order == "uploaded":
            ordered = sorted(images, key=lambda o: (o.mtime, natural_key(o.path)))
            return [self.render_path(o.path) for o in ordered]
        if self.public_url is None:  # the value is the path: sort the strings directly
            by_name = sorted([o.path for o in images], key=natural_key)
        else:
            by_name = [self.render_path(o.path) for o in sorted(images, key=_path_key)]
        if self.order == "preserve" and current:
            present = set(by_name)
            kept = [value for value in dict.fromkeys(current) if value in present]
            kept_set = set(kept)
            return kept + [value for value in by_name if value not in kept_set]
        return by_name


def _path_key(obj: ObjectInfo) -> tuple[object, ...]:
    return natural_key(obj.path)


_path_of = attrgetter("path")
_size_of = attrgetter("size")
_rpartition_dot = methodcaller("rpartition", ".")
_utf8 = methodcaller("encode", "utf-8", "surrogatepass")
_JUNK_EXTENSIONS = frozenset(name.rpartition(".")[2] for name in _JUNK_NAMES)


@functools.lru_cache(maxsize=32)
def _direct_images(extensions: frozenset[str]) -> re.Pattern[str] | None:
    """A pattern that fully matches newline-joined names iff each is an image by
    `_wanted`'s rules (non-recursive), sizes aside; None where that cannot be exact.

    Each name: not hidden, no `/`, ending in `.` and an extension of the set in any ASCII
    case (what `.lower()` accepts, except non-ASCII look-alikes such as the Kelvin sign,
    which then take the one-by-one check). Junk names only matter when their extensions
    (db, ini) are configured: then there is no pattern.
    """
    if not extensions or extensions & _JUNK_EXTENSIONS:
        return None
    choices = []
    for ext in sorted(extensions, key=lambda e: (-len(e), e)):
        if not (ext.isascii() and ext.isalnum()):
            return None
        choices.append("".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext))
    name = rf"[^./\n][^/\n]*\.(?:{'|'.join(choices)})"
    return re.compile(rf"{name}(?:\n{name})*")


def _all_positive(objects: list[ObjectInfo]) -> bool:
    try:
        return all(map(lt, repeat(0), map(_size_of, objects)))
    except TypeError:  # a size of None: the one-by-one check accepts it
        return False


_DIGITS_TO_ZERO = bytes.maketrans(b"123456789", b"000000000")
_NO_KEY: tuple[object, ...] = ()


def _strictly_natural(values: Sequence[str]) -> bool:
    """Whether `natural_key(values[i]) < natural_key(values[i + 1])` for every i.

    Most neighbours in a sorted folder have the same shape (`IMG_0041`, `IMG_0042`): the
    same casefolded text with ASCII digits in the same places. For those, natural order
    is plain order of the casefolded strings, the raw strings breaking ties, since equally
    long digit runs compare as numbers exactly as they compare as text; only neighbours
    of different shapes (`9.jpg`, `10.jpg`) need their natural keys. (Shapes are compared
    as UTF-8 bytes: an ASCII digit is never part of a longer UTF-8 sequence.)
    """
    folded = list(map(str.casefold, values))
    shapes = list(map(bytes.translate, map(_utf8, folded), repeat(_DIGITS_TO_ZERO)))
    next_shapes, next_folded = islice(shapes, 1, None), islice(folded, 1, None)
    # indices i of the pairs (i, i + 1) not settled by "same shape and folded a < b"
    unsettled = compress(
        count(), map(not_, map(and_, map(eq, shapes, next_shapes), map(lt, folded, next_folded)))
    )
    keyed, right = -1, _NO_KEY  # natural key of values[keyed], kept for the next pair
    for i in unsettled:
        a, b = values[i], values[i + 1]
        if shapes[i] == shapes[i + 1]:
            if not (folded[i] == folded[i + 1] and a < b):
                return False
            continue
        left = right if keyed == i else natural_key(a)
        keyed, right = i + 1, natural_key(b)
        if not left < right:
            return False
    return True
