"""Base-model features of augmented training images, computed once and cached on disk by image sha256."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from plankton_db import augment
from plankton_db.embedding import Encoder
from plankton_db.store import ContentStore

BATCH = 32
SAVE_EVERY = 25


def _views(encoder: Encoder, img, names: Sequence[str], copies: int, rng: np.random.Generator) -> list[torch.Tensor]:
    pp = encoder.spec.preprocess
    if tuple(names) == (augment.DIHEDRAL,):
        # The 7 non-identity views; the identity is the stored embedding already.
        return augment.dihedral(pp(img)[None])[1:]
    return [pp(augment.random_view(img, names, rng))[None] for _ in range(copies)]


def augmented_features(encoder: Encoder, store: ContentStore, shas: Sequence[str], names: Sequence[str], *,
                       copies: int, seed: int, cache_dir: Path,
                       on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Features (n, views, dim) of augmented copies of each image; cached per base weights, recipe and seed."""
    key = hashlib.sha256(f"{encoder.spec.weights_sha256}|{encoder.spec.preprocess.to_dict()}|{','.join(names)}|"
                         f"{copies}|{seed}".encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"augment-{key}.npz"
    cached: dict[str, np.ndarray] = {}
    if path.is_file():
        with np.load(path) as z:
            cached = dict(zip(z["shas"].tolist(), z["vectors"], strict=True))
    todo = [s for s in dict.fromkeys(shas) if s not in cached]
    for start in range(0, len(todo), BATCH):
        chunk = todo[start : start + BATCH]
        per = []
        for sha in chunk:
            # Seeded per image, so a cache entry never depends on which other images were in the run.
            rng = np.random.default_rng([seed, int(sha[:8], 16)])
            per.append(_views(encoder, store.read_image(sha), names, copies, rng))
        k = len(per[0])
        feats = encoder.encode_tensors(torch.cat([v for views in per for v in views]))
        for i, sha in enumerate(chunk):
            cached[sha] = feats[i * k : (i + 1) * k]
        if on_progress:
            on_progress(min(start + BATCH, len(todo)), len(todo))
        # Saved every SAVE_EVERY batches too, so an interrupted run resumes instead of starting over.
        if (start // BATCH + 1) % SAVE_EVERY == 0:
            _save(path, cached)
    if todo:
        _save(path, cached)
    return np.stack([cached[s] for s in shas])


def _save(path: Path, cached: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, shas=np.array(list(cached)), vectors=np.stack(list(cached.values())))
    tmp.replace(path)
