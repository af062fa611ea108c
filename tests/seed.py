"""Seed a test database directly with images, labels and vectors (no model run needed)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.embed import write_embeddings
from plankton_db.ingest import add_annotations, ensure_taxa
from plankton_db.models import EmbeddingModel


def seed(
    session: Session,
    vectors: np.ndarray,
    labels: Sequence[str | None] | None = None,
    samples: Sequence[str | None] | None = None,
    model_name: str = "test-model",
) -> tuple[int, list[int]]:
    """Insert one image row per vector (fake sha256), its label and its vector; return (model_id, image ids)."""
    n, dim = vectors.shape
    model = EmbeddingModel(name=model_name, arch="test", weights_sha256="0" * 64, dim=dim, preprocess={})
    session.add(model)
    session.flush()
    ids = []
    for i in range(n):
        sample = samples[i] if samples else None
        ids.append(
            session.execute(
                sa.text(
                    "INSERT INTO images (sha256, original_name, original_path, width, height, format, mode, n_bytes, sample)"
                    " VALUES (:sha, :name, :path, 10, 10, 'PNG', 'L', 1, :sample) RETURNING id"
                ),
                {"sha": f"{model.id:08x}{i:056x}", "name": f"v{i}.png", "path": f"/fake/v{i}.png", "sample": sample},
            ).scalar_one()
        )
    if labels:
        taxa = ensure_taxa(session, [lab for lab in labels if lab])
        pairs = [(ids[i], taxa[lab]) for i, lab in enumerate(labels) if lab]
        add_annotations(session, pairs, status="validated", annotator="test", source="test")
    write_embeddings(session, model.id, ids, vectors.astype(np.float32))
    return model.id, ids
