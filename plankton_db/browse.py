"""Read queries behind the browse grid and the Similar view: filters, sort orders, paging."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db import retrieval
from plankton_db.errors import InvalidArgument, UnknownImage

STATUSES = ("unlabeled", "predicted", "validated", "dubious", "todo")
SORTS = ("ingested", "random", "size", "confidence", "similarity")
MAX_PAGE = 500
MAX_SIMILAR = 5000


@dataclass(frozen=True)
class BrowseFilters:
    """What the grid shows; every field is optional. Status "todo" means unlabeled or only predicted."""

    status: str | None = None
    taxon: str | None = None  # this taxon and its whole subtree
    sample: str | None = None
    instrument: str | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    depth_min: float | None = None
    depth_max: float | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise InvalidArgument(f"unknown status {self.status!r}; choose one of: {', '.join(STATUSES)}")


@dataclass(frozen=True)
class Item:
    """One thumbnail in a grid."""

    id: int
    taxon: str | None
    status: str | None
    score: float | None
    annotator: str | None
    width: int
    height: int
    sample: str | None
    distance: float | None = None

    def to_json(self) -> dict:
        """A JSON-ready dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Page:
    """One page of a grid and where the next one starts."""

    items: list[Item]
    total: int | None
    offset: int
    next_offset: int | None


_SUBTREE = """(WITH RECURSIVE sub(id) AS (
                  SELECT id FROM taxa WHERE name = :taxon
                  UNION SELECT t.id FROM taxa t JOIN sub ON t.parent_id = sub.id)
               SELECT id FROM sub)"""


def _where(f: BrowseFilters, params: dict) -> str:
    clauses = ["TRUE"]
    if f.status == "unlabeled":
        clauses.append("l.image_id IS NULL")
    elif f.status == "todo":
        clauses.append("(l.image_id IS NULL OR l.status = 'predicted')")
    elif f.status is not None:
        clauses.append("l.status = :status")
        params["status"] = f.status
    if f.taxon is not None:
        clauses.append(f"l.taxon_id IN {_SUBTREE}")
        params["taxon"] = f.taxon
    for col, key, op in (("i.sample", "sample", "="), ("i.instrument", "instrument", "="),
                         ("i.captured_at", "date_from", ">="), ("i.captured_at", "date_to", "<="),
                         ("i.depth_min", "depth_min", ">="), ("i.depth_max", "depth_max", "<=")):
        value = getattr(f, key)
        if value is not None:
            clauses.append(f"{col} {op} :{key}")
            params[key] = value
    return " AND ".join(clauses)


def list_images(session: Session, filters: BrowseFilters = BrowseFilters(), *, sort: str = "ingested",
                offset: int = 0, limit: int = 100, seed: int = 0, reference: int | None = None,
                model_id: int | None = None, count: bool = True) -> Page:
    """One page of images matching the filters, in the chosen order (similarity needs reference and model_id)."""
    if sort not in SORTS:
        raise InvalidArgument(f"unknown sort {sort!r}; choose one of: {', '.join(SORTS)}")
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidArgument(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    if offset < 0:
        raise InvalidArgument(f"offset must be 0 or more, got {offset}")
    params: dict = {"offset": offset, "limit": limit, "seed": seed}
    where = _where(filters, params)
    join, distance = "", "NULL::float8"
    if sort == "similarity":
        if reference is None or model_id is None:
            raise InvalidArgument("sort=similarity needs a reference image (ref=ID)")
        found = session.execute(sa.text("SELECT 1 FROM embeddings WHERE model_id = :m AND image_id = :r"),
                                {"m": model_id, "r": reference}).first()
        if found is None:
            raise UnknownImage(f"image {reference} does not exist or has no embedding")
        join = ("JOIN embeddings e ON e.image_id = i.id AND e.model_id = :model_id "
                "CROSS JOIN (SELECT embedding FROM embeddings WHERE model_id = :model_id AND image_id = :ref) q")
        distance = "e.embedding <=> q.embedding"
        params.update(model_id=model_id, ref=reference)
    # Every order ends with the id so pages never overlap or skip when values tie.
    order = {
        "ingested": "i.id",
        # A hash of id and seed: random, but stable across pages of the same seed.
        "random": "md5(i.id::text || ':' || :seed), i.id",
        "size": "i.width * i.height DESC, i.id",
        "confidence": "l.status = 'predicted' DESC, a.score DESC NULLS LAST, i.id",
        "similarity": f"{distance}, i.id",
    }[sort]
    sql = f"""
        SELECT i.id, t.name, l.status, a.score, a.annotator, i.width, i.height, i.sample, {distance}
          FROM images i
          LEFT JOIN image_labels l ON l.image_id = i.id
          LEFT JOIN taxa t ON t.id = l.taxon_id
          LEFT JOIN annotations a ON a.id = l.annotation_id
          {join}
         WHERE {where}
         ORDER BY {order}
         OFFSET :offset LIMIT :limit
    """
    items = [Item(*r) for r in session.execute(sa.text(sql), params)]
    total = None
    if count:
        total = session.execute(
            sa.text(f"SELECT count(*) FROM images i LEFT JOIN image_labels l ON l.image_id = i.id WHERE {where}"),
            params,
        ).scalar_one()
    more = len(items) == limit and (total is None or offset + limit < total)
    return Page(items, total, offset, offset + limit if more else None)


def image_info(session: Session, image_id: int) -> dict:
    """Everything the detail panel shows about one image; UnknownImage when the id does not exist."""
    row = session.execute(
        sa.text(
            """
            SELECT i.id, i.sha256, i.original_name, i.width, i.height, i.format, i.sample, i.instrument,
                   i.depth_min, i.depth_max, i.captured_at, i.ingested_at, l.taxon, l.status, l.annotator, l.score
              FROM images i LEFT JOIN current_labels l ON l.image_id = i.id
             WHERE i.id = :i
            """
        ),
        {"i": image_id},
    ).mappings().first()
    if row is None:
        raise UnknownImage(f"no image with id {image_id}")
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def image_sha256(session: Session, image_id: int) -> str:
    """The content-store digest of an image; UnknownImage when the id does not exist."""
    sha = session.execute(sa.text("SELECT sha256 FROM images WHERE id = :i"), {"i": image_id}).scalar()
    if sha is None:
        raise UnknownImage(f"no image with id {image_id}")
    return sha


def search_methods() -> tuple[str, ...]:
    """The search methods retrieval offers (just "exact" until it grows more)."""
    return tuple(getattr(retrieval, "METHODS", ("exact",)))


def search_metrics() -> tuple[str, ...]:
    """The distance metrics retrieval offers."""
    return tuple(getattr(retrieval, "METRICS", retrieval.OPERATORS))


def _method_kwargs(fn, method: str) -> dict:
    if method not in search_methods():
        raise InvalidArgument(f"unknown method {method!r}; choose one of: {', '.join(search_methods())}")
    # retrieval gained a `method` argument with the ANN work; pass it only where it is accepted.
    return {"method": method} if "method" in inspect.signature(fn).parameters else {}


def _hits_to_items(session: Session, hits: list) -> list[Item]:
    ids = [h.image_id for h in hits]
    rows = {r[0]: r for r in session.execute(
        sa.text("SELECT i.id, a.score, a.annotator, i.width, i.height, i.sample FROM images i "
                "LEFT JOIN image_labels l ON l.image_id = i.id LEFT JOIN annotations a ON a.id = l.annotation_id "
                "WHERE i.id = ANY(:ids)"), {"ids": ids})}
    return [Item(h.image_id, h.taxon, h.status, rows[h.image_id][1], rows[h.image_id][2], rows[h.image_id][3],
                 rows[h.image_id][4], rows[h.image_id][5], round(float(h.distance), 6)) for h in hits]


def similar(session: Session, model_id: int, *, image_id: int | None = None, vector=None, metric: str = "cosine",
            method: str = "exact", k: int = 100, offset: int = 0, filters: retrieval.Filters = retrieval.Filters(),
            todo: bool = False) -> Page:
    """Neighbours ranked offset..offset+k of a stored image or a vector; `todo` hides human-labelled ones.

    "Load more" asks for the next offset: the ranking is recomputed to offset+k and sliced, so pages
    continue one ordering without server-side cursors.
    """
    if not 1 <= k <= MAX_PAGE:
        raise InvalidArgument(f"k must be between 1 and {MAX_PAGE}, got {k}")
    if not 0 <= offset <= MAX_SIMILAR - k:
        raise InvalidArgument(f"offset must be between 0 and {MAX_SIMILAR - k}, got {offset}")
    fn = retrieval.search_by_id if image_id is not None else retrieval.search_by_vector
    kwargs = _method_kwargs(fn, method)
    depth = offset + k
    # Hiding human labels happens after ranking, so fetch deeper, and deeper again while too few remain.
    fetch = min(MAX_SIMILAR, depth * (3 if todo else 1))
    while True:
        if image_id is not None:
            hits = retrieval.search_by_id(session, model_id, image_id, metric=metric, k=fetch, filters=filters, **kwargs)
        else:
            hits = retrieval.search_by_vector(session, model_id, vector, metric=metric, k=fetch, filters=filters,
                                              **kwargs)
        exhausted = len(hits) < fetch
        if todo:
            hits = [h for h in hits if h.status in (None, "predicted")]
        if len(hits) >= depth or exhausted or fetch >= MAX_SIMILAR:
            break
        fetch = min(MAX_SIMILAR, fetch * 4)
    page = hits[offset:depth]
    more = len(hits) > depth or (len(page) == k and not exhausted)
    return Page(_hits_to_items(session, page), None, offset, depth if more else None)


def with_status(filters: BrowseFilters, status: str | None) -> BrowseFilters:
    """A copy of the filters with another status."""
    return replace(filters, status=status)
