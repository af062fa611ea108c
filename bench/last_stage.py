"""`plankton train --mode last` (or `--mode full`) end to end on one shared data set: train, re-embed every
image, holdout eval.

The same 20% stratified holdout (seed 0) as bench/training.py; the base model is evaluated on exactly the
same queries (`--holdout-of`). Writes bench/out/<mode>_<dataset>.json, which `bench/training.py --write` adds
to the "training" section. Usage:
    PYTHONPATH=.:bench .venv/bin/python bench/last_stage.py --dataset uvp6_uvpec --home /tmp/train-uvp6_uvpec \
        --augment dihedral --epochs 8
    PYTHONPATH=.:bench .venv/bin/python bench/last_stage.py --mode full --dataset uvp6_uvpec \
        --home /tmp/train-uvp6_uvpec --augment rotate,flip --epochs 12
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from plankton_db.config import Settings
from plankton_db.db import connect
from plankton_db.embed import embed_missing, get_model, load_encoder, require_model
from plankton_db.evaluate import evaluate
from plankton_db.modeladmin import delete_model
from plankton_db.store import ContentStore
from plankton_db.train import TrainConfig, train

OUT = Path(__file__).resolve().parent / "out"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--mode", choices=("last", "full"), default="last")
    ap.add_argument("--home", type=Path, required=True)
    ap.add_argument("--augment", default="dihedral")
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None, help="default: the mode's own")
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    a = ap.parse_args()
    torch.set_num_threads(2)
    settings = Settings(home=a.home)
    db = connect(settings)
    store = ContentStore(settings.store)
    name = f"{a.dataset}-{a.mode}"
    cfg = TrainConfig(name=name, mode=a.mode, augment=tuple(a.augment.split(",")), copies=a.copies, epochs=a.epochs,
                      lr=a.lr, device="cpu")
    with db.Session.begin() as s:  # a rerun replaces its own model
        if get_model(s, name) is not None:
            delete_model(s, name)
    epochs: list[dict] = []
    t = time.perf_counter()
    result = train(db.Session, store, cfg, cache_dir=settings.home / "cache",
                   on_epoch=lambda e, loss, sec: (epochs.append({"epoch": e, "loss": loss, "seconds": sec}),
                                                  print(f"epoch {e} loss {loss:.4f} {sec:.0f} s", flush=True)))
    train_s = time.perf_counter() - t
    with db.Session() as s:
        encoder, row = load_encoder(s, name, device="cpu")
    t = time.perf_counter()
    embedded = embed_missing(db.Session, store, encoder, row.id, batch_size=64, workers=1).embedded
    embed_s = time.perf_counter() - t
    with db.Session.begin() as s:
        base = require_model(s, None)
        res = {"dataset": a.dataset, "mode": a.mode, "augment": a.augment, "copies": a.copies, "epochs": result.epochs_done, "lr": a.lr,
               "n_train": result.n_train, "n_holdout": result.n_holdout, "train_seconds": round(train_s, 1),
               "embed_seconds": round(embed_s, 1), "embedded": embedded, "epoch_log": epochs,
               "sql_last": evaluate(s, row.id, name, holdout_of=row.id).to_json(),
               "sql_base": evaluate(s, base.id, base.name, holdout_of=row.id).to_json()}
    db.dispose()
    OUT.mkdir(exist_ok=True)
    (OUT / f"{a.mode}_{a.dataset}.json").write_text(json.dumps(res, indent=1, default=float))
    print(json.dumps({k: res[k] for k in ("train_seconds", "embed_seconds")}
                     | {"top1_last": res["sql_last"]["top1"], "top1_base": res["sql_base"]["top1"]}))


if __name__ == "__main__":
    main()
