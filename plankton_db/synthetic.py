"""Plankton-like test images: a few shape classes on a dark background, for the demo and the tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("copepod", "diatom_chain", "chaetognath", "radiolarian", "detritus")


def _canvas(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    bg = int(rng.integers(0, 25))
    img = Image.new("L", (w, h), bg)
    return img, ImageDraw.Draw(img)


def draw(kind: str, rng: np.random.Generator) -> Image.Image:
    """One greyscale image of the given class, with random size, pose and brightness."""
    if kind not in CLASSES:
        raise ValueError(f"unknown synthetic class {kind!r}; choose one of {', '.join(CLASSES)}")
    s = int(rng.integers(48, 110))
    fg = int(rng.integers(150, 255))
    if kind == "copepod":
        img, d = _canvas(rng, s, int(s * rng.uniform(1.3, 1.8)))
        w, h = img.size
        d.ellipse([w * 0.3, h * 0.15, w * 0.7, h * 0.6], fill=fg)
        d.line([w * 0.5, h * 0.6, w * 0.5, h * 0.9], fill=fg, width=max(2, w // 20))
        d.line([w * 0.35, h * 0.2, w * 0.05, h * 0.05], fill=fg, width=2)
        d.line([w * 0.65, h * 0.2, w * 0.95, h * 0.05], fill=fg, width=2)
    elif kind == "diatom_chain":
        n = int(rng.integers(3, 6))
        img, d = _canvas(rng, s * 2, int(s * 0.6))
        w, h = img.size
        step = w / n
        for i in range(n):
            d.rectangle([i * step + 2, h * 0.25, (i + 1) * step - 2, h * 0.75], outline=fg, width=3)
    elif kind == "chaetognath":
        img, d = _canvas(rng, int(s * 0.5), s * 2)
        w, h = img.size
        d.polygon([(w * 0.5, h * 0.03), (w * 0.75, h * 0.2), (w * 0.55, h * 0.97), (w * 0.45, h * 0.97), (w * 0.25, h * 0.2)], fill=fg)
    elif kind == "radiolarian":
        img, d = _canvas(rng, s, s)
        c, r = s / 2, s * 0.22
        d.ellipse([c - r, c - r, c + r, c + r], outline=fg, width=3)
        spikes = int(rng.integers(10, 18))
        for i in range(spikes):
            a = 2 * math.pi * i / spikes
            d.line([c + r * math.cos(a), c + r * math.sin(a), c + 0.48 * s * math.cos(a), c + 0.48 * s * math.sin(a)], fill=fg, width=1)
    else:  # detritus: an irregular soft blob
        img, d = _canvas(rng, s, int(s * rng.uniform(0.7, 1.3)))
        w, h = img.size
        pts = [
            (w / 2 + rng.uniform(0.15, 0.45) * w * math.cos(a), h / 2 + rng.uniform(0.15, 0.45) * h * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, 9, endpoint=False)
        ]
        d.polygon(pts, fill=int(fg * 0.6))
        img = img.filter(ImageFilter.GaussianBlur(2))
    img = img.rotate(float(rng.uniform(-25, 25)), expand=True, fillcolor=img.getpixel((0, 0)))
    noise = rng.normal(0, 4, (img.height, img.width))
    return Image.fromarray(np.clip(np.asarray(img, float) + noise, 0, 255).astype(np.uint8), mode="L")


def write_dataset(root: Path, per_class: int = 20, seed: int = 0, classes: tuple[str, ...] = CLASSES) -> list[Path]:
    """Write per_class PNGs of each class into root/<class>/ and return their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for kind in classes:
        folder = Path(root) / kind
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            p = folder / f"{kind}_{i:04d}.png"
            draw(kind, rng).save(p)
            paths.append(p)
    return paths
