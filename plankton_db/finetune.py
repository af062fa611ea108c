"""Fine-tuning the backbone: all of it on augmented images (`--mode full`, meant for a GPU), or only its last
stage on cached trunk outputs (`--mode last`, minutes on a CPU)."""

from __future__ import annotations

import copy
import hashlib
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from plankton_db import augment, losses
from plankton_db.embedding import Encoder
from plankton_db.errors import InvalidArgument
from plankton_db.store import ContentStore
from plankton_db.tuned import Head, Tuned

# The last stage is pretrained, the head is new: the stage learns at this fraction of the head's rate.
LAST_STAGE_LR = 0.3
# In full mode the whole pretrained backbone learns at this fraction of the head's rate.
FULL_BACKBONE_LR = 0.1


class _Images(torch.utils.data.Dataset):
    """Training images decoded from the store, randomly augmented and preprocessed each time they are read."""

    def __init__(self, store: ContentStore, shas: Sequence[str], y: np.ndarray, names: Sequence[str],
                 encoder: Encoder, seed: int) -> None:
        self.store, self.shas, self.y, self.names = store, list(shas), y, tuple(names)
        self.pp, self.rng = encoder.spec.preprocess, np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.shas)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        # Augmented at no more than twice the input size: the result is resized to it anyway.
        img = augment.bounded(self.store.read_image(self.shas[i]), 2 * self.pp.size)
        x = self.pp(augment.random_view(img, self.names, self.rng))
        if augment.DIHEDRAL in self.names:
            x = augment.dihedral(x[None])[int(self.rng.integers(8))][0]
        return x, int(self.y[i])


def freeze_batchnorm(module: torch.nn.Module) -> None:
    """Put every BatchNorm back in eval mode after .train(): small CPU batches would only add noise to the
    pretrained running statistics."""
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def fit_full(encoder: Encoder, store: ContentStore, shas: Sequence[str], y: np.ndarray, base_x: np.ndarray, cfg,
             n_classes: int, on_epoch: Callable[[int, float, float], None] | None = None
             ) -> tuple[Tuned, int, bool, float]:
    """Fine-tune a copy of the encoder's backbone with a new head; returns (model, epochs, interrupted, loss)."""
    from plankton_db.train import _sampler, one_cycle, run_epochs

    torch.manual_seed(cfg.seed)
    # channels_last: ~1.5x faster forward + backward on a CPU for these depthwise-separable nets.
    backbone = copy.deepcopy(encoder.model).float().to(encoder.device, memory_format=torch.channels_last)
    head = Head.for_features(torch.as_tensor(base_x), cfg.dim, cfg.hidden)
    model = Tuned(backbone, head, tta=cfg.tta).to(encoder.device)
    criterion = losses.make(cfg.loss, cfg.dim, n_classes).to(encoder.device)
    # The pretrained backbone moves ten times slower than the new head, so early steps cannot wreck it.
    opt = torch.optim.AdamW([{"params": backbone.parameters(), "lr": cfg.lr * FULL_BACKBONE_LR},
                             {"params": list(head.parameters()) + list(criterion.parameters()), "lr": cfg.lr}],
                            weight_decay=1e-4)
    data = _Images(store, shas, y, augment.parse(cfg.augment), encoder, cfg.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=min(cfg.batch_size, 32), num_workers=0,
                                         sampler=_sampler(y, cfg.balance, cfg.seed))
    step = one_cycle(opt, cfg.n_epochs * len(loader))

    def one_epoch() -> float:
        total, count = 0.0, 0
        model.train()
        freeze_batchnorm(backbone)
        for xb, yb in loader:
            xb = xb.to(encoder.device).contiguous(memory_format=torch.channels_last)
            yb = yb.to(encoder.device)
            loss = criterion(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step()
            total, count = total + loss.item() * len(yb), count + len(yb)
        return total / max(count, 1)

    best, done, interrupted, loss_value = run_epochs(cfg.n_epochs, one_epoch,
                                                     lambda: copy.deepcopy(model.state_dict()), on_epoch)
    model.load_state_dict(best)
    return model.cpu().eval(), done, interrupted, loss_value


# ----------------------------------------------------------------------------- last stage on cached features

# Where each timm family splits into a frozen trunk and the last stage that `--mode last` trains, as attribute
# paths applied in order. The trunk is ~90% of the compute, so its outputs are computed once per view and the
# trained stage runs on those cached maps: minutes on a CPU instead of hours.
_SPLITS = {
    "EfficientNet": (("conv_stem", "bn1", "blocks[:-1]"), ("blocks[-1]", "conv_head", "bn2", "global_pool")),
    "ResNet": (("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3"), ("layer4", "global_pool")),
}


def _resolve(model: torch.nn.Module, path: str) -> torch.nn.Module:
    name, _, index = path.partition("[")
    module = getattr(model, name)
    if not index:
        return module
    index = index.rstrip("]")
    return module[:-1] if index == ":-1" else module[int(index)]


def split_backbone(model: torch.nn.Module) -> tuple[torch.nn.Sequential, torch.nn.Sequential]:
    """(trunk, last stage) of a headless timm model; the trunk shares the model's modules, the stage is a copy."""
    kind = type(model).__name__
    if kind not in _SPLITS:
        raise InvalidArgument(f"--mode last supports timm {' and '.join(_SPLITS)} models, not {kind}; "
                              "use --mode head or --mode full")
    trunk_paths, stage_paths = _SPLITS[kind]
    trunk = torch.nn.Sequential(*[_resolve(model, p) for p in trunk_paths])
    stage = copy.deepcopy(torch.nn.Sequential(*[_resolve(model, p) for p in stage_paths]))
    return trunk.eval(), stage


def merge_stage(model: torch.nn.Module, stage: torch.nn.Sequential) -> torch.nn.Module:
    """A copy of the backbone with the trained last stage put back in place."""
    out = copy.deepcopy(model)
    for path, module in zip(_SPLITS[type(model).__name__][1], stage, strict=True):
        name, _, index = path.partition("[")
        if index:
            getattr(out, name)[int(index.rstrip("]"))] = module
        else:
            setattr(out, name, module)
    return out


def trunk_maps(encoder: Encoder, trunk: torch.nn.Module, store: ContentStore, shas: Sequence[str],
               names: Sequence[str], copies: int, seed: int, *, cache_dir: Path | None = None,
               on_progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Trunk outputs (float16) of each image and its augmented views, with the position of the image per row.

    With cache_dir, the maps are kept per image sha256 in one file per base weights, preprocessing, split and
    augmentation recipe, so a second run (other epochs, another name) skips the trunk pass.
    """
    from plankton_db.featcache import BATCH, _views

    recipe = (f"trunk|{type(encoder.model).__name__}|{encoder.spec.weights_sha256}|{encoder.spec.preprocess.to_dict()}|"
              f"{','.join(names)}|{copies}|{seed}")
    path = Path(cache_dir) / f"trunk-{hashlib.sha256(recipe.encode()).hexdigest()[:20]}.pt" if cache_dir else None
    cached: dict[str, torch.Tensor] = {}
    if path is not None and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError, pickle.UnpicklingError):
            cached = {}  # a truncated or foreign file: recompute and overwrite it
    todo = list(dict.fromkeys(s for s in shas if s not in cached))
    for start in range(0, len(todo), BATCH):
        chunk = todo[start : start + BATCH]
        batch, counts = [], []
        for sha in chunk:
            img = store.read_image(sha)
            rng = np.random.default_rng([seed, int(sha[:8], 16)])
            views = [encoder.spec.preprocess(img)[None]] + (_views(encoder, img, names, copies, rng) if names else [])
            batch.extend(views)
            counts.append(len(views))
        x = torch.cat(batch).to(encoder.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = trunk(x).half().cpu()
        for sha, part in zip(chunk, out.split(counts), strict=True):
            cached[sha] = part.clone()  # a view would keep (and save) the whole batch
        if on_progress:
            on_progress(min(start + BATCH, len(todo)), len(todo))
    if path is not None and todo:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(cached, tmp)
        tmp.replace(path)
    parts = [cached[s] for s in shas]
    return torch.cat(parts), np.repeat(np.arange(len(shas)), [len(p) for p in parts])


def available_memory() -> int:
    """Bytes of RAM this process can still use without swapping."""
    import psutil

    return int(psutil.virtual_memory().available)


def _check_memory(encoder: Encoder, trunk: torch.nn.Module, views: int) -> None:
    # Every view's trunk map stays in RAM while the stage trains (float16), plus a float32 batch at a time.
    size = encoder.spec.preprocess.size
    with torch.inference_mode():
        per_view = trunk(torch.zeros(1, 3, size, size, device=encoder.device)).numel() * 2
    need, have = views * per_view, available_memory()
    if need > have // 2:
        raise InvalidArgument(
            f"--mode last would hold {need / 2**30:.1f} GiB of trunk maps in memory ({views} views) but only "
            f"{have / 2**30:.1f} GiB is free; use --limit-per-class N, fewer --copies or no --augment, or --mode head")


def fit_last(encoder: Encoder, store: ContentStore, shas: Sequence[str], y: np.ndarray, base_x: np.ndarray, cfg,
             n_classes: int, on_epoch: Callable[[int, float, float], None] | None = None,
             on_progress: Callable[[int, int], None] | None = None,
             cache_dir: Path | None = None) -> tuple[Tuned, int, bool, float]:
    """Train the backbone's last stage and a new head on cached trunk outputs; returns like fit_full."""
    from plankton_db.train import _class_weights, one_cycle, run_epochs

    torch.manual_seed(cfg.seed)
    backbone = encoder.model.float()
    trunk, stage = split_backbone(backbone)
    names = augment.parse(cfg.augment)
    _check_memory(encoder, trunk, len(shas) * (1 + (7 if names == (augment.DIHEDRAL,) else cfg.copies if names else 0)))
    maps, owner = trunk_maps(encoder, trunk, store, shas, names, cfg.copies, cfg.seed, cache_dir=cache_dir,
                             on_progress=on_progress)
    labels = torch.as_tensor(y[owner])
    head = Head.for_features(torch.as_tensor(base_x), cfg.dim, cfg.hidden)
    stage, head = stage.to(encoder.device), head.to(encoder.device)
    criterion = losses.make(cfg.loss, cfg.dim, n_classes).to(encoder.device)
    opt = torch.optim.AdamW([{"params": stage.parameters(), "lr": cfg.lr * LAST_STAGE_LR},
                             {"params": list(head.parameters()) + list(criterion.parameters()), "lr": cfg.lr}],
                            weight_decay=1e-4)
    batch = min(cfg.batch_size, 64)
    # One cycle (warm-up, then cosine decay) for both groups: without it the stage drifted and holdout top1 fell
    # (docs/TRAINING.md, "last stage").
    step = one_cycle(opt, cfg.n_epochs * -(-len(owner) // batch))
    weights = _class_weights(y[owner], cfg.balance)  # every image has the same number of views
    gen = torch.Generator().manual_seed(cfg.seed)

    def one_epoch() -> float:
        total, count = 0.0, 0
        stage.train()
        head.train()
        freeze_batchnorm(stage)
        order = torch.multinomial(weights, len(owner), replacement=True, generator=gen)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            xb = maps[idx].float().to(encoder.device).contiguous(memory_format=torch.channels_last)
            loss = criterion(head(stage(xb)), labels[idx].to(encoder.device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        return total / max(count, 1)

    best, done, interrupted, loss_value = run_epochs(
        cfg.n_epochs, one_epoch,
        lambda: copy.deepcopy({"stage": stage.state_dict(), "head": head.state_dict()}), on_epoch)
    stage.load_state_dict(best["stage"])
    head.load_state_dict(best["head"])
    model = Tuned(merge_stage(backbone, stage.cpu()), head.cpu(), tta=cfg.tta)
    return model.eval(), done, interrupted, loss_value
