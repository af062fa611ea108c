"""Training a new embedding space from validated labels: a head on cached features, or the whole backbone."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import sqlalchemy as sa
import torch
from sqlalchemy.orm import Session, sessionmaker

from plankton_db import augment, losses
from plankton_db.embed import ModelRow, get_model, load_encoder, require_model, write_embeddings
from plankton_db.embedding import Encoder
from plankton_db.errors import InvalidArgument
from plankton_db.featcache import augmented_features
from plankton_db.models import Embedding, EmbeddingModel, TrainingImage
from plankton_db.store import ContentStore
from plankton_db.tuned import Head, Tuned, signed_sqrt, tuned_checkpoint

MODES = ("head", "last", "full")
# Epochs when --epochs is not given: the last stage over cached maps converges (and then overfits) far sooner than
# a head on 1280-d vectors (docs/TRAINING.md).
DEFAULT_EPOCHS = {"head": 30, "last": 16, "full": 30}


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a run; stored verbatim in the new model's params."""

    base: str | None = None
    name: str | None = None
    mode: str = "head"
    epochs: int | None = None  # None: DEFAULT_EPOCHS[mode]
    augment: tuple[str, ...] = ()
    copies: int = 4
    holdout: float = 0.2
    loss: str = "normface"
    dim: int = 256
    # One hidden layer: +0.039 holdout top1 on pwssc over a linear head, even on uvp6 (docs/TRAINING.md).
    hidden: int = 512
    lr: float = 2e-3
    batch_size: int = 256
    balance: bool = True
    tta: bool = False
    seed: int = 0
    device: str = "auto"
    # full mode on a CPU: at most this many training images per class (0: all).
    limit_per_class: int = 0

    @property
    def n_epochs(self) -> int:
        """The epochs this run trains for."""
        return self.epochs if self.epochs is not None else DEFAULT_EPOCHS[self.mode]

    def check(self) -> None:
        """InvalidArgument for values no run can use."""
        if self.mode not in MODES:
            raise InvalidArgument(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0.0 <= self.holdout < 1.0:
            raise InvalidArgument(f"holdout must be from 0 to below 1, got {self.holdout}")
        if (self.epochs is not None and self.epochs < 1) or self.copies < 1 or self.dim < 2 or self.batch_size < 2:
            raise InvalidArgument("epochs and copies must be at least 1, dim and batch size at least 2")
        if self.loss not in losses.LOSSES:
            raise InvalidArgument(f"loss must be one of {', '.join(losses.LOSSES)}, got {self.loss!r}")
        augment.parse(self.augment)


@dataclass
class TrainResult:
    """What a run produced."""

    model: ModelRow
    epochs_done: int
    interrupted: bool
    seconds: float
    n_train: int
    n_holdout: int
    embedded: int
    metrics: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Labelled:
    """The validated images of a data set with their class index."""

    ids: np.ndarray
    shas: list[str]
    y: np.ndarray
    classes: list[str]


def labelled_images(session: Session) -> Labelled:
    """Every image with a validated current label; InvalidArgument when there are not two classes to learn."""
    rows = session.execute(sa.text(
        "SELECT i.id, i.sha256, t.name FROM image_labels l JOIN images i ON i.id = l.image_id "
        "JOIN taxa t ON t.id = l.taxon_id WHERE l.status = 'validated' ORDER BY i.id")).all()
    if not rows:
        raise InvalidArgument("no images with validated labels to train on: label some first "
                              "(plankton ingest --labels-from-folders, EcoTaxa import or the web UI)")
    classes = sorted({r[2] for r in rows})
    if len(classes) < 2:
        raise InvalidArgument(f"training needs at least two labelled classes; only {classes[0]!r} has validated labels")
    index = {c: i for i, c in enumerate(classes)}
    return Labelled(np.array([r[0] for r in rows], np.int64), [r[1] for r in rows],
                    np.array([index[r[2]] for r in rows], np.int64), classes)


def split(y: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, holdout) positions; every class keeps at least one training image."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(y):
        pos = rng.permutation(np.flatnonzero(y == c))
        k = min(round(len(pos) * holdout), len(pos) - 1)
        held.extend(pos[:k])
        train.extend(pos[k:])
    return np.sort(np.array(train, np.int64)), np.sort(np.array(held, np.int64))


def base_vectors(session: Session, model_id: int) -> dict[int, np.ndarray]:
    """Every stored vector of a model, by image id."""
    rows = session.execute(sa.select(Embedding.image_id, Embedding.embedding).where(Embedding.model_id == model_id))
    return {int(i): np.asarray(v, np.float32) for i, v in rows}


def knn_top1(emb: np.ndarray, y: np.ndarray, queries: np.ndarray) -> float:
    """Cosine nearest-neighbour top1 of the query positions against every other labelled image."""
    if not len(queries):
        return float("nan")
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    sims = e[queries] @ e.T
    sims[np.arange(len(queries)), queries] = -np.inf
    return float((y[sims.argmax(1)] == y[queries]).mean())


def _class_weights(y: np.ndarray, balance: bool) -> torch.Tensor:
    # Balanced: every class is drawn equally often, so rare taxa shape the space as much as the common ones.
    return torch.as_tensor(1.0 / np.bincount(y)[y] if balance else np.ones(len(y)), dtype=torch.double)


def _sampler(y: np.ndarray, balance: bool, seed: int) -> torch.utils.data.Sampler:
    """Draws len(y) training positions per epoch, class-balanced when asked."""
    return torch.utils.data.WeightedRandomSampler(_class_weights(y, balance), len(y),
                                                  generator=torch.Generator().manual_seed(seed))


def fit_head(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, n_classes: int,
             on_epoch: Callable[[int, float, float], None] | None = None) -> tuple[Head, int, bool, float]:
    """Train a Head on features x (n, d) with labels y; returns (head, epochs done, interrupted, last loss)."""
    torch.manual_seed(cfg.seed)
    xt = torch.as_tensor(x)
    head = Head.for_features(xt, cfg.dim, cfg.hidden)
    criterion = losses.make(cfg.loss, cfg.dim, n_classes)
    params = list(head.parameters()) + list(criterion.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    step = one_cycle(opt, cfg.n_epochs * -(-len(y) // cfg.batch_size))
    yt = torch.as_tensor(y)
    # The standardised features are computed once: only the projection is trained, so each step is one matmul.
    z = (signed_sqrt(xt) - head.mean) / head.std
    weights = _class_weights(y, cfg.balance)
    gen = torch.Generator().manual_seed(cfg.seed)

    def one_epoch() -> float:
        total, count = 0.0, 0
        head.train()
        order = torch.multinomial(weights, len(y), replacement=True, generator=gen)
        for start in range(0, len(y), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            if len(batch) < 2:
                continue
            loss = criterion(torch.nn.functional.normalize(head.proj(z[batch]), dim=1), yt[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step()
            total, count = total + loss.item() * len(batch), count + len(batch)
        return total / max(count, 1)

    # One thread: these matmuls are too small to gain from more, and on a busy machine two threads that
    # spin-wait for each other made an epoch 10x slower (measured 12 s vs 1 s on 4,000 pwssc features).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best, done, interrupted, loss_value = run_epochs(
            cfg.n_epochs, one_epoch, lambda: {k: v.clone() for k, v in head.state_dict().items()}, on_epoch)
    finally:
        torch.set_num_threads(threads)
    head.load_state_dict(best)
    return head.eval(), done, interrupted, loss_value


def one_cycle(opt: torch.optim.Optimizer, steps: int) -> Callable[[], None]:
    """One cycle (10% warm-up, then cosine decay) over `steps` optimiser steps, peaking at each group's rate.

    Returns the function to call after each step; it stops at the last step, so an epoch count rounded up
    never runs the schedule past its end. Up to 10 steps (a smoke test) the rates stay constant: torch cannot
    place a warm-up in so few (10 steps raise ZeroDivisionError, fewer end at the final, near-zero rate)."""
    if steps <= 10:
        return lambda: None
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in opt.param_groups],
                                                total_steps=steps, pct_start=0.1)

    def step() -> None:
        if sched.last_epoch + 1 < sched.total_steps:
            sched.step()

    return step


def run_epochs(epochs: int, one_epoch: Callable[[], float], snapshot: Callable[[], dict],
               on_epoch: Callable[[int, float, float], None] | None) -> tuple[dict, int, bool, float]:
    """Run epochs, snapshotting after each whole one; returns (snapshot, epochs done, interrupted, last loss).

    Ctrl-C during an epoch returns the snapshot of the last complete one, so the caller can still register a
    usable model; Ctrl-C before any epoch finished propagates.
    """
    best, done, loss_value, interrupted = snapshot(), 0, float("nan"), False
    try:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            value = one_epoch()
            best, done, loss_value = snapshot(), epoch, value
            if on_epoch:
                on_epoch(epoch, loss_value, time.perf_counter() - start)
    except KeyboardInterrupt:
        if done == 0:
            raise
        interrupted = True
    return best, done, interrupted, loss_value


def _default_name(session: Session, base: ModelRow, cfg: TrainConfig) -> str:
    stem = f"{base.name}-{cfg.mode}"
    n = 1
    while get_model(session, f"{stem}-{n}") is not None:
        n += 1
    return f"{stem}-{n}"


def register_tuned(session: Session, store: ContentStore, base: ModelRow, name: str, model: Tuned,
                   encoder: Encoder, train_ids: np.ndarray, params: dict) -> ModelRow:
    """Store the checkpoint, register the model with its parent and params, and list its training images."""
    if get_model(session, name) is not None:
        raise InvalidArgument(f"a model named {name!r} already exists; choose another --name")
    buf = io.BytesIO()
    torch.save(tuned_checkpoint(base.arch, model, encoder.spec.preprocess, {"base": base.name}), buf)
    sha = store.put(buf.getvalue())
    row = EmbeddingModel(name=name, arch=base.arch, weights_sha256=sha, dim=model.num_features,
                         preprocess=encoder.spec.preprocess.to_dict(), parent_id=base.id,
                         params={**params, "checkpoint": str(store.path_for(sha)), "checkpoint_sha256": sha})
    session.add(row)
    session.flush()
    session.execute(sa.insert(TrainingImage), [{"model_id": row.id, "image_id": int(i)} for i in train_ids])
    return get_model(session, name)  # type: ignore[return-value]


def train(Session: sessionmaker[Session], store: ContentStore, cfg: TrainConfig, *, cache_dir,
          on_message: Callable[[str], None] | None = None,
          on_epoch: Callable[[int, float, float], None] | None = None,
          on_progress: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train, register and (head mode) embed every image the base model has embedded; no transaction stays open."""
    cfg.check()
    say = on_message or (lambda _m: None)
    t0 = time.perf_counter()
    with Session() as s:
        base = require_model(s, cfg.base)
        if base.params.get("checkpoint_sha256") and base.params.get("mode"):
            raise InvalidArgument(f"--base {base.name!r} is itself a fine-tuned model; train from a backbone model")
        data = labelled_images(s)
        vectors = base_vectors(s, base.id)
        encoder, _ = load_encoder(s, base.name, device=cfg.device, store=store)
        name = cfg.name or _default_name(s, base, cfg)
        if get_model(s, name) is not None:
            raise InvalidArgument(f"a model named {name!r} already exists; choose another --name")
    missing = [int(i) for i in data.ids if int(i) not in vectors]
    if missing:
        raise InvalidArgument(f"{len(missing)} of {len(data.ids)} labelled images have no {base.name} embedding; "
                              f"run `plankton embed --model {base.name}` first")
    tr, ho = split(data.y, cfg.holdout, cfg.seed)
    x = np.stack([vectors[int(i)] for i in data.ids])
    say(f"{len(tr)} training and {len(ho)} holdout images over {len(data.classes)} classes; base {base.name}")
    names = augment.parse(cfg.augment)
    if cfg.mode == "head":
        xtr, ytr = x[tr], data.y[tr]
        if names:
            views = augmented_features(encoder, store, [data.shas[i] for i in tr], names, copies=cfg.copies,
                                       seed=cfg.seed, cache_dir=cache_dir, on_progress=on_progress)
            xtr = np.concatenate([xtr, views.reshape(-1, x.shape[1])])
            ytr = np.concatenate([ytr, np.repeat(ytr, views.shape[1])])
            say(f"augmentation {','.join(names)}: {views.shape[1]} extra views per training image")
        head, done, interrupted, loss = fit_head(xtr, ytr, cfg, len(data.classes), on_epoch)
        tuned = Tuned(encoder.model.float(), head, tta=cfg.tta)
    elif cfg.mode == "last":
        from plankton_db.finetune import fit_last

        tr = _limit(tr, data.y, cfg.limit_per_class, cfg.seed)
        tuned, done, interrupted, loss = fit_last(encoder, store, [data.shas[i] for i in tr], data.y[tr], x[tr], cfg,
                                                  len(data.classes), on_epoch, on_progress, cache_dir)
    else:
        from plankton_db.finetune import fit_full

        tr = _limit(tr, data.y, cfg.limit_per_class, cfg.seed)
        tuned, done, interrupted, loss = fit_full(encoder, store, [data.shas[i] for i in tr], data.y[tr], x[tr], cfg,
                                                  len(data.classes), on_epoch)
    seconds = time.perf_counter() - t0
    metrics = {"train_seconds": round(seconds, 1), "final_loss": round(loss, 4), "epochs_done": done}
    new_all = None
    if cfg.mode == "head" and not cfg.tta:
        # The head runs on cached base vectors: the new space costs seconds, not a CNN pass over every image.
        with torch.no_grad():
            new_all = tuned.head(torch.as_tensor(x)).numpy()
        metrics["holdout_top1"] = round(knn_top1(new_all, data.y, ho), 4)
        metrics["base_holdout_top1"] = round(knn_top1(x, data.y, ho), 4)
    params = {"mode": cfg.mode, "base": base.name,
              "hyper": {**asdict(cfg), "epochs": cfg.n_epochs, "augment": list(names)},
              "classes": data.classes, "n_train": len(tr), "n_holdout": len(ho),
              "interrupted": interrupted, "metrics": metrics}
    embedded = 0
    with Session.begin() as s:
        row = register_tuned(s, store, base, name, tuned, encoder, data.ids[tr], params)
        if new_all is not None:
            others = [i for i in vectors if i not in set(data.ids.tolist())]
            embedded = write_embeddings(s, row.id, data.ids.tolist(), new_all)
            if others:
                with torch.no_grad():
                    rest = tuned.head(torch.as_tensor(np.stack([vectors[i] for i in others]))).numpy()
                embedded += write_embeddings(s, row.id, others, rest)
    return TrainResult(row, done, interrupted, time.perf_counter() - t0, len(tr), len(ho), embedded, metrics)


def _limit(positions: np.ndarray, y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """At most `per_class` training positions per class (all when 0)."""
    if per_class <= 0:
        return positions
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(positions[y[positions] == c])[:per_class] for c in np.unique(y[positions])]
    return np.sort(np.concatenate(keep))

