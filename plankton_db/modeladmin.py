"""Listing and deleting registered embedding models (what `plankton model list|delete` calls)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.embed import require_model
from plankton_db.errors import InvalidArgument


def list_models(session: Session) -> list[dict]:
    """Every model: id, name, arch, dim, parent, training mode, vectors stored and its recorded holdout top1."""
    rows = session.execute(sa.text(
        """SELECT m.id, m.name, m.arch, m.dim, p.name AS parent, m.params->>'mode' AS mode,
                  (SELECT count(*) FROM embeddings e WHERE e.model_id = m.id) AS embedded,
                  (m.params->'metrics'->>'holdout_top1')::float8 AS holdout_top1, m.created_at
             FROM embedding_models m LEFT JOIN embedding_models p ON p.id = m.parent_id
            ORDER BY m.id""")).mappings().all()
    return [{**r, "created_at": r["created_at"].isoformat()} for r in rows]


def delete_model(session: Session, name: str) -> dict:
    """Delete a model with its vectors, ANN indexes, hash codes, queue jobs and training-image list.

    A model that other models were trained from is refused: their records name it as parent. The checkpoint
    file stays in the content store (it is addressed by content and may be shared).
    """
    from plankton_db.indexes import drop_index, list_indexes

    model = require_model(session, name)
    children = session.execute(sa.text("SELECT name FROM embedding_models WHERE parent_id = :m ORDER BY id"),
                               {"m": model.id}).scalars().all()
    if children:
        raise InvalidArgument(f"model {name!r} is the parent of {', '.join(children)}: delete those first")
    indexes = [drop_index(session, ix.name).name for ix in list_indexes(session, model.id)]
    vectors = session.execute(sa.text("DELETE FROM embeddings WHERE model_id = :m"), {"m": model.id}).rowcount
    # Jobs, hash projections (and their codes), kNN graph rows and training images go by ON DELETE CASCADE.
    session.execute(sa.text("DELETE FROM embedding_models WHERE id = :m"), {"m": model.id})
    return {"model": name, "id": model.id, "embeddings": vectors, "indexes": indexes}
