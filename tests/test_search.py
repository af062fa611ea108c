"""Search: one SQL query whose answers equal a numpy brute force over the same vectors."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_db.errors import InvalidArgument, UnknownImage
from plankton_db.retrieval import Filters, search_by_id, search_by_vector
from seed import seed


def _brute(vectors: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    if metric == "cosine":
        v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        return 1.0 - v @ (q / np.linalg.norm(q))
    return np.linalg.norm(vectors - q, axis=1)


@pytest.fixture
def seeded(db):
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(300, 48)).astype(np.float32)
    labels = [["alpha", "beta", "gamma", None][i % 4] for i in range(300)]
    samples = ["s1" if i < 150 else "s2" for i in range(300)]
    with db.Session.begin() as s:
        model_id, ids = seed(s, vectors, labels, samples)
    return db, model_id, ids, vectors, labels, samples


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_search_by_id_matches_numpy(seeded, metric: str) -> None:
    db, model_id, ids, vectors, _, _ = seeded
    for qi in (0, 17, 299):
        with db.Session() as s:
            hits = search_by_id(s, model_id, ids[qi], metric=metric, k=20)
        d = _brute(vectors, vectors[qi], metric)
        d[qi] = np.inf  # the query image itself is excluded
        order = np.argsort(d)[:20]
        assert [h.image_id for h in hits] == [ids[i] for i in order]
        np.testing.assert_allclose([h.distance for h in hits], d[order], rtol=1e-4, atol=1e-5)


def test_search_by_vector_matches_numpy(seeded) -> None:
    db, model_id, ids, vectors, _, _ = seeded
    q = np.random.default_rng(1).normal(size=48).astype(np.float32)
    with db.Session() as s:
        hits = search_by_vector(s, model_id, q, metric="cosine", k=10)
    order = np.argsort(_brute(vectors, q, "cosine"))[:10]
    assert [h.image_id for h in hits] == [ids[i] for i in order]


def test_filters_restrict_and_still_rank_exactly(seeded) -> None:
    db, model_id, ids, vectors, labels, samples = seeded
    d = _brute(vectors, vectors[5], "cosine")
    d[5] = np.inf
    cases = {
        Filters(taxon="beta"): [lab == "beta" for lab in labels],
        Filters(sample="s2"): [s == "s2" for s in samples],
        Filters(unlabeled=True): [lab is None for lab in labels],
        Filters(taxon="alpha", sample="s1"): [lab == "alpha" and s == "s1" for lab, s in zip(labels, samples)],
    }
    for filters, keep in cases.items():
        with db.Session() as s:
            hits = search_by_id(s, model_id, ids[5], k=15, filters=filters)
        dd = np.where(np.array(keep), d, np.inf)
        order = [i for i in np.argsort(dd)[:15] if np.isfinite(dd[i])]
        assert [h.image_id for h in hits] == [ids[i] for i in order], filters


def test_taxon_filter_includes_the_subtree(seeded) -> None:
    import sqlalchemy as sa

    db, model_id, ids, _, labels, _ = seeded
    with db.Session.begin() as s:
        s.execute(sa.text("INSERT INTO taxa (name) VALUES ('Crustacea')"))
        s.execute(sa.text("UPDATE taxa SET parent_id = (SELECT id FROM taxa WHERE name = 'Crustacea') "
                          "WHERE name IN ('alpha', 'beta')"))
    with db.Session() as s:
        hits = search_by_id(s, model_id, ids[0], k=300, filters=Filters(taxon="Crustacea"))
    assert {h.taxon for h in hits} == {"alpha", "beta"}
    assert len(hits) == sum(lab in ("alpha", "beta") for lab in labels) - 1  # minus the query (alpha)


def test_bad_arguments_are_clear(seeded) -> None:
    db, model_id, ids, _, _, _ = seeded
    with db.Session() as s:
        with pytest.raises(UnknownImage, match="no image with id 999999"):
            search_by_id(s, model_id, 999999)
        with pytest.raises(InvalidArgument, match="unknown metric 'manhattan'"):
            search_by_id(s, model_id, ids[0], metric="manhattan")
        with pytest.raises(InvalidArgument, match="k must be between 1 and"):
            search_by_id(s, model_id, ids[0], k=0)
        with pytest.raises(InvalidArgument, match="NaN"):
            search_by_vector(s, model_id, np.full(48, np.nan))
