"""What an image file is and how large it shows, from as few of its bytes as possible.

`probe()` reads the head of the file through a `read(start, length)` callable (a ranged
GET on S3, a seek on disk) and asks Pillow to open it lazily: Pillow parses the header
and stops, it does not decode pixels. When the head was too short (a JPEG with a large
EXIF block before its frame header, a HEIF file with its `meta` box late) the read is
widened, 16 KiB, then 64 KiB, 512 KiB and finally the whole file. Sizes are the shown
ones: a JPEG/TIFF/WebP/PNG whose EXIF orientation turns it (5-8) has width and height
swapped. HEIF/AVIF are reported as libheif shows them (its rotation boxes applied). SVG
takes its size from the root element's width/height (absolute units) or its viewBox.

`placeholder()` is the exception that reads the whole file: a BlurHash needs the pixels.
"""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

HEADS = (16 << 10, 64 << 10, 512 << 10)  # bytes tried before the whole file
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_ORIENTATION = 0x0112
_TRANSFORMED = ("HEIF", "AVIF")  # libheif/libavif apply the rotation boxes themselves
_SVG_UNITS = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54}
_SVG_UNITS["mm"] = 96 / 25.4
_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*$")
_HEIF_READY = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Probe:
    """What a file's header says; `error` when it could not be read as an image."""

    width: int | None = None
    height: int | None = None
    type: str | None = None  # MIME type
    error: str | None = None
    bytes_read: int = 0


def _register_heif() -> bool:
    """pillow-heif adds HEIF/HEIC to Pillow's openers (once; AVIF is Pillow's own). It is
    the optional extra `heic` (libheif is large); without it HEIC files get an error."""
    global _HEIF_READY
    if not _HEIF_READY:
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            return False
        register_heif_opener()
        _HEIF_READY = True
    return True


def probe(read: Callable[[int, int], bytes], size: int, name: str) -> Probe:
    """The shown size and type of the image of `size` bytes that `read` returns parts of."""
    if not _register_heif() and name.lower().endswith((".heic", ".heif")):
        return Probe(error="HEIC/HEIF needs pillow-heif: pip install 'portfolio-sync[heic]'")
    is_svg = name.lower().endswith((".svg", ".svgz"))
    last = ""
    for length in (*[h for h in HEADS if h < size], size):
        data = read(0, length)
        if not is_svg and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp(read, data, size)  # Pillow would read it all
        found = _svg(data, final=length >= size) if is_svg else _raster(data)
        if isinstance(found, Probe):
            return Probe(
                width=found.width,
                height=found.height,
                type=found.type,
                error=found.error,
                bytes_read=length,
            )
        last = found
    return Probe(error=last or "not an image", bytes_read=size)


def _raster(data: bytes) -> Probe | str:
    """A Probe, or the reason the bytes were not enough (then more are read)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            kind = Image.MIME.get(im.format or "") or f"image/{im.format or ''}".lower()
            # A PNG's eXIf chunk comes before its image data, so open() has seen it if
            # there is one; getexif() would otherwise decode the image looking for it.
            if im.format not in _TRANSFORMED and (im.format != "PNG" or "exif" in im.info):
                orientation = im.getexif().get(_ORIENTATION)
                if orientation in _ROTATED:
                    width, height = height, width
    except UnidentifiedImageError:
        return "not an image format portfolio-sync can read"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return f"cannot read the image header: {exc}"
    except Exception as exc:  # a corrupt header may trip any parser error (or warning)
        return f"cannot read the image header: {type(exc).__name__}: {exc}"
    if width <= 0 or height <= 0:
        return Probe(error=f"the header gives an empty size {width}x{height}")
    return Probe(width=width, height=height, type=kind)


def _webp(read: Callable[[int, int], bytes], head: bytes, size: int) -> Probe:
    """WebP from its RIFF chunks: the size from the first chunk (VP8X canvas, VP8 frame or
    VP8L header), the orientation from the EXIF chunk, which sits after the image data:
    chunk headers are read one by one to get there, never the data."""
    spent = len(head)
    if len(head) < 30:
        return Probe(error="not a readable WebP header", bytes_read=spent)
    kind, length = head[12:16], int.from_bytes(head[16:20], "little")
    body = head[20:30]
    width = height = 0
    if kind == b"VP8X":
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
    elif kind == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        width = int.from_bytes(body[6:8], "little") & 0x3FFF
        height = int.from_bytes(body[8:10], "little") & 0x3FFF
    elif kind == b"VP8L" and body[:1] == b"\x2f":
        bits = int.from_bytes(body[1:5], "little")
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if not width or not height:
        return Probe(error="not a readable WebP header", bytes_read=spent)
    if kind == b"VP8X" and body[0] & 0x08:  # the EXIF flag
        offset = 20 + length + (length & 1)
        for _ in range(64):
            if offset + 8 > size:
                break
            chunk = read(offset, 8)
            spent += len(chunk)
            chunk_size = int.from_bytes(chunk[4:8], "little")
            if chunk[:4] == b"EXIF":
                data = read(offset + 8, chunk_size)
                spent += len(data)
                exif = Image.Exif()
                try:
                    exif.load(data)
                except Exception as exc:  # a corrupt EXIF block: the size still stands
                    return Probe(
                        width=width,
                        height=height,
                        type="image/webp",
                        error=f"unreadable EXIF block: {exc}",
                        bytes_read=spent,
                    )
                if exif.get(_ORIENTATION) in _ROTATED:
                    width, height = height, width
                break
            offset += 8 + chunk_size + (chunk_size & 1)
    return Probe(width=width, height=height, type="image/webp", bytes_read=spent)


def _svg(data: bytes, *, final: bool) -> Probe | str:
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start",))
    root: ET.Element | None = None
    try:
        parser.feed(data)
        events: Iterable[Any] = parser.read_events()  # ("start", element) pairs
        for _kind, elem in events:
            if isinstance(elem, ET.Element):
                root = elem
                break
    except ET.ParseError as exc:
        root = None
        if final:
            return Probe(error=f"not a readable SVG: {exc}")
    if root is None:
        return Probe(error="not an SVG (no root element)") if final else "no root element yet"
    if not root.tag.endswith("svg"):
        return Probe(error=f"not an SVG (root element {root.tag!r})")
    width, height = _length(root.get("width")), _length(root.get("height"))
    box = (root.get("viewBox") or "").replace(",", " ").split()
    if len(box) == 4:
        try:
            box_w, box_h = float(box[2]), float(box[3])
        except ValueError:
            box_w = box_h = 0.0
        if box_w > 0 and box_h > 0:
            if width is None and height is None:
                width, height = box_w, box_h
            elif width is None and height is not None:
                width = height * box_w / box_h
            elif height is None and width is not None:
                height = width * box_h / box_w
    if not width or not height:
        return Probe(type="image/svg+xml", error="the SVG has no absolute width/height or viewBox")
    return Probe(width=round(width), height=round(height), type="image/svg+xml")


def _length(value: str | None) -> float | None:
    """An SVG length in px; None for missing or relative ones (%, em)."""
    match = _LENGTH.match(value or "")
    if not match or match.group(2) not in _SVG_UNITS:
        return None
    return float(match.group(1)) * _SVG_UNITS[match.group(2)]


def placeholder(data: bytes) -> str:
    """A BlurHash (4x3 components) of the whole image, shown the way it is turned.

    Decodes a reduced version only (JPEG draft mode), then a 32 px thumbnail.
    """
    import blurhash
    from PIL import ImageOps

    _register_heif()
    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (64, 64))
        shown = ImageOps.exif_transpose(im) if im.format not in _TRANSFORMED else im
        small = shown.convert("RGB")
        small.thumbnail((32, 32))
    x, y = (4, 3) if small.width >= small.height else (3, 4)
    raw, width = small.tobytes(), small.width
    rows = [
        [list(raw[i : i + 3]) for i in range(start, start + width * 3, 3)]
        for start in range(0, len(raw), width * 3)
    ]
    return str(blurhash.encode(rows, components_x=x, components_y=y))
