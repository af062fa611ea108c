"""Decoding image bytes safely, and turning any decoded image into 8-bit RGB."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from plankton_db.errors import ImageRejected

# Formats we accept; Pillow can open more, but these are what plankton instruments write.
ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "TIFF", "BMP"})
DEFAULT_MAX_PIXELS = 100_000_000

# Never decode a partial file silently: a truncated image must be rejected, not padded with grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# decode() checks the caller's pixel limit from the header, before any pixel is read. Pillow's own
# fixed guard (an error at 179 MP) would otherwise pre-empt it, ignore a user's higher limit, and
# report a message without the size.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class DecodedImage:
    """A fully decoded image plus the facts ingest records about it."""

    image: Image.Image
    width: int
    height: int
    format: str
    mode: str


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode `data` completely or raise ImageRejected with a reason a person can act on."""
    if not data:
        raise ImageRejected("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format or "unknown"
            if fmt not in ACCEPTED_FORMATS:
                raise ImageRejected(f"unsupported format {fmt} (accepted: JPEG, PNG, TIFF, BMP)")
            width, height = img.size
            if width <= 0 or height <= 0:
                raise ImageRejected(f"invalid size {width}x{height}")
            if width * height > max_pixels:
                raise ImageRejected(
                    f"too large: {width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
                )
            if getattr(img, "n_frames", 1) > 1:
                raise ImageRejected(f"multi-frame {fmt} ({img.n_frames} frames); store one frame per file")
            img.load()
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not an image (unrecognised content)") from None
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated and corrupt data through these.
        raise ImageRejected(f"corrupt or truncated image: {exc}") from None
    return DecodedImage(image=img, width=width, height=height, format=fmt, mode=img.mode)


def _stretch_high_bit_depth(arr: np.ndarray) -> np.ndarray:
    """Map an integer array of more than 8 bits to uint8 by its container bit depth.

    Scientific cameras often store 10-, 12- or 14-bit data in 16-bit containers; scaling by
    the smallest power of two above the maximum keeps relative brightness across images of
    the same instrument instead of stretching each image on its own.
    """
    arr = arr.astype(np.float64)
    top = float(arr.max()) if arr.size else 0.0
    if top <= 255:
        return arr.clip(0, 255).astype(np.uint8)
    bits = int(np.ceil(np.log2(top + 1)))
    return np.clip(arr / (2**bits - 1) * 255.0, 0, 255).round().astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Return an 8-bit RGB copy of any decoded image (greyscale, 16-bit, palette, alpha, CMYK)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr8 = np.zeros(arr.shape, np.uint8) if hi <= lo else ((arr - lo) / (hi - lo) * 255).astype(np.uint8)
        else:
            arr8 = _stretch_high_bit_depth(arr)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent pixels become black, the usual background of dark-field plankton images.
        rgba = img.convert("RGBA")
        base = Image.new("RGB", rgba.size, (0, 0, 0))
        base.paste(rgba, mask=rgba.getchannel("A"))
        return base
    return img.convert("RGB")
