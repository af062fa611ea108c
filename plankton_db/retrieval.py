"""Every read query for similarity search; returns small frozen dataclasses and never commits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.errors import InvalidArgument, UnknownImage

# pgvector operator per metric; the names follow the metric, as pgvector's own functions do.
OPERATORS = {"cosine": "<=>", "l2": "<->"}
MAX_K = 10_000


@dataclass(frozen=True)
class Filters:
    """Restrictions on which images may be returned."""

    taxon: str | None = None  # this taxon and its whole subtree
    sample: str | None = None
    unlabeled: bool = False


@dataclass(frozen=True)
class Hit:
    """One search result."""

    image_id: int
    distance: float
    taxon: str | None
    status: str | None
    original_path: str


def check_search_args(metric: str, k: int) -> str:
    """Validate the metric and k; return the pgvector operator."""
    if metric not in OPERATORS:
        raise InvalidArgument(f"unknown metric {metric!r}; choose one of: {', '.join(OPERATORS)}")
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
    return OPERATORS[metric]


def _filter_sql(filters: Filters, params: dict) -> str:
    clauses = []
    if filters.sample is not None:
        clauses.append("i.sample = :sample")
        params["sample"] = filters.sample
    if filters.unlabeled:
        clauses.append("l.image_id IS NULL")
    if filters.taxon is not None:
        clauses.append(
            """l.taxon_id IN (
                WITH RECURSIVE sub(id) AS (
                    SELECT id FROM taxa WHERE name = :taxon
                    UNION SELECT t.id FROM taxa t JOIN sub ON t.parent_id = sub.id)
                SELECT id FROM sub)"""
        )
        params["taxon"] = filters.taxon
    return "".join(f" AND {c}" for c in clauses)


def _search(session: Session, query_sql: str, params: dict, metric: str, k: int, filters: Filters, exclude: int | None):
    op = check_search_args(metric, k)
    params = dict(params, k=k)
    where = _filter_sql(filters, params)
    if exclude is not None:
        where += " AND e.image_id <> :exclude"
        params["exclude"] = exclude
    sql = f"""
        SELECT e.image_id, e.embedding {op} ({query_sql}) AS distance, l.taxon, l.status, i.original_path
          FROM embeddings e
          JOIN images i ON i.id = e.image_id
          LEFT JOIN current_labels l ON l.image_id = e.image_id
         WHERE e.model_id = :model_id{where}
         ORDER BY e.embedding {op} ({query_sql})
         LIMIT :k
    """
    rows = session.execute(sa.text(sql), params)
    return [Hit(int(r[0]), float(r[1]), r[2], r[3], r[4]) for r in rows]


def search_by_id(
    session: Session, model_id: int, image_id: int, *, metric: str = "cosine", k: int = 20, filters: Filters = Filters()
) -> list[Hit]:
    """The k images nearest to a stored image (the image itself excluded), in one SQL statement."""
    check_search_args(metric, k)
    found = session.execute(
        sa.text("SELECT EXISTS (SELECT 1 FROM images WHERE id = :id), "
                "EXISTS (SELECT 1 FROM embeddings WHERE image_id = :id AND model_id = :m)"),
        {"id": image_id, "m": model_id},
    ).one()
    if not found[0]:
        raise UnknownImage(f"no image with id {image_id}")
    if not found[1]:
        raise UnknownImage(f"image {image_id} has no embedding for this model yet: run `plankton embed`")
    query_sql = "SELECT q.embedding FROM embeddings q WHERE q.model_id = :model_id AND q.image_id = :query_id"
    return _search(session, query_sql, {"model_id": model_id, "query_id": image_id}, metric, k, filters, image_id)


def search_by_vector(
    session: Session, model_id: int, vector: np.ndarray, *, metric: str = "cosine", k: int = 20, filters: Filters = Filters()
) -> list[Hit]:
    """The k images nearest to a vector (for example a file embedded with the model's preprocessing)."""
    vec = np.asarray(vector, dtype=np.float32).ravel()
    if not np.all(np.isfinite(vec)):
        raise InvalidArgument("query vector contains NaN or infinity")
    literal = "[" + ",".join(f"{x:.9g}" for x in vec) + "]"
    return _search(session, "CAST(:qvec AS vector)", {"model_id": model_id, "qvec": literal}, metric, k, filters, None)
