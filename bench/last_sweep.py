"""Hyper-parameter sweep for `--mode last` on cached trunk maps, selected on a validation split.

Trunk outputs of every labelled image under the 8 dihedral views are computed once and cached in
/tmp/trunk_<home name>.pt. Each variant trains the last stage + head like `plankton_db.finetune.fit_last` and
reports cosine kNN top1 of the evaluation images against every labelled image. With --inner, evaluation uses
20% of the training images (seed 1) and the holdout stays unseen, which is how the shipped defaults were chosen.

    PYTHONPATH=. .venv/bin/python bench/last_sweep.py --home /tmp/train-uvp6_uvpec --inner \
        lr_scale=0.3,sched=1 lr_scale=1.0,sched=1 head=1
Keys: lr_scale, epochs, sched (one-cycle), tta (mean over 8 views), taps (append pooled trunk maps),
head (train the head alone on the frozen stage's features, as --mode head does).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from plankton_db import augment, losses
from plankton_db.config import Settings
from plankton_db.db import connect
from plankton_db.embed import load_encoder, require_model
from plankton_db.finetune import freeze_batchnorm, split_backbone
from plankton_db.store import ContentStore
from plankton_db.train import TrainConfig, _class_weights, fit_head, knn_top1, labelled_images, one_cycle, split
from plankton_db.tuned import Head

KEYS = {"lr_scale": float, "epochs": int, "sched": int, "tta": int, "taps": int, "head": int}


def _features(stage, maps: torch.Tensor, taps: bool) -> torch.Tensor:
    f = stage(maps)
    return torch.cat([f, maps.mean((2, 3)), maps.amax((2, 3))], 1) if taps else f


def _embed_all(stage, head, maps, taps, tta) -> np.ndarray:
    with torch.no_grad():
        views = range(8) if tta else [0]
        f = torch.stack([torch.cat([_features(stage, maps[i:i + 128, v].float(), taps) for i in range(0, len(maps), 128)])
                         for v in views]).mean(0)
        return head(f).numpy()


def variant(maps, y, tr, ev, stage0, n_classes, lr_scale=0.3, epochs=8, sched=1, tta=0, taps=0, head=0) -> float:
    torch.manual_seed(0)
    if head:  # the frozen stage: features of all 8 views, then fit_head as --mode head does
        with torch.no_grad():
            feats = torch.stack([torch.cat([_features(stage0, maps[i:i + 128, v].float(), taps)
                                            for i in range(0, len(maps), 128)]) for v in range(8)], 1).numpy()
        h, *_ = fit_head(feats[tr].reshape(-1, feats.shape[-1]), np.repeat(y[tr], 8), TrainConfig(), n_classes)
        with torch.no_grad():
            emb = h(torch.as_tensor(feats.mean(1) if tta else feats[:, 0])).numpy()
        return knn_top1(emb, y, ev)
    cfg = TrainConfig()
    stage = copy.deepcopy(stage0)
    with torch.no_grad():
        bx = torch.cat([_features(stage0, maps[tr][i:i + 128, 0].float(), taps) for i in range(0, len(tr), 128)])
    hd = Head.for_features(bx, cfg.dim, cfg.hidden)
    crit = losses.make(cfg.loss, cfg.dim, n_classes)
    opt = torch.optim.AdamW([{"params": stage.parameters(), "lr": cfg.lr * lr_scale},
                             {"params": list(hd.parameters()) + list(crit.parameters()), "lr": cfg.lr}],
                            weight_decay=1e-4)
    train_maps = maps[tr].reshape(-1, *maps.shape[2:])
    ty = torch.as_tensor(np.repeat(y[tr], 8))
    weights = _class_weights(ty.numpy(), True)
    step = one_cycle(opt, epochs * -(-len(ty) // 64)) if sched else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        stage.train()
        hd.train()
        freeze_batchnorm(stage)
        order = torch.multinomial(weights, len(ty), replacement=True, generator=gen)
        for start in range(0, len(order), 64):
            idx = order[start:start + 64]
            loss = crit(hd(_features(stage, train_maps[idx].float(), taps)), ty[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step()
    stage.eval()
    hd.eval()
    return knn_top1(_embed_all(stage, hd, maps, taps, tta), y, ev)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--inner", action="store_true", help="evaluate on a split of the training images")
    ap.add_argument("variants", nargs="+", help="comma-separated key=value lists")
    a = ap.parse_args()
    torch.set_num_threads(2)
    settings = Settings(home=a.home)
    db = connect(settings)
    store = ContentStore(settings.store)
    with db.Session() as s:
        data = labelled_images(s)
        encoder, _ = load_encoder(s, require_model(s, None).name, device="cpu")
    trunk, stage0 = split_backbone(encoder.model.float())
    stage0.eval()
    cache = Path(f"/tmp/trunk_{a.home.name}.pt")
    if cache.exists():
        maps = torch.load(cache)
    else:
        rows = []
        for sha in data.shas:
            views = augment.dihedral(encoder.spec.preprocess(store.read_image(sha))[None])
            with torch.inference_mode():
                rows.append(trunk(torch.cat(views).contiguous(memory_format=torch.channels_last)).half())
        maps = torch.stack(rows)
        torch.save(maps, cache)
    y = data.y
    tr, ev = split(y, 0.2, 0)
    if a.inner:
        itr, iev = split(y[tr], 0.2, 1)
        tr, ev = tr[itr], tr[iev]
    print(f"{len(tr)} training images, {len(ev)} evaluation queries ({'validation split' if a.inner else 'holdout'})")
    for spec in a.variants:
        kw = {}
        for item in spec.split(","):
            key, _, value = item.partition("=")
            if key not in KEYS:
                raise SystemExit(f"unknown key {key!r}; choose from {', '.join(KEYS)}")
            kw[key] = KEYS[key](value)
        t = time.perf_counter()
        top1 = variant(maps, y, tr, ev, stage0, len(data.classes), **kw)
        print(f"{spec:45s} top1 {top1:.4f}  ({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
