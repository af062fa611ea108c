"""Leave-one-out evaluation on sets whose answer is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_db.errors import InvalidArgument
from plankton_db.evaluate import average_precision, evaluate
from seed import seed


def test_hand_computed_example(db) -> None:
    # Points on a line (L2): a1=0, a2=1, b1=2.4, a3=4, b2=20.
    # Neighbour labels per query, nearest first (the query itself excluded):
    #   a1: a b a b   a2: a b a b   a3: b a a b   b1: a a a b   b2: a b a a
    # top1 = 2/5; p@5 = (2+2+2+1+1)/25; p@10 = (2+2+2+1+1)/50;
    # AP@10 = (1+2/3)/2, (1+2/3)/2, (1/2+2/3)/2, (1/4)/1, (1/2)/1 -> mean 0.6
    xs = [0.0, 1.0, 2.4, 4.0, 20.0]
    labels = ["a", "a", "b", "a", "b"]
    vectors = np.array([[x, 0.0] for x in xs], dtype=np.float32)
    with db.Session.begin() as s:
        model_id, _ = seed(s, vectors, labels)
    with db.Session.begin() as s:
        r = evaluate(s, model_id, "test-model", metric="l2")
    assert (r.n, r.classes, r.skipped_singletons) == (5, 2, 0)
    assert r.top1 == pytest.approx(0.4)
    assert r.precision_at_5 == pytest.approx(0.32)
    assert r.precision_at_10 == pytest.approx(0.16)
    assert r.map_at_10 == pytest.approx(0.6, abs=1e-4)
    assert r.per_class["a"] == {"n": 3, "top1": pytest.approx(0.6667, abs=1e-4), "precision_at_10": pytest.approx(0.2)}
    assert r.per_class["b"] == {"n": 2, "top1": 0.0, "precision_at_10": pytest.approx(0.1)}
    assert set(r.to_json()) >= {"n", "classes", "top1", "precision_at_5", "precision_at_10", "map_at_10", "per_class"}


def test_separated_clusters_score_perfectly_and_singletons_are_skipped(db) -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    vectors = np.vstack([c + rng.normal(scale=0.01, size=(4, 16)) for c in centres] + [rng.normal(size=(1, 16))])
    labels = ["x"] * 4 + ["y"] * 4 + ["z"] * 4 + ["lonely"]
    with db.Session.begin() as s:
        model_id, _ = seed(s, vectors.astype(np.float32), labels)
    with db.Session.begin() as s:
        r = evaluate(s, model_id, "test-model", metric="cosine")
    assert (r.n, r.classes, r.skipped_singletons) == (12, 3, 1)
    assert r.top1 == 1.0 and r.map_at_10 == 1.0
    assert r.precision_at_5 == pytest.approx(3 / 5) and r.precision_at_10 == pytest.approx(3 / 10)


def test_nothing_to_evaluate_is_a_clear_error(db) -> None:
    with db.Session.begin() as s:
        model_id, _ = seed(s, np.eye(3, dtype=np.float32) + 0.1, ["a", "b", None])
    with db.Session.begin() as s, pytest.raises(InvalidArgument, match="nothing to evaluate"):
        evaluate(s, model_id, "test-model")


def test_average_precision_edge_cases() -> None:
    assert average_precision(np.array([True, True]), 2) == 1.0
    assert average_precision(np.array([False, True]), 1) == 0.5
    assert average_precision(np.array([False, False]), 0) == 0.0
