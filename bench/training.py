"""Training benchmark: head training, loss choice, augmentation ablation, TTA and size features on a 20% holdout.

Needs a PLANKTON_HOME per data set with the images ingested (--labels-from-folders) and embedded with the
default model. Writes the "training" section of docs/BENCHMARKS.md and bench/out/training_<set>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from _report import write_section

from plankton_db.config import Settings
from plankton_db.db import connect
from plankton_db.embed import get_model, load_encoder, require_model
from plankton_db.evaluate import evaluate
from plankton_db.featcache import augmented_features
from plankton_db.imageio import decode
from plankton_db.modeladmin import delete_model
from plankton_db.store import ContentStore
from plankton_db.train import TrainConfig, base_vectors, fit_head, knn_top1, labelled_images, split, train

OUT = Path(__file__).resolve().parent / "out"


def _head_top1(x, y, tr, ho, cfg, n_classes, x_eval=None) -> tuple[float, float]:
    t = time.perf_counter()
    head, *_ = fit_head(x[tr], y[tr], cfg, n_classes)
    with torch.no_grad():
        e = head(torch.as_tensor(x if x_eval is None else x_eval)).numpy()
    return knn_top1(e, y, ho), time.perf_counter() - t


def _descriptors(store: ContentStore, shas: list[str]) -> np.ndarray:
    """log width, log height, log object area, object fill ratio: the size cues a 224 px resize removes."""
    rows = []
    for sha in shas:
        grey = np.asarray(decode(store.read(sha), max_pixels=2**62).image.convert("L"), np.int16)
        ring = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
        area = max(1, int((np.abs(grey - np.median(ring)) > 12).sum()))
        h, w = grey.shape
        rows.append([np.log(w), np.log(h), np.log(area), area / (w * h)])
    d = np.array(rows, np.float32)
    return (d - d.mean(0)) / np.maximum(d.std(0), 1e-6)


def _with_size(feats: np.ndarray, desc: np.ndarray, weight: float) -> np.ndarray:
    f = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    return np.concatenate([f, weight * desc / np.sqrt(desc.shape[1])], axis=1)


def run(dataset: str, home: Path, augment_spec: str, copies: int, tta: bool) -> dict:
    settings = Settings.from_env() if os.environ.get("PLANKTON_HOME") == str(home) else Settings(home=home)
    db = connect(settings)
    store = ContentStore(settings.store)
    res: dict = {"dataset": dataset, "augment": augment_spec}
    with db.Session() as s:
        base = require_model(s, None)
        data = labelled_images(s)
        vec = base_vectors(s, base.id)
        encoder, _ = load_encoder(s, base.name, device="cpu")
    x = np.stack([vec[int(i)] for i in data.ids])
    tr, ho = split(data.y, 0.2, 0)
    n_c = len(data.classes)
    res.update(n=len(data.ids), classes=n_c, n_train=len(tr), n_holdout=len(ho), base_top1=knn_top1(x, data.y, ho))
    res["losses"] = {}
    variants = [("normface (default)", TrainConfig()), ("arcface", TrainConfig(loss="arcface")),
                ("supcon", TrainConfig(loss="supcon")), ("normface, no class balancing", TrainConfig(balance=False)),
                ("normface, linear head (no hidden layer)", TrainConfig(hidden=0)),
                ("normface, 60 epochs", TrainConfig(epochs=60))]
    for name, cfg in variants:
        res["losses"][name] = _head_top1(x, data.y, tr, ho, cfg, n_c)
        print(dataset, name, res["losses"][name], flush=True)
    # The shipped command end to end: read features, train, register, write every image's new vector.
    for label, aug in [("plain", "none"), ("augmented", augment_spec)]:
        cfg = TrainConfig(name=f"{dataset}-head-{label}", augment=(aug,) if aug == "dihedral" else tuple(aug.split(",")),
                          copies=copies, device="cpu")
        with db.Session.begin() as s:  # a rerun replaces its own models
            if get_model(s, cfg.name) is not None:
                delete_model(s, cfg.name)
        t = time.perf_counter()
        r = train(db.Session, store, cfg, cache_dir=settings.home / "cache")
        res[f"train_{label}_seconds"] = time.perf_counter() - t
        with db.Session.begin() as s:
            res[f"sql_{label}"] = evaluate(s, r.model.id, r.model.name, holdout_of=r.model.id).to_json()
            res["sql_base"] = evaluate(s, base.id, base.name, holdout_of=r.model.id).to_json()
        print(dataset, label, res[f"train_{label}_seconds"], res[f"sql_{label}"]["top1"], flush=True)
    if tta:
        # Dihedral views of every labelled image: mean over the 8 for TTA, with and without the trained head.
        views = augmented_features(encoder, store, data.shas, ("dihedral",), copies=1, seed=0,
                                   cache_dir=settings.home / "cache")
        mean8 = (x + views.sum(1)) / 8
        res["tta_frozen"] = knn_top1(mean8, data.y, ho)
        xa = np.concatenate([x[tr], views[tr].reshape(-1, x.shape[1])])
        ya = np.concatenate([data.y[tr], np.repeat(data.y[tr], 7)])
        head, *_ = fit_head(xa, ya, TrainConfig(), n_c)
        with torch.no_grad():
            res["tta_head_aug"] = knn_top1(head(torch.as_tensor(mean8)).numpy(), data.y, ho)
            res["notta_head_aug"] = knn_top1(head(torch.as_tensor(x)).numpy(), data.y, ho)
    desc = _descriptors(store, data.shas)
    head, *_ = fit_head(x[tr], data.y[tr], TrainConfig(), n_c)
    with torch.no_grad():
        hx = head(torch.as_tensor(x)).numpy()
    res["size"] = {str(w): [knn_top1(_with_size(x, desc, w), data.y, ho), knn_top1(_with_size(hx, desc, w), data.y, ho)]
                   for w in (0.0, 0.1, 0.2, 0.3, 0.5)}
    db.dispose()
    OUT.mkdir(exist_ok=True)
    (OUT / f"training_{dataset}.json").write_text(json.dumps(res, indent=1, default=float))
    return res


def _pct(v: float) -> str:
    return f"{v:.3f}"


def write(datasets: list[str], command: str) -> None:
    """Write the "training" section of docs/BENCHMARKS.md from bench/out/training_<set>.json."""

    lines = []
    for ds in datasets:
        r = json.loads((OUT / f"training_{ds}.json").read_text())
        sb, sp, sa_ = r["sql_base"], r["sql_plain"], r["sql_augmented"]
        lines += [f"### {ds}: {r['n']} labelled images, {r['classes']} classes; {r['n_train']} train, "
                  f"{r['n_holdout']} holdout (stratified, seed 0)", "",
                  "Holdout queries only (`plankton eval --holdout`), searched against every labelled image.", "",
                  "| model | top1 | precision@5 | precision@10 | mAP@10 | wall time of `plankton train` |",
                  "|---|---|---|---|---|---|",
                  f"| frozen default (tf_efficientnet_lite0) | {_pct(sb['top1'])} | {_pct(sb['precision_at_5'])} | "
                  f"{_pct(sb['precision_at_10'])} | {_pct(sb['map_at_10'])} | - |",
                  f"| head, no augmentation | {_pct(sp['top1'])} | {_pct(sp['precision_at_5'])} | "
                  f"{_pct(sp['precision_at_10'])} | {_pct(sp['map_at_10'])} | {r['train_plain_seconds']:.0f} s |",
                  f"| head, augmentation `{r.get('augment', '')}` | {_pct(sa_['top1'])} | "
                  f"{_pct(sa_['precision_at_5'])} | {_pct(sa_['precision_at_10'])} | {_pct(sa_['map_at_10'])} | "
                  f"{r['train_augmented_seconds']:.0f} s (views from the cache) |"]
        for mode, what in (("last", "last stage + head"), ("full", "whole backbone + head, CPU")):
            tuned = OUT / f"{mode}_{ds}.json"
            if not tuned.is_file():  # bench/last_stage.py --mode MODE: the backbone too, same split
                continue
            q = json.loads(tuned.read_text())
            sl = q["sql_last"]
            lines.append(f"| {what} (`--mode {mode}`), augmentation `{q['augment']}`, {len(q['epoch_log'])} epochs | "
                         f"{_pct(sl['top1'])} | {_pct(sl['precision_at_5'])} | {_pct(sl['precision_at_10'])} | "
                         f"{_pct(sl['map_at_10'])} | {q['train_seconds']:.0f} s, then {q['embed_seconds']:.0f} s to "
                         f"re-embed {q['embedded']} images |")
        lines += ["",
                  "Loss and head choice (same split, 30 epochs, holdout top1, training time on a busy CPU):", "",
                  "| variant | holdout top1 | seconds |", "|---|---|---|"]
        lines += [f"| {k} | {_pct(v[0])} | {v[1]:.0f} |" for k, v in r["losses"].items()]
        if "tta_frozen" in r:
            lines += ["", f"Test-time augmentation (mean over the 8 dihedral views, 8x compute): frozen "
                      f"{_pct(r['base_top1'])} -> {_pct(r['tta_frozen'])}; head trained with dihedral views "
                      f"{_pct(r['notta_head_aug'])} -> {_pct(r['tta_head_aug'])} with TTA."]
        lines += ["", "Size features (log width, log height, log object area, fill ratio; standardised, appended "
                  "with weight w to the L2-normalised embedding), holdout top1 (frozen / trained head):", "",
                  "| w | frozen | head |", "|---|---|---|"]
        lines += [f"| {w} | {_pct(v[0])} | {_pct(v[1])} |" for w, v in r["size"].items()]
        lines.append("")
    notes = Path(__file__).resolve().parent / "training_notes.md"
    if notes.is_file():  # measured by hand (full mode, one-off view costs): kept beside the JSON
        lines.append(notes.read_text())
    write_section("training", "Training: head fine-tuning, augmentation, TTA and size features", command,
                  "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", nargs="+", metavar="DATASET", help="only write docs/BENCHMARKS.md from bench/out")
    ap.add_argument("--dataset")
    ap.add_argument("--home", type=Path)
    ap.add_argument("--augment", default="dihedral")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--tta", action="store_true")
    a = ap.parse_args()
    if a.write:
        write(a.write, "PLANKTON_HOME=/tmp/train-uvp6_uvpec PYTHONPATH=.:bench .venv/bin/python bench/training.py "
              "--dataset uvp6_uvpec --home /tmp/train-uvp6_uvpec --augment dihedral --tta; same for pwssc_spc with "
              "--augment rotate,flip --copies 1; bench/last_stage.py for the --mode last and full rows (see the notes "
              "below); "
              "then --write uvp6_uvpec pwssc_spc")
        return
    torch.set_num_threads(2)
    run(a.dataset, a.home, a.augment, a.copies, a.tta)


if __name__ == "__main__":
    main()
