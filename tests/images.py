"""Small image files for tests: good ones in several modes and every kind of bad one."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    """Encode an image to bytes."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def blob(size: tuple[int, int] = (40, 30), seed: int = 0) -> Image.Image:
    """A bright random blob on black, RGB."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    h, w = size[1], size[0]
    arr[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = rng.integers(100, 255, 3, dtype=np.uint8)
    return Image.fromarray(arr)


def write_bad_files(folder: Path) -> dict[str, str]:
    """Write one file of each bad kind; return file name -> expected reason fragment."""
    folder.mkdir(parents=True, exist_ok=True)
    good = png_bytes(blob())
    (folder / "empty.png").write_bytes(b"")
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    corrupt = bytearray(good)
    corrupt[60:80] = b"\x00" * 20
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "notes.png").write_text("this is a text file, not an image\n")
    # A decompression bomb: a tiny file that claims 20000 x 20000 pixels.
    Image.new("1", (20000, 20000)).save(folder / "bomb.png", optimize=True)
    Image.new("RGB", (10, 10)).save(folder / "picture.gif")  # suffix not ingested from folders
    (folder / "animation.png").write_bytes(png_bytes(blob(), "GIF"))
    return {
        "empty.png": "empty file",
        "truncated.png": "corrupt or truncated image",
        "corrupt.png": "corrupt or truncated image",
        "notes.png": "not an image",
        "bomb.png": "too large: 20000x20000",
        "animation.png": "unsupported format GIF",
    }
