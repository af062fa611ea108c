"""The analyst views and SQL functions (sql/views, sql/functions): results, errors, drift, and documentation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from plankton_db.db import REPO_ROOT
from plankton_db.retrieval import search_by_id
from plankton_db.taxonomy import import_taxonomy, parse_taxonomy_csv
from seed import seed

SQL = REPO_ROOT / "sql"
OBJECTS = sorted([*(SQL / "views").glob("*.sql"), *(SQL / "functions").glob("*.sql")])
DOC = REPO_ROOT / "docs" / "SQL.md"


@pytest.fixture
def seeded(db):
    vectors = np.random.default_rng(3).normal(size=(30, 16)).astype(np.float32)
    labels = ["Oithona"] * 8 + ["Oncaea"] * 8 + ["detritus"] * 4 + [None] * 10
    samples = ["st1"] * 15 + ["st2"] * 15
    with db.Session.begin() as s:
        model_id, ids = seed(s, vectors, labels, samples)
        import_taxonomy(s, parse_taxonomy_csv("name,parent\nliving,\nCyclopoida,living\nOithona,Cyclopoida\n"
                                              "Oncaea,Cyclopoida\n"))
    return db, model_id, ids


def test_similar_images_matches_the_core_search(seeded) -> None:
    db, model_id, ids = seeded
    with db.Session() as s:
        for metric in ("cosine", "l2"):
            core = [(h.image_id, round(h.distance, 5)) for h in search_by_id(s, model_id, ids[0], metric=metric, k=7)]
            rows = s.execute(sa.text("SELECT image_id, distance FROM similar_images(:i, 7, :m)"),
                             {"i": ids[0], "m": metric}).all()
            assert [(r[0], round(r[1], 5)) for r in rows] == core


def test_similar_images_uses_an_hnsw_index_when_there_is_one(seeded) -> None:
    db, model_id, ids = seeded
    with db.Session.begin() as s:
        s.execute(sa.text(f"CREATE INDEX ann_m{model_id}_hnsw_cosine_halfvec ON embeddings USING hnsw "
                          f"((embedding::halfvec(16)) halfvec_cosine_ops) WHERE model_id = {model_id}"))
        s.execute(sa.text("SET LOCAL enable_seqscan = off"))  # 30 rows: make the planner prefer the index
        rows = s.execute(sa.text("SELECT image_id FROM similar_images(:i, 25)"), {"i": ids[0]}).all()
        ef = s.execute(sa.text("SHOW hnsw.ef_search")).scalar()
        # Scans counted in this transaction so far: the function's dynamic query went through the index.
        scans = s.execute(sa.text(f"SELECT pg_stat_get_xact_numscans('ann_m{model_id}_hnsw_cosine_halfvec'::regclass)")
                          ).scalar()
    assert len(rows) == 25 and ids[0] not in {r[0] for r in rows}
    assert ef == "40"  # 25 + 1 is under the default, so it was left alone
    assert scans == 1


@pytest.mark.parametrize("call, message", [
    ("similar_images(:i, 5, 'hamming')", "unknown metric 'hamming'; choose cosine or l2"),
    ("similar_images(:i, 0)", "k must be between 1 and 10000, got 0"),
    ("similar_images(-1, 5)", "no image with id -1"),
    ("similar_images(:i, 5, 'cosine', 999)", "image {i} has no embedding for model 999"),
])
def test_similar_images_errors(seeded, call: str, message: str) -> None:
    db, _, ids = seeded
    with db.engine.connect() as conn, pytest.raises(sa.exc.DBAPIError) as exc:
        conn.execute(sa.text(f"SELECT * FROM {call}"), {"i": ids[0]} if ":i" in call else {})
    assert exc.value.orig.diag.message_primary == message.format(i=ids[0])


def test_views(seeded) -> None:
    db, _, ids = seeded
    with db.engine.connect() as conn:
        ab = {(r.sample, r.taxon): r for r in conn.execute(sa.text("SELECT * FROM sample_abundance"))}
        row = conn.execute(sa.text("SELECT * FROM images_with_labels WHERE image_id = :i"), {"i": ids[0]}).one()
        paths = dict(conn.execute(sa.text("SELECT name, path FROM taxon_paths")).all())
        sub = set(conn.execute(sa.text("SELECT t.name FROM taxa t WHERE t.id IN (SELECT taxon_subtree('Cyclopoida'))"))
                  .scalars())
        none = conn.execute(sa.text("SELECT count(*) FROM taxon_subtree('nope')")).scalar()
    assert (ab["st1", "Oithona"].n, ab["st1", "Oncaea"].n, ab["st2", "Oncaea"].n, ab["st2", "detritus"].n) == (8, 7, 1, 4)
    assert ab["st1", "Oithona"].relative_abundance == pytest.approx(8 / 15)
    assert ab["st2", "detritus"].n_labelled_in_sample == 5
    assert (row.taxon, row.status, row.sample, row.annotator) == ("Oithona", "validated", "st1", "test")
    assert paths["Oncaea"] == "living>Cyclopoida>Oncaea" and paths["detritus"] == "detritus"
    assert sub == {"Cyclopoida", "Oithona", "Oncaea"} and none == 0


@pytest.mark.parametrize("path", OBJECTS, ids=lambda p: p.stem)
def test_sql_files_match_the_database(db, path: Path) -> None:
    """Re-running a file changes nothing: the migrations created exactly what the file says."""
    name = path.stem
    text = path.read_text()
    assert text.splitlines()[0] == f"-- name: {name}"
    kind = "view" if path.parent.name == "views" else "function"
    query = ("SELECT pg_get_viewdef(CAST(:n AS regclass))" if kind == "view"
             else "SELECT string_agg(pg_get_functiondef(p.oid), '') FROM pg_proc p WHERE p.proname = :n")
    with db.engine.begin() as conn:
        before = conn.execute(sa.text(query), {"n": name}).scalar()
        conn.connection.driver_connection.execute(text)  # psycopg: no parameters, so '%' stays as it is
        after = conn.execute(sa.text(query), {"n": name}).scalar()
        conn.rollback()
    assert before is not None and before == after, f"{path} differs from what the migrations created"


def test_every_view_function_and_query_is_documented() -> None:
    doc = DOC.read_text()
    names = [p.stem for p in (*OBJECTS, *(SQL / "queries").glob("*.sql"))]
    missing = [n for n in names if not re.search(rf"`{re.escape(n)}[`(]", doc)]
    assert missing == [], f"docs/SQL.md does not mention {missing}"
