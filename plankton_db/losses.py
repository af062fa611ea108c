"""Metric-learning losses on L2-normalised embeddings, by name; docs/TRAINING.md says which won and why."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class NormFace(torch.nn.Module):
    """Cross-entropy over cosine similarities to learnt class centres (normalised softmax), with label smoothing."""

    def __init__(self, dim: int, n_classes: int, scale: float = 16.0, smoothing: float = 0.1, margin: float = 0.0):
        super().__init__()
        self.centres = torch.nn.Parameter(torch.randn(n_classes, dim) * 0.01)
        self.scale, self.smoothing, self.margin = scale, smoothing, margin

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cos = emb @ F.normalize(self.centres, dim=1).T
        if self.margin:
            # ArcFace: the true class must win by an angle `margin`, which tightens each class's cluster.
            theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
            cos = torch.where(F.one_hot(y, cos.shape[1]).bool(), torch.cos(theta + self.margin), cos)
        return F.cross_entropy(self.scale * cos, y, label_smoothing=self.smoothing)


class SupCon(torch.nn.Module):
    """Supervised contrastive loss (Khosla et al. 2020): pull every same-class pair in the batch together."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, emb: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = emb @ emb.T / self.temperature
        eye = torch.eye(len(y), dtype=torch.bool, device=emb.device)
        logits = logits.masked_fill(eye, -1e9)
        pos = (y[:, None] == y[None, :]) & ~eye
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        has = pos.any(1)
        if not has.any():
            return emb.sum() * 0.0
        return -((log_prob * pos).sum(1)[has] / pos.sum(1)[has]).mean()


LOSSES = ("normface", "arcface", "supcon")


def make(name: str, dim: int, n_classes: int) -> torch.nn.Module:
    """The loss module for a name in LOSSES."""
    if name == "normface":
        return NormFace(dim, n_classes)
    if name == "arcface":
        return NormFace(dim, n_classes, scale=30.0, smoothing=0.0, margin=0.2)
    if name == "supcon":
        return SupCon()
    raise ValueError(f"unknown loss {name!r}")
