"""Annotations are append-only, and the current label follows the documented rule."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from plankton_db.ingest import add_annotations, ensure_taxa
from seed import seed


@pytest.fixture
def one_image(db):
    with db.Session.begin() as s:
        _, ids = seed(s, np.ones((1, 4), np.float32))
        taxa = ensure_taxa(s, ["Oithona", "Oncaea", "detritus"])
    return db, ids[0], taxa


def _label(db, image_id: int) -> tuple[str, str]:
    with db.engine.connect() as conn:
        return tuple(conn.execute(sa.text("SELECT taxon, status FROM current_labels WHERE image_id = :i"),
                                  {"i": image_id}).one())


def test_history_cannot_be_changed(one_image) -> None:
    db, image_id, taxa = one_image
    with db.Session.begin() as s:
        add_annotations(s, [(image_id, taxa["Oithona"])], status="validated", annotator="ann", source="ui")
    for stmt in ("UPDATE annotations SET status = 'dubious'", "DELETE FROM annotations",
                 "TRUNCATE annotations CASCADE"):
        with pytest.raises(sa.exc.DBAPIError, match="annotations are append-only"):
            with db.Session.begin() as s:
                s.execute(sa.text(stmt))
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM annotations")).scalar_one() == 1


def test_human_decision_outranks_later_prediction_and_newest_human_wins(one_image) -> None:
    db, image_id, taxa = one_image
    with db.Session.begin() as s:
        add_annotations(s, [(image_id, taxa["detritus"])], status="predicted", annotator="knn", source="knn")
    assert _label(db, image_id) == ("detritus", "predicted")
    with db.Session.begin() as s:
        add_annotations(s, [(image_id, taxa["Oithona"])], status="validated", annotator="ann", source="ui")
    assert _label(db, image_id) == ("Oithona", "validated")
    with db.Session.begin() as s:  # a later prediction does not override a person
        add_annotations(s, [(image_id, taxa["Oncaea"])], status="predicted", annotator="knn", source="knn")
    assert _label(db, image_id) == ("Oithona", "validated")
    with db.Session.begin() as s:  # a later person does
        add_annotations(s, [(image_id, taxa["Oncaea"])], status="dubious", annotator="ann2", source="ui")
    assert _label(db, image_id) == ("Oncaea", "dubious")
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM annotations")).scalar_one() == 4


def test_bad_status_is_refused_by_the_schema(one_image) -> None:
    db, image_id, taxa = one_image
    with pytest.raises(sa.exc.IntegrityError, match="ck_annotations_status"):
        with db.Session.begin() as s:
            add_annotations(s, [(image_id, taxa["Oithona"])], status="maybe", annotator="x", source="ui")
