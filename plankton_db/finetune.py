"""Full fine-tuning: the backbone and the head trained together on augmented images (meant for a GPU)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch

from plankton_db import augment, losses
from plankton_db.embedding import Encoder
from plankton_db.store import ContentStore
from plankton_db.tuned import Head, Tuned


class _Images(torch.utils.data.Dataset):
    """Training images decoded from the store, randomly augmented and preprocessed each time they are read."""

    def __init__(self, store: ContentStore, shas: Sequence[str], y: np.ndarray, names: Sequence[str],
                 encoder: Encoder, seed: int) -> None:
        self.store, self.shas, self.y, self.names = store, list(shas), y, tuple(names)
        self.pp, self.rng = encoder.spec.preprocess, np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.shas)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.store.read_image(self.shas[i])
        x = self.pp(augment.random_view(img, self.names, self.rng))
        if augment.DIHEDRAL in self.names:
            x = augment.dihedral(x[None])[int(self.rng.integers(8))][0]
        return x, int(self.y[i])


def fit_full(encoder: Encoder, store: ContentStore, shas: Sequence[str], y: np.ndarray, base_x: np.ndarray, cfg,
             n_classes: int, on_epoch: Callable[[int, float, float], None] | None = None
             ) -> tuple[Tuned, int, bool, float]:
    """Fine-tune a copy of the encoder's backbone with a new head; returns (model, epochs, interrupted, loss)."""
    from plankton_db.train import _sampler, feature_stats, run_epochs

    torch.manual_seed(cfg.seed)
    backbone = copy.deepcopy(encoder.model).float().to(encoder.device, memory_format=torch.contiguous_format)
    head = Head(base_x.shape[1], cfg.dim, cfg.hidden)
    mean, std = feature_stats(torch.as_tensor(base_x))
    head.mean.copy_(mean)
    head.std.copy_(std)
    model = Tuned(backbone, head, tta=cfg.tta).to(encoder.device)
    criterion = losses.make(cfg.loss, cfg.dim, n_classes).to(encoder.device)
    # The pretrained backbone moves ten times slower than the new head, so early steps cannot wreck it.
    opt = torch.optim.AdamW([{"params": backbone.parameters(), "lr": cfg.lr / 10},
                             {"params": list(head.parameters()) + list(criterion.parameters()), "lr": cfg.lr}],
                            weight_decay=1e-4)
    data = _Images(store, shas, y, augment.parse(cfg.augment), encoder, cfg.seed)
    loader = torch.utils.data.DataLoader(data, batch_size=min(cfg.batch_size, 32), num_workers=0,
                                         sampler=_sampler(y, cfg.balance, cfg.seed))

    def one_epoch() -> float:
        total, count = 0.0, 0
        model.train()
        # BatchNorm statistics stay frozen: small CPU batches would only add noise to them.
        for m in backbone.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        for xb, yb in loader:
            xb, yb = xb.to(encoder.device), yb.to(encoder.device)
            loss = criterion(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(yb), count + len(yb)
        return total / max(count, 1)

    best, done, interrupted, loss_value = run_epochs(cfg.epochs, one_epoch,
                                                     lambda: copy.deepcopy(model.state_dict()), on_epoch)
    model.load_state_dict(best)
    return model.cpu().eval(), done, interrupted, loss_value
