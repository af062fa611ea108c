"""Decoding: every accepted mode becomes 8-bit RGB; every bad kind is rejected with its reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from images import blob, png_bytes, write_bad_files
from plankton_db.errors import ImageRejected
from plankton_db.imageio import decode, to_rgb


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "TIFF", "BMP"])
def test_accepted_formats_decode(fmt: str) -> None:
    d = decode(png_bytes(blob((33, 21)), fmt))
    assert (d.width, d.height, d.format) == (33, 21, fmt)
    assert to_rgb(d.image).mode == "RGB"


def test_greyscale_and_16_bit_become_rgb_with_contrast_kept() -> None:
    grey = decode(png_bytes(blob().convert("L")))
    assert to_rgb(grey.image).mode == "RGB"
    arr = np.zeros((20, 30), np.uint16)
    arr[5:15, 10:20] = 4000  # 12-bit data in a 16-bit container
    img16 = Image.fromarray(arr)
    assert img16.mode.startswith("I;16")
    for fmt in ("PNG", "TIFF"):
        d = decode(png_bytes(img16, fmt))
        rgb = np.asarray(to_rgb(d.image))
        assert rgb.shape == (20, 30, 3)
        # Scaled by the 12-bit range, the object is bright, not crushed to near-black by /257.
        assert rgb[10, 15, 0] > 200 and rgb[0, 0, 0] == 0


def test_rgba_and_palette_become_rgb() -> None:
    rgba = blob().convert("RGBA")
    assert to_rgb(decode(png_bytes(rgba)).image).mode == "RGB"
    pal = blob().convert("P")
    assert to_rgb(decode(png_bytes(pal)).image).mode == "RGB"


def test_cmyk_jpeg_becomes_rgb() -> None:
    d = decode(png_bytes(blob().convert("CMYK"), "JPEG"))
    assert d.mode == "CMYK" and to_rgb(d.image).mode == "RGB"


def test_every_bad_kind_is_rejected_with_its_reason(tmp_path) -> None:
    expected = write_bad_files(tmp_path)
    for name, reason in expected.items():
        with pytest.raises(ImageRejected, match=reason.replace("(", r"\(")):
            decode((tmp_path / name).read_bytes())


def test_pixel_limit_is_the_callers() -> None:
    data = png_bytes(blob((100, 100)))
    assert decode(data, max_pixels=10_000).width == 100
    with pytest.raises(ImageRejected, match="100x100 = 10000 pixels exceeds the limit of 9999"):
        decode(data, max_pixels=9_999)
