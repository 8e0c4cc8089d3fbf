"""Real image files made with Pillow (and pillow-heif for HEIC), for the image tests."""

from __future__ import annotations

import io
import random

from PIL import Image

#: format name -> (file extension, MIME type the probe reports)
FORMATS = {
    "JPEG": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "GIF": ("gif", "image/gif"),
    "AVIF": ("avif", "image/avif"),
    "HEIF": ("heic", "image/heif"),
    "TIFF": ("tiff", "image/tiff"),
    "BMP": ("bmp", "image/bmp"),
}


def picture(size: tuple[int, int] = (120, 80), *, noise: bool = False) -> Image.Image:
    """A picture with a gradient (so placeholders differ), or noise (so it compresses badly)."""
    width, height = size
    if noise:
        rng = random.Random(size[0] * 7 + size[1])
        return Image.frombytes("RGB", size, rng.randbytes(width * height * 3))
    im = Image.new("RGB", size)
    im.putdata(
        [(x * 255 // width, y * 255 // height, 90) for y in range(height) for x in range(width)]
    )
    return im


def encode(fmt: str, size: tuple[int, int] = (120, 80), **options: object) -> bytes:
    if fmt == "HEIF":
        from pillow_heif import register_heif_opener

        register_heif_opener()
    buffer = io.BytesIO()
    picture(size, noise=bool(options.pop("noise", False))).save(buffer, fmt, **options)  # type: ignore[arg-type]
    return buffer.getvalue()


def rotated_jpeg(size: tuple[int, int] = (120, 80)) -> bytes:
    """A JPEG stored `size` with EXIF orientation 6 (turn 90°): shown with sides swapped."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode("JPEG", size, exif=exif.tobytes())


def svg(width: str | None, height: str | None, view_box: str | None = None) -> bytes:
    attrs = "".join(
        f' {name}="{value}"'
        for name, value in (("width", width), ("height", height), ("viewBox", view_box))
        if value is not None
    )
    return f'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"{attrs}><rect/></svg>'.encode()
