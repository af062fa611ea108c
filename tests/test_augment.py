"""Augmentations keep the image size and the whole organism; the preview grid and the dihedral views."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from plankton_db import augment
from plankton_db.cli import app
from plankton_db.errors import InvalidArgument


def organism(size: tuple[int, int] = (120, 60)) -> Image.Image:
    """A bright elongated body with a small head on a dark background, away from the edges."""
    img = Image.new("L", size, 8)
    d = ImageDraw.Draw(img)
    d.ellipse((20, 22, 90, 38), fill=200)
    d.ellipse((88, 24, 100, 36), fill=250)
    return img


def object_pixels(img: Image.Image) -> np.ndarray:
    """Mask of the pixels that differ from the dark background."""
    return np.asarray(img.convert("L"), np.int16) > 60


def test_every_augmentation_keeps_size_and_the_whole_organism() -> None:
    img = organism()
    area = object_pixels(img).sum()
    rng = np.random.default_rng(0)
    for name in augment.KINDS:
        for _ in range(5):
            out = augment.random_view(img, [name], rng)
            assert out.size == img.size and out.mode == "RGB", name
            mask = object_pixels(out)
            # Nothing of the organism is cut by the frame: the border stays background.
            assert not (mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()), name
            # Shrinking is allowed (a long organism turned across a wide frame), losing it is not.
            assert 0.25 * area < mask.sum() < 1.8 * area, (name, mask.sum(), area)


def test_rotation_by_any_angle_shrinks_only_when_needed() -> None:
    img = organism((120, 120))
    area = object_pixels(img).sum()
    for angle in (0, 33, 90, 180, 271):
        out = augment.rotate(img, angle)
        assert out.size == img.size
        # A square frame holds the organism at any angle, so its area barely changes (interpolation only).
        assert abs(int(object_pixels(out).sum()) - int(area)) < 0.15 * area, angle
    wide = augment.rotate(organism((120, 60)), 90)
    assert wide.size == (120, 60)
    assert object_pixels(wide).sum() < object_pixels(organism((120, 60))).sum()


def test_flip_and_scale_are_exact_where_they_should_be() -> None:
    img = organism()
    flipped = augment.flip(img, horizontal=True)
    assert np.array_equal(np.asarray(flipped)[:, ::-1], np.asarray(img.convert("RGB")))
    bigger = augment.scale(img, 5.0)
    mask = object_pixels(bigger)
    cols = np.flatnonzero(mask.any(0))
    # Capped so the whole organism still fits: it spans the frame's width but never leaves it.
    assert cols[0] <= 10 and cols[-1] >= img.width - 11 and not mask[:, 0].any() and not mask[:, -1].any()
    assert augment.photometric(img, 1.0, 1.0, 1.0).tobytes() == img.convert("RGB").tobytes()
    assert np.asarray(augment.photometric(img, brightness=1.2)).mean() > np.asarray(img.convert("RGB")).mean()


def test_dihedral_views_are_the_eight_symmetries() -> None:
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    views = augment.dihedral(x)
    assert len(views) == 8 and torch.equal(views[0], x)
    assert len({v.numpy().tobytes() for v in views}) == 8
    assert all(v.shape == x.shape for v in views)


def test_parse_rejects_unknown_and_mixed_lists() -> None:
    assert augment.parse("rotate, flip,none") == ("rotate", "flip")
    assert augment.parse("none") == ()
    with pytest.raises(InvalidArgument, match="unknown augmentation 'spin'"):
        augment.parse("rotate,spin")
    with pytest.raises(InvalidArgument, match="cannot be combined"):
        augment.parse("dihedral,blur")


def test_augment_preview_cli_writes_a_grid(tmp_path: Path) -> None:
    src = tmp_path / "o.png"
    organism().save(src)
    r = CliRunner().invoke(app, ["augment-preview", str(src), "--out", str(tmp_path / "g.png"), "-n", "4"])
    assert r.exit_code == 0, r.output
    grid = Image.open(tmp_path / "g.png")
    assert grid.size == (5 * 160, 160)
    r = CliRunner().invoke(app, ["augment-preview", str(src), "--augment", "warp"])
    assert r.exit_code == 1 and "unknown augmentation 'warp'" in r.output


def test_bounded_shrinks_only_large_images_and_keeps_aspect_and_organism() -> None:
    small = organism((120, 60))
    assert augment.bounded(small, 448) is small  # already fits: the same image, untouched
    big = organism((120, 60)).resize((3000, 1500), Image.Resampling.NEAREST)
    out = augment.bounded(big, 448)
    assert out.size == (448, 224)
    # The same fraction of the frame is organism before and after, so nothing was cropped.
    before, after = object_pixels(big).mean(), object_pixels(out).mean()
    assert after == pytest.approx(before, rel=0.1)
    tall = augment.bounded(Image.new("L", (10, 5000), 8), 448)
    assert tall.size == (1, 448)  # a side never rounds to 0
