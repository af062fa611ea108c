"""Labeling-efficiency simulation: replay the UI workflow with the data set's own labels as the oracle."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db import browse, labels, suggest
from plankton_db.errors import InvalidArgument

# The cost model (docs/WEB.md): one bulk action (pick a taxon, press Enter) and a glance at each image on screen.
SECONDS_PER_ACTION = 5.0
SECONDS_PER_IMAGE_SEEN = 0.5
# A page of suggestions is reviewed only when its mean confidence reaches this; otherwise the user seeds
# labels from the Similar view of the next unlabeled image, as a person would when suggestions are poor.
MIN_PAGE_CONFIDENCE = 0.8
# Review pages list only predictions at least this confident (the review page's min_score filter).
MIN_ITEM_CONFIDENCE = 0.8
ANNOTATOR = "simulator"


@dataclass(frozen=True)
class SimulationResult:
    """The outcome; the keys of `plankton simulate-labeling --json` are this dataclass's fields."""

    images: int
    actions: int
    images_per_action: float
    simulated_hours: float
    manual_hours: float
    speedup: float
    page_size: int
    similar_actions: int
    accept_actions: int
    correction_actions: int
    images_seen: int

    def to_json(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def _best_review_page(session: Session, page_size: int) -> tuple[str, list[browse.Item]] | None:
    best: tuple[float, str, list[browse.Item]] | None = None
    for group in suggest.groups(session):
        items, _ = suggest.review_page(session, group["taxon"], limit=page_size, min_score=MIN_ITEM_CONFIDENCE)
        if not items:
            continue
        mean = sum(i.score or 0 for i in items) / len(items)
        if best is None or mean > best[0]:
            best = (mean, group["taxon"], items)
    if best is None or best[0] < MIN_PAGE_CONFIDENCE:
        return None
    return best[1], best[2]


def _next_query(session: Session, truth: dict[int, str]) -> int | None:
    offset = 0
    while True:
        page = browse.list_images(session, browse.BrowseFilters(status="todo"), sort="random", offset=offset,
                                  limit=200, count=False)
        for item in page.items:
            if item.id in truth:
                return item.id
        if page.next_offset is None:
            return None
        offset = page.next_offset


def simulate(session: Session, model_id: int, *, page_size: int = 50,
             on_progress: Callable[[int, int], None] | None = None) -> SimulationResult:
    """Hide every validated label, then label everything again through the UI's service functions.

    Runs inside the caller's transaction, which the caller must roll back: hiding labels empties
    `image_labels` (the annotations themselves are never touched).
    """
    if not 1 <= page_size <= 500:
        raise InvalidArgument(f"page size must be between 1 and 500, got {page_size}")
    truth = dict(session.execute(sa.text(
        "SELECT l.image_id, t.name FROM image_labels l JOIN taxa t ON t.id = l.taxon_id "
        "JOIN embeddings e ON e.image_id = l.image_id AND e.model_id = :m WHERE l.status = 'validated'"),
        {"m": model_id}).all())
    if not truth:
        raise InvalidArgument("nothing to simulate: no embedded image has a validated label")
    suggest.build_graph(session, model_id)
    session.execute(sa.text("DELETE FROM image_labels"))

    done: set[int] = set()
    actions = similar_actions = accept_actions = correction_actions = seen = 0
    while len(done) < len(truth):
        suggest.refresh(session, model_id, build=False)
        review = _best_review_page(session, page_size)
        if review is not None:
            taxon, items = review
            seen += len(items)
            right = [i.id for i in items if truth.get(i.id) == taxon]
            wrong = [i.id for i in items if i.id in truth and truth[i.id] != taxon]
            if right:
                labels.accept_predictions(session, right, annotator=ANNOTATOR)
                actions += 1
                accept_actions += 1
            for image_id in wrong:  # each correction is one more action, as the model says
                labels.label_images(session, [image_id], truth[image_id], annotator=ANNOTATOR)
                actions += 1
                correction_actions += 1
            done.update(right, wrong)
        else:
            query = _next_query(session, truth)
            if query is None:
                break
            page = browse.similar(session, model_id, image_id=query, k=page_size, todo=True)
            seen += 1 + len(page.items)
            same = [query] + [i.id for i in page.items if truth.get(i.id) == truth[query] and i.id not in done]
            labels.label_images(session, same, truth[query], annotator=ANNOTATOR)
            actions += 1
            similar_actions += 1
            done.update(same)
        if on_progress:
            on_progress(len(done), len(truth))

    images = len(done)
    hours = (actions * SECONDS_PER_ACTION + seen * SECONDS_PER_IMAGE_SEEN) / 3600
    manual = images * (SECONDS_PER_ACTION + SECONDS_PER_IMAGE_SEEN) / 3600
    return SimulationResult(
        images=images, actions=actions, images_per_action=round(images / actions, 2) if actions else 0.0,
        simulated_hours=round(hours, 3), manual_hours=round(manual, 3),
        speedup=round(manual / hours, 2) if hours else 0.0, page_size=page_size,
        similar_actions=similar_actions, accept_actions=accept_actions, correction_actions=correction_actions,
        images_seen=seen,
    )
