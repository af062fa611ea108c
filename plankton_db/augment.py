"""Augmentations for plankton images: every one keeps the image size and the whole organism in the frame."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from plankton_db.errors import InvalidArgument
from plankton_db.imageio import to_rgb

# Grey levels that separate an organism from the background: lower than embedding._OBJECT_DELTA, and the
# box gets a margin, because cutting a faint antenna here would change what the model learns.
_OBJECT_DELTA = 6
_BOX_MARGIN = 0.05


def _fill(arr: np.ndarray) -> tuple[int, ...]:
    """Median colour of the one-pixel frame, i.e. the background."""
    ring = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return tuple(int(v) for v in np.median(ring, axis=0).round())


def _object_box(img: Image.Image, fill: tuple[int, ...]) -> tuple[int, int, int, int]:
    arr = np.asarray(img).astype(np.int16)
    diff = np.abs(arr - np.asarray(fill, np.int16)).max(axis=2)
    rows, cols = np.flatnonzero((diff > _OBJECT_DELTA).any(1)), np.flatnonzero((diff > _OBJECT_DELTA).any(0))
    if rows.size == 0:
        return (0, 0, img.width, img.height)
    m = 1 + round(_BOX_MARGIN * max(rows[-1] - rows[0], cols[-1] - cols[0]))
    return (max(0, int(cols[0]) - m), max(0, int(rows[0]) - m), min(img.width, int(cols[-1]) + 1 + m),
            min(img.height, int(rows[-1]) + 1 + m))


def _room(size: tuple[int, int]) -> tuple[int, int]:
    """The frame less a thin background border, so a re-fitted organism never touches the edge."""
    pad = max(1, round(0.03 * min(size)))
    return max(1, size[0] - 2 * pad), max(1, size[1] - 2 * pad)


def _fit(obj: Image.Image, size: tuple[int, int], fill: tuple[int, ...]) -> Image.Image:
    """Centre `obj` on a canvas of `size`, shrinking it only when it would not fit (so nothing is cut off)."""
    room = _room(size)
    scale = min(1.0, room[0] / obj.width, room[1] / obj.height)
    if scale < 1.0:
        obj = obj.resize((max(1, round(obj.width * scale)), max(1, round(obj.height * scale))), Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", size, fill)
    canvas.paste(obj, ((size[0] - obj.width) // 2, (size[1] - obj.height) // 2))
    return canvas


def rotate(img: Image.Image, angle: float) -> Image.Image:
    """Rotate by any angle about the centre; the rotated organism is re-fitted into the original frame."""
    rgb = to_rgb(img)
    fill = _fill(np.asarray(rgb))
    turned = rgb.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=fill)
    return _fit(turned.crop(_object_box(turned, fill)), rgb.size, fill)


def scale(img: Image.Image, factor: float) -> Image.Image:
    """Zoom the organism by `factor` about its centre, never beyond the frame."""
    rgb = to_rgb(img)
    fill = _fill(np.asarray(rgb))
    obj = rgb.crop(_object_box(rgb, fill))
    # Enlarging is capped so the whole organism stays inside the frame.
    room = _room(rgb.size)
    factor = min(factor, room[0] / obj.width, room[1] / obj.height)
    obj = obj.resize((max(1, round(obj.width * factor)), max(1, round(obj.height * factor))), Image.Resampling.BICUBIC)
    return _fit(obj, rgb.size, fill)


def blur(img: Image.Image, radius: float) -> Image.Image:
    """Gaussian blur with this radius in pixels (out-of-focus organisms)."""
    return to_rgb(img).filter(ImageFilter.GaussianBlur(radius))


def photometric(img: Image.Image, brightness: float = 1.0, contrast: float = 1.0, gamma: float = 1.0) -> Image.Image:
    """Gamma, then contrast about the background level, then brightness: camera and illumination changes."""
    rgb = to_rgb(img)
    arr = np.asarray(rgb, np.float32) / 255.0
    bg = np.asarray(_fill(np.asarray(rgb)), np.float32) / 255.0
    arr = arr ** gamma
    bg = bg ** gamma
    # Contrast is stretched about the background so the background itself stays where it was.
    arr = (arr - bg) * contrast + bg
    arr = arr * brightness
    return Image.fromarray((arr.clip(0, 1) * 255).round().astype(np.uint8))


def flip(img: Image.Image, horizontal: bool) -> Image.Image:
    """Mirror left-right (horizontal) or top-bottom."""
    method = Image.Transpose.FLIP_LEFT_RIGHT if horizontal else Image.Transpose.FLIP_TOP_BOTTOM
    return to_rgb(img).transpose(method)


@dataclass(frozen=True)
class _Kind:
    """One augmentation with its random parameters."""

    describe: str
    apply: Callable[[Image.Image, np.random.Generator], Image.Image]


KINDS: dict[str, _Kind] = {
    "rotate": _Kind("any angle 0-360 degrees", lambda im, r: rotate(im, float(r.uniform(0, 360)))),
    "flip": _Kind("horizontal and/or vertical flip",
                  lambda im, r: flip(flip(im, True), False) if r.random() < 0.25 else flip(im, bool(r.random() < 0.5))),
    "blur": _Kind("Gaussian blur, radius 0.3-1.5 px", lambda im, r: blur(im, float(r.uniform(0.3, 1.5)))),
    "color": _Kind("brightness 0.8-1.2, contrast 0.8-1.25, gamma 0.8-1.25",
                   lambda im, r: photometric(im, float(r.uniform(0.8, 1.2)), float(np.exp(r.uniform(-0.22, 0.22))),
                                             float(np.exp(r.uniform(-0.22, 0.22))))),
    "scale": _Kind("zoom 0.8-1.2 keeping the whole organism", lambda im, r: scale(im, float(r.uniform(0.8, 1.2)))),
}
# "dihedral" is not random: the 8 flips and 90-degree rotations, applied to the preprocessed tensor.
DIHEDRAL = "dihedral"


def parse(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """Validate a comma-separated augmentation list ("none" or empty for no augmentation)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec or ())
    names = tuple(dict.fromkeys(s.strip().lower() for s in items if s.strip() and s.strip().lower() != "none"))
    unknown = [n for n in names if n not in KINDS and n != DIHEDRAL]
    if unknown:
        raise InvalidArgument(f"unknown augmentation {unknown[0]!r}; choose from {', '.join([*KINDS, DIHEDRAL])}")
    if DIHEDRAL in names and len(names) > 1:
        raise InvalidArgument("'dihedral' uses the 8 fixed flips/rotations and cannot be combined with random ones")
    return names


def bounded(img: Image.Image, side: int) -> Image.Image:
    """The image shrunk (aspect kept) so that neither side exceeds `side`; unchanged when it already fits.

    Training views are seen by the model at its input size, so a 4,000 px crop can be augmented at twice that
    size instead: rotating it at full size cost ~0.4 s a view on a 2-core CPU, about ten times the forward and
    backward pass of EfficientNet-Lite0 on that image (~45 ms)."""
    if max(img.size) <= side:
        return img
    f = side / max(img.size)
    return img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.Resampling.BILINEAR,
                      reducing_gap=2.0)


def random_view(img: Image.Image, names: Sequence[str], rng: np.random.Generator) -> Image.Image:
    """Apply each named random augmentation once, in a fixed order, with random parameters."""
    out = to_rgb(img)
    for name in names:
        out = KINDS[name].apply(out, rng)
    return out


def dihedral(batch: torch.Tensor) -> list[torch.Tensor]:
    """The 8 flips and 90-degree rotations of a batch (n, c, s, s); the first is the batch itself."""
    views = []
    for flipped in (batch, batch.flip(-1)):
        views.extend(torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4))
    return views


def preview(img: Image.Image, names: Sequence[str], *, n: int = 8, cell: int = 160, seed: int = 0) -> Image.Image:
    """A grid: the original first, then `n` random views (or the 8 dihedral views), each scaled to `cell` px."""
    rng = np.random.default_rng(seed)
    rgb = to_rgb(img)
    if tuple(names) == (DIHEDRAL,):
        views = [rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if f else rgb for f in (False, True)]
        views = [v.rotate(90 * k, expand=True) for v in views for k in range(4)]
    else:
        views = [rgb] + [random_view(rgb, names, rng) for _ in range(n)]
    cols = min(len(views), 5)
    rows = -(-len(views) // cols)
    grid = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    for i, v in enumerate(views):
        # Enlarged as well as shrunk: most plankton crops are smaller than a grid cell.
        k = (cell - 4) / max(v.size)
        thumb = v.resize((max(1, round(v.width * k)), max(1, round(v.height * k))), Image.Resampling.BICUBIC)
        grid.paste(thumb, ((i % cols) * cell + (cell - thumb.width) // 2, (i // cols) * cell + (cell - thumb.height) // 2))
    return grid
