"""Labeling decisions: bulk actions over append-only annotations, undo by retraction, history, taxa and stats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.errors import InvalidArgument, PlanktonError, UnknownImage
from plankton_db.ingest import ensure_taxa

HUMAN_STATUSES = ("validated", "dubious")
MAX_BATCH = 5000
MAX_TAXON_LENGTH = 200
WEB_SOURCE = "web"


class NothingToUndo(PlanktonError):
    """The user has no labeling action left to undo."""


@dataclass(frozen=True)
class ActionResult:
    """What one bulk labeling action (or its undo) changed."""

    action_id: int
    kind: str
    images: int
    annotations: int


@dataclass(frozen=True)
class HistoryEntry:
    """One annotation of an image, newest first in a history."""

    id: int
    taxon: str
    status: str
    annotator: str
    source: str
    score: float | None
    created_at: datetime
    retracted: bool
    current: bool


def check_image_ids(session: Session, image_ids: Sequence[int]) -> list[int]:
    """Deduplicated ids in the given order; InvalidArgument for a bad list, UnknownImage for missing ids."""
    if not isinstance(image_ids, (list, tuple)) or not image_ids:
        raise InvalidArgument("image_ids must be a non-empty list of image ids")
    if len(image_ids) > MAX_BATCH:
        raise InvalidArgument(f"at most {MAX_BATCH} images per action, got {len(image_ids)}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in image_ids):
        raise InvalidArgument("image_ids must be positive integers")
    ids = list(dict.fromkeys(image_ids))
    found = set(session.execute(sa.text("SELECT id FROM images WHERE id = ANY(:ids)"), {"ids": ids}).scalars())
    missing = [i for i in ids if i not in found]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise UnknownImage(f"no image with id {shown}")
    return ids


def check_taxon_name(name: object) -> str:
    """A stripped taxon name, or InvalidArgument."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument("taxon must be a non-empty string")
    name = name.strip()
    if len(name) > MAX_TAXON_LENGTH:
        raise InvalidArgument(f"taxon names are at most {MAX_TAXON_LENGTH} characters")
    return name


def taxon_id(session: Session, name: str, *, create: bool = False) -> int:
    """The id of an existing taxon (or a new one when `create`); InvalidArgument when unknown."""
    name = check_taxon_name(name)
    tid = session.execute(sa.text("SELECT id FROM taxa WHERE name = :n"), {"n": name}).scalar()
    if tid is None:
        if not create:
            raise InvalidArgument(f"unknown taxon {name!r}; pick one from the list or confirm creating it")
        tid = ensure_taxa(session, [name])[name]
    return tid


def _record(session: Session, pairs: list[tuple[int, int]], status: str, annotator: str, source: str,
            kind: str, scores: list[float | None] | None = None) -> ActionResult:
    """Append one annotation per (image, taxon) pair and one label_actions row tying them together."""
    # In image order, so two actions on overlapping selections lock label rows in the same order (no deadlock).
    order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
    pairs = [pairs[i] for i in order]
    scores = [scores[i] for i in order] if scores else None
    ann_ids = list(session.execute(
        sa.text(
            """
            INSERT INTO annotations (image_id, taxon_id, status, annotator, source, score)
            SELECT p.image_id, p.taxon_id, :status, :annotator, :source, p.score
              FROM unnest(CAST(:image_ids AS bigint[]), CAST(:taxon_ids AS int[]), CAST(:scores AS float8[]))
                   AS p(image_id, taxon_id, score)
            RETURNING id
            """
        ),
        {"image_ids": [p[0] for p in pairs], "taxon_ids": [p[1] for p in pairs],
         "scores": scores or [None] * len(pairs), "status": status, "annotator": annotator, "source": source},
    ).scalars())
    action_id = session.execute(
        sa.text("INSERT INTO label_actions (annotator, kind, annotation_ids) VALUES (:a, :k, :ids) RETURNING id"),
        {"a": annotator, "k": kind, "ids": ann_ids},
    ).scalar_one()
    return ActionResult(action_id, kind, len({p[0] for p in pairs}), len(ann_ids))


def label_images(session: Session, image_ids: Sequence[int], taxon: str, *, status: str = "validated",
                 annotator: str, source: str = WEB_SOURCE, create_taxon: bool = False) -> ActionResult:
    """Give every image the taxon with a human status (validated or dubious), as one undoable action."""
    if status not in HUMAN_STATUSES:
        raise InvalidArgument(f"status must be one of: {', '.join(HUMAN_STATUSES)}")
    ids = check_image_ids(session, image_ids)
    tid = taxon_id(session, taxon, create=create_taxon)
    return _record(session, [(i, tid) for i in ids], status, annotator, source,
                   "label" if status == "validated" else "dubious")


def mark_dubious(session: Session, image_ids: Sequence[int], *, annotator: str, source: str = WEB_SOURCE) -> ActionResult:
    """Mark images dubious, keeping each one's current taxon; images without any label are refused."""
    ids = check_image_ids(session, image_ids)
    current = dict(session.execute(sa.text("SELECT image_id, taxon_id FROM image_labels WHERE image_id = ANY(:ids)"),
                                   {"ids": ids}).all())
    unlabeled = [i for i in ids if i not in current]
    if unlabeled:
        raise InvalidArgument(f"image {unlabeled[0]} has no label to mark dubious; give a taxon")
    return _record(session, [(i, current[i]) for i in ids], "dubious", annotator, source, "dubious")


def accept_predictions(session: Session, image_ids: Sequence[int], *, annotator: str,
                       source: str = WEB_SOURCE) -> ActionResult:
    """Validate each image's current predicted taxon in one action; images without a prediction are refused."""
    ids = check_image_ids(session, image_ids)
    current = dict(session.execute(
        sa.text("SELECT image_id, taxon_id FROM image_labels WHERE image_id = ANY(:ids) AND status = 'predicted'"),
        {"ids": ids}).all())
    missing = [i for i in ids if i not in current]
    if missing:
        raise InvalidArgument(f"image {missing[0]} has no prediction to accept")
    return _record(session, [(i, current[i]) for i in ids], "validated", annotator, source, "accept")


def undo_last(session: Session, annotator: str) -> ActionResult:
    """Retract every annotation of the user's newest action that is not undone yet."""
    row = session.execute(
        sa.text(
            "SELECT id, kind, annotation_ids FROM label_actions WHERE annotator = :a AND undone_at IS NULL "
            "ORDER BY id DESC LIMIT 1 FOR UPDATE"
        ),
        {"a": annotator},
    ).first()
    if row is None:
        raise NothingToUndo(f"{annotator} has no action to undo")
    action_id, kind, ann_ids = row
    # The trigger on annotation_retractions recomputes each image's current label.
    session.execute(
        # Image order again, for the same lock order as labeling (actions stored before that order existed).
        sa.text("INSERT INTO annotation_retractions (annotation_id, action_id, retracted_by) "
                "SELECT a.id, :act, :a FROM annotations a WHERE a.id = ANY(CAST(:ids AS bigint[])) "
                "ORDER BY a.image_id, a.id ON CONFLICT DO NOTHING"),
        {"ids": list(ann_ids), "act": action_id, "a": annotator},
    )
    session.execute(sa.text("UPDATE label_actions SET undone_at = now() WHERE id = :i"), {"i": action_id})
    images = session.execute(sa.text("SELECT count(DISTINCT image_id) FROM annotations WHERE id = ANY(:ids)"),
                             {"ids": list(ann_ids)}).scalar_one()
    return ActionResult(action_id, kind, images, len(ann_ids))


def history(session: Session, image_id: int) -> list[HistoryEntry]:
    """Every annotation of an image, newest first, with whether it was undone and which one is current."""
    if session.execute(sa.text("SELECT 1 FROM images WHERE id = :i"), {"i": image_id}).first() is None:
        raise UnknownImage(f"no image with id {image_id}")
    rows = session.execute(
        sa.text(
            """
            SELECT a.id, t.name, a.status, a.annotator, a.source, a.score, a.created_at,
                   r.annotation_id IS NOT NULL, l.annotation_id IS NOT NULL
              FROM annotations a
              JOIN taxa t ON t.id = a.taxon_id
              LEFT JOIN annotation_retractions r ON r.annotation_id = a.id
              LEFT JOIN image_labels l ON l.annotation_id = a.id
             WHERE a.image_id = :i
             ORDER BY a.created_at DESC, a.id DESC
            """
        ),
        {"i": image_id},
    )
    return [HistoryEntry(*r) for r in rows]


def search_taxa(session: Session, query: str = "", limit: int = 50) -> list[dict]:
    """Taxa whose name contains `query` (prefix matches first), with how many images currently carry each."""
    if not 1 <= limit <= 1000:
        raise InvalidArgument(f"limit must be between 1 and 1000, got {limit}")
    rows = session.execute(
        sa.text(
            """
            SELECT t.id, t.name, p.name, count(l.image_id)
              FROM taxa t
              LEFT JOIN taxa p ON p.id = t.parent_id
              LEFT JOIN image_labels l ON l.taxon_id = t.id
             WHERE t.name ILIKE '%' || :q || '%'
             GROUP BY t.id, t.name, p.name
             ORDER BY t.name NOT ILIKE :q || '%', t.name
             LIMIT :lim
            """
        ),
        {"q": query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_"), "lim": limit},
    )
    return [{"id": r[0], "name": r[1], "parent": r[2], "images": r[3]} for r in rows]


def stats(session: Session) -> dict:
    """Counts per status and per taxon, and each user's human labels per active hour."""
    by_status = dict(session.execute(sa.text("SELECT status, count(*) FROM image_labels GROUP BY status")).all())
    total = session.execute(sa.text("SELECT count(*) FROM images")).scalar_one()
    status = {"unlabeled": total - sum(by_status.values()),
              **{s: by_status.get(s, 0) for s in ("predicted", "validated", "dubious")}}
    taxa = [
        {"taxon": r[0], "predicted": r[1], "validated": r[2], "dubious": r[3]}
        for r in session.execute(sa.text(
            """
            SELECT t.name, count(*) FILTER (WHERE l.status = 'predicted'),
                   count(*) FILTER (WHERE l.status = 'validated'), count(*) FILTER (WHERE l.status = 'dubious')
              FROM image_labels l JOIN taxa t ON t.id = l.taxon_id
             GROUP BY t.name ORDER BY count(*) DESC, t.name
            """))
    ]
    # "Active hours" are the clock hours in which the user labelled anything, so idle days do not dilute the rate.
    users = [
        {"annotator": r[0], "labels": r[1], "active_hours": r[2], "labels_per_hour": round(r[1] / r[2], 1),
         "last": r[3].isoformat()}
        for r in session.execute(sa.text(
            """
            SELECT a.annotator, count(*), count(DISTINCT date_trunc('hour', a.created_at)), max(a.created_at)
              FROM annotations a
             WHERE a.status <> 'predicted'
               AND NOT EXISTS (SELECT 1 FROM annotation_retractions r WHERE r.annotation_id = a.id)
             GROUP BY a.annotator ORDER BY count(*) DESC
            """))
    ]
    return {"images": total, "status": status, "taxa": taxa, "users": users}
