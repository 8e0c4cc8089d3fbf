"""Image objects (pure rendering), the header probe and the `image_fields` setting."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from portfolio_sync import image_objects, image_probe
from portfolio_sync.config import load_settings
from portfolio_sync.errors import ConfigError
from portfolio_sync.layout import Layout
from portfolio_sync.models import ImageMeta, ObjectInfo
from tests.images import encode, svg

LAYOUT = Layout(image_fields=("path", "width", "height"), order="preserve")


def obj(path: str, size: int = 10, mtime: float = 1.0) -> ObjectInfo:
    return ObjectInfo(path=path, size=size, mtime=mtime)


def test_string_rows_become_objects_and_reserved_keys_are_ours() -> None:
    meta = {"k/a.jpg": ImageMeta(width=4, height=3), "k/b.jpg": ImageMeta(error="bad")}
    current = ["k/b.jpg", {"path": "k/a.jpg", "alt": "A", "bytes": 99, "error": "old"}]
    rendered = image_objects.render([obj("k/a.jpg"), obj("k/b.jpg")], current, meta, LAYOUT)
    assert rendered == [
        {"path": "k/b.jpg", "error": "bad"},
        {"path": "k/a.jpg", "width": 4, "height": 3, "alt": "A"},
    ]
    assert image_objects.rendering_if_changed([obj("k/a.jpg")], rendered[1:], meta, LAYOUT) is None


def test_image_fields_setting() -> None:
    settings = load_settings(None, image_fields="path, Width,placeholder")
    assert settings.image_fields == ("path", "width", "placeholder")
    assert load_settings(None).image_fields == ()
    with pytest.raises(ConfigError, match=r"unknown image field.*colour"):
        load_settings(None, image_fields="path,colour")
    with pytest.raises(ConfigError, match="must include path"):
        load_settings(None, image_fields="url,width")


def test_the_probe_widens_its_read_only_when_the_header_needs_it() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    exif[0x010E] = "x" * 40_000  # a description that puts the frame header past 16 KiB
    data = encode("JPEG", (300, 200), exif=exif.tobytes(), noise=True)
    assert len(data) > 64 << 10
    asked: list[int] = []

    def read(start: int, length: int) -> bytes:
        asked.append(length)
        return data[start : start + length]

    found = image_probe.probe(read, len(data), "a.jpg")
    assert (found.width, found.height) == (200, 300)
    assert asked == [16 << 10, 64 << 10] and found.bytes_read == 64 << 10


@pytest.mark.parametrize(
    ("width", "height", "box", "size"),
    [
        ("100", "50", None, (100, 50)),
        ("10mm", "1in", None, (38, 96)),
        (None, "40", "0 0 200 100", (80, 40)),
        ("100%", "100%", "0,0,64,32", (64, 32)),
    ],
)
def test_svg_sizes(
    width: str | None, height: str | None, box: str | None, size: tuple[int, int]
) -> None:
    data = svg(width, height, box)
    found = image_probe.probe(lambda s, n: data[s : s + n], len(data), "x.svg")
    assert (found.width, found.height) == size and found.type == "image/svg+xml"


def test_an_svg_without_a_size_is_an_error() -> None:
    data = svg("50%", None)
    found = image_probe.probe(lambda s, n: data[s : s + n], len(data), "x.svg")
    assert found.width is None and found.error and "viewBox" in found.error


@pytest.mark.parametrize(
    ("fmt", "turns"), [("PNG", True), ("WEBP", True), ("JPEG", True), ("GIF", False)]
)
def test_large_files_cost_their_header_only(fmt: str, turns: bool) -> None:
    """Pillow reads a whole WebP (its EXIF chunk is at the end) and decodes a PNG without
    EXIF when asked for it: the probe must do neither."""
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(fmt, (700, 500), noise=True, exif=exif.tobytes())
    plain = encode(fmt, (700, 500), noise=True)
    for blob, shown in ((data, (500, 700) if turns else (700, 500)), (plain, (700, 500))):
        assert len(blob) > 128 << 10
        found = image_probe.probe(lambda s, n, b=blob: b[s : s + n], len(blob), "x")
        assert (found.width, found.height) == shown
        assert found.bytes_read <= 17 << 10, found  # the head, and EXIF at a WebP end


def test_heic_without_the_heic_extra_is_an_error_that_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(image_probe, "_HEIF_READY", False)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # as if not installed
    data = encode("JPEG", (10, 10))
    found = image_probe.probe(lambda s, n: data[s : s + n], len(data), "x.heic")
    assert found.width is None and found.error is not None and "[heic]" in found.error
