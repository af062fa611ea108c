"""Leave-one-out retrieval study: which preprocessing gives the default model the best plankton embeddings.

Embeds each labelled dataset (one folder per class) with several Preprocess variants, then for every image
finds its nearest neighbours among all the others (self excluded) by cosine similarity and by L2 distance,
and reports top-1 accuracy and precision@10. No training is involved.

    PYTHONPATH=. .venv/bin/python bench/preprocess_study.py --data ../shared/data --datasets uvp6_uvpec --variants all
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from plankton_db.embedding import DEFAULT_MODEL, Encoder, ModelSpec, Preprocess, _load_lite0_package
from plankton_db.imageio import decode

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
BASE = Preprocess()  # 224, mean/std 0.5, bicubic, pad to square with the border colour, no margin

# name -> (timm architecture that receives the packaged lite0 weights, preprocessing)
VARIANTS: dict[str, tuple[str, Preprocess]] = {
    "naive_center_crop": ("tf_efficientnet_lite0", replace(BASE, mode="center_crop")),
    "pad": ("tf_efficientnet_lite0", BASE),
    "pad_m05": ("tf_efficientnet_lite0", replace(BASE, margin=0.05)),
    "pad_m15": ("tf_efficientnet_lite0", replace(BASE, margin=0.15)),
    "pad_m30": ("tf_efficientnet_lite0", replace(BASE, margin=0.30)),
    "pad_bilinear": ("tf_efficientnet_lite0", replace(BASE, interpolation="bilinear")),
    "pad_imagenet_norm": ("tf_efficientnet_lite0", replace(BASE, **IMAGENET)),
    "pad_arch_efficientnet_lite0": ("efficientnet_lite0", BASE),
    "pad_arch_efficientnet_lite0_imagenet_norm": ("efficientnet_lite0", replace(BASE, **IMAGENET)),
    "pad_s256": ("tf_efficientnet_lite0", replace(BASE, size=256)),
    "pad_s288": ("tf_efficientnet_lite0", replace(BASE, size=288)),
    "pad_stretch": ("tf_efficientnet_lite0", replace(BASE, stretch=True)),
    "pad_max_upscale1": ("tf_efficientnet_lite0", replace(BASE, max_upscale=1.0)),
    "object_m10": ("tf_efficientnet_lite0", replace(BASE, object_crop=True, margin=0.10)),
    "object_m25": ("tf_efficientnet_lite0", replace(BASE, object_crop=True, margin=0.25)),
}


def load_dataset(root: Path) -> tuple[list, np.ndarray, list[str]]:
    """Decode every image under root/<class>/ once; returns images, integer labels and class names."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    images, labels = [], []
    for ci, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.is_file():
                images.append(decode(f.read_bytes()).image)
                labels.append(ci)
    return images, np.asarray(labels), classes


def loo_metrics(feats: np.ndarray, labels: np.ndarray, k: int = 10) -> dict[str, float]:
    """Leave-one-out top-1 and precision@k for cosine similarity and L2 distance (self excluded)."""
    x = feats.astype(np.float64)
    out = {}
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sq = (x * x).sum(axis=1)
    for metric, dist in (("cos", -(unit @ unit.T)), ("l2", sq[:, None] + sq[None, :] - 2.0 * (x @ x.T))):
        np.fill_diagonal(dist, np.inf)
        nearest = np.argpartition(dist, k, axis=1)[:, :k]
        order = np.take_along_axis(dist, nearest, axis=1).argsort(axis=1)
        nearest = np.take_along_axis(nearest, order, axis=1)
        hits = labels[nearest] == labels[:, None]
        out[f"{metric}_top1"] = float(hits[:, 0].mean())
        out[f"{metric}_p{k}"] = float(hits.mean())
    return out


def embed(encoder: Encoder, images: list, batch_size: int) -> np.ndarray:
    """Embed all images with the encoder's preprocessing."""
    return encoder.encode(images, batch_size=batch_size)


def main(argv: list[str] | None = None) -> int:
    """Run the variants on the datasets and append one JSON line per (variant, dataset) to --out."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder holding one subfolder per dataset")
    ap.add_argument("--datasets", nargs="+", default=["uvp6_uvpec", "pwssc_spc"])
    ap.add_argument("--variants", nargs="+", default=["all"], help=f"names from: {', '.join(VARIANTS)}")
    ap.add_argument("--out", type=Path, default=Path("bench/out/preprocess_study.jsonl"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = list(VARIANTS) if args.variants == ["all"] else args.variants
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cpu = subprocess.run(
        "lscpu | grep 'Model name'", shell=True, capture_output=True, text=True, check=False
    ).stdout.strip()
    models: dict[str, tuple[torch.nn.Module, str]] = {}
    for ds in args.datasets:
        t0 = time.perf_counter()
        images, labels, classes = load_dataset(args.data / ds)
        print(
            f"{ds}: {len(images)} images, {len(classes)} classes, decoded in {time.perf_counter() - t0:.1f}s",
            flush=True,
        )
        for name in names:
            arch, pp = VARIANTS[name]
            if arch not in models:
                models[arch] = _load_lite0_package(arch)
            model, sha = models[arch]
            spec = ModelSpec(
                name=DEFAULT_MODEL, arch=arch, weights_sha256=sha, dim=int(model.num_features), preprocess=pp
            )
            encoder = Encoder(model, spec, torch.device("cpu"))
            t0 = time.perf_counter()
            feats = embed(encoder, images, args.batch_size)
            seconds = time.perf_counter() - t0
            row = {
                "variant": name,
                "dataset": ds,
                "n": len(images),
                "classes": len(classes),
                "arch": arch,
                **{k: round(v, 4) for k, v in loo_metrics(feats, labels).items()},
                "embed_s": round(seconds, 1),
                "preprocess": pp.to_dict(),
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "cpu": cpu,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            }
            print(
                f"| {name} | {ds} | {row['cos_top1']:.3f} | {row['cos_p10']:.3f} | {row['l2_top1']:.3f} | "
                f"{row['l2_p10']:.3f} | {seconds:.0f}s",
                flush=True,
            )
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
