"""In-database ANN: hash codes, indexes, and every search method checked against exact search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from conftest import drop_database, new_database
from plankton_db import hashing
from plankton_db.config import Settings
from plankton_db.db import connect
from plankton_db.embed import write_embeddings
from plankton_db.errors import InvalidArgument
from plankton_db.hashstore import build_hash_codes, find_projection, list_projections, load_projection
from plankton_db.indexes import build_index, drop_index, list_indexes
from plankton_db.retrieval import Filters, Searcher, SearchOptions, search_by_id, search_by_vector

N, DIM, K = 3000, 64, 10


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    # Clustered, all-positive vectors: like CNN features, and with real neighbourhoods for ANN to find.
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(30, DIM))) * 2
    return (centres[rng.integers(0, 30, n)] + rng.normal(scale=0.5, size=(n, DIM)) + 1).astype(np.float32)


def _seed(session, n: int, name: str = "ann-model") -> tuple[int, list[int], np.ndarray]:
    # One row in 100 belongs to sample 'rare': the 1% filter.
    ids = list(session.execute(sa.text(
        "INSERT INTO images (sha256, original_name, original_path, width, height, format, mode, n_bytes, sample) "
        "SELECT md5(:name || g) || md5(g::text), 'v' || g, '/fake/v' || g, 10, 10, 'PNG', 'L', 1, "
        "CASE WHEN g % 100 = 0 THEN 'rare' ELSE 'common' END FROM generate_series(1, :n) g ORDER BY g RETURNING id"
    ), {"n": n, "name": name}).scalars())
    model_id = session.execute(sa.text(
        "INSERT INTO embedding_models (name, arch, weights_sha256, dim, preprocess) "
        "VALUES (:name, 'test', repeat('0', 64), :dim, '{}') RETURNING id"), {"name": name, "dim": DIM}).scalar_one()
    vectors = _vectors(n)
    write_embeddings(session, model_id, ids, vectors)
    return model_id, ids, vectors


@pytest.fixture(scope="module")
def ann(admin_url, template_url, tmp_path_factory):
    """One seeded database with codes and every index, shared by the read-only tests of this module."""
    name, url = new_database(admin_url)
    db = connect(Settings(home=tmp_path_factory.mktemp("ann-home"), database_url=url))
    with db.Session.begin() as s:
        model_id, ids, vectors = _seed(s, N)
        build_hash_codes(s, model_id, 64, "itq")
        build_hash_codes(s, model_id, 64, "lsh")
        # One ANN index per expression: hnsw on halfvec casts, ivfflat on vector casts; Hamming hnsw on the
        # ITQ codes and ivfflat on the LSH codes.
        for metric in ("cosine", "l2"):
            build_index(s, model_id, kind="hnsw", metric=metric)
            build_index(s, model_id, kind="ivfflat", metric=metric, storage="vector")
        build_index(s, model_id, kind="hnsw", metric="hamming", hash_method="itq")
        build_index(s, model_id, kind="ivfflat", metric="hamming", hash_method="lsh")
    yield db, model_id, ids, vectors
    db.dispose()
    drop_database(admin_url, name)


def _queries(vectors: np.ndarray, n: int = 15) -> np.ndarray:
    rng = np.random.default_rng(5)
    return vectors[rng.choice(len(vectors), n, replace=False)] + rng.normal(scale=0.3, size=(n, DIM)).astype(np.float32)


def _recall(db, model_id, queries, metric, method, options=None, filters=Filters()) -> float:
    found = 0
    with db.Session() as s:
        s.execute(sa.text("SET enable_seqscan = off"))  # small table: make the planner take the ANN path
        for q in queries:
            exact = {h.image_id for h in search_by_vector(s, model_id, q, metric=metric, k=K, filters=filters)}
            hits = search_by_vector(s, model_id, q, metric=metric, k=K, filters=filters, method=method,
                                    options=options)
            assert len(hits) == K
            assert [h.distance for h in hits] == sorted(h.distance for h in hits)
            found += len(exact & {h.image_id for h in hits})
    return found / (K * len(queries))


@pytest.mark.parametrize(("metric", "method", "options", "floor"), [
    ("cosine", "hnsw", SearchOptions(ef_search=100), 0.95),
    ("l2", "hnsw", None, 0.9),
    # 3000 rows -> 3 lists, all probed: exact
    ("cosine", "ivfflat", SearchOptions(probes=3), 1.0),
    ("l2", "ivfflat", SearchOptions(probes=3), 1.0),
    ("cosine", "lsh", SearchOptions(radius=hashing.default_bucket_bits(N), hash_method="lsh"), 1.0),  # all buckets
    ("cosine", "lsh", SearchOptions(hash_method="lsh"), 0.6),
    ("cosine", "lsh", SearchOptions(hash_method="itq"), 0.6),
    # A shortlist of everything through the (approximate) Hamming HNSW graph: nearly exact
    ("cosine", "two-stage", SearchOptions(candidates=N, hash_method="itq"), 0.97),
    ("cosine", "two-stage", SearchOptions(candidates=300, hash_method="itq"), 0.9),
    ("l2", "two-stage", SearchOptions(candidates=300, hash_method="itq"), 0.9),
    ("cosine", "two-stage", SearchOptions(candidates=300, probes=2, hash_method="lsh"), 0.8),  # ivfflat shortlist
])
def test_method_agrees_with_exact_search(ann, metric, method, options, floor) -> None:
    db, model_id, _, vectors = ann
    assert _recall(db, model_id, _queries(vectors), metric, method, options) >= floor


def test_hamming_index_scans_agree_with_exact_hamming(ann) -> None:
    db, model_id, ids, _ = ann
    with db.Session() as s:
        s.execute(sa.text("SET enable_seqscan = off"))
        for qid in ids[:5]:
            exact = search_by_id(s, model_id, qid, metric="hamming", k=K, options=SearchOptions(hash_method="itq"))
            assert all(h.distance == int(h.distance) for h in exact)
            hnsw = search_by_id(s, model_id, qid, metric="hamming", k=K, method="hnsw",
                                options=SearchOptions(ef_search=200, hash_method="itq"))
            exact_lsh = search_by_id(s, model_id, qid, metric="hamming", k=K, options=SearchOptions(hash_method="lsh"))
            ivf = search_by_id(s, model_id, qid, metric="hamming", k=K, method="ivfflat",
                               options=SearchOptions(probes=3, hash_method="lsh"))
            # Ties in Hamming distance may be ordered differently, so compare the distances.
            assert [h.distance for h in hnsw] == [h.distance for h in exact]
            assert [h.distance for h in ivf] == [h.distance for h in exact_lsh]


def test_filtered_hnsw_search_keeping_one_percent_returns_k_without_fallback(ann) -> None:
    db, model_id, _, vectors = ann
    rare = Filters(sample="rare")
    with db.Session() as s:
        # At 3000 rows the planner rightly prefers an exact scan of the 30 'rare' rows; forbid sorting so
        # that this test exercises the index scan the planner picks on large tables.
        s.execute(sa.text("SET enable_seqscan = off"))
        s.execute(sa.text("SET enable_sort = off"))
        searcher = Searcher.prepare(s, model_id, method="hnsw", options=SearchOptions(ef_search=40))
        sql = searcher._sql_for(K, rare, False)[0]
        plan = "\n".join(s.execute(sa.text("EXPLAIN " + sql.replace("%(vec)b", "(SELECT embedding FROM embeddings "
                                                                     "LIMIT 1)").replace("%(sample)s", "'rare'")))
                         .scalars())
        assert "Index Scan using ann_m" in plan, plan
        found = 0
        for q in _queries(vectors):
            exact = {h.image_id for h in search_by_vector(s, model_id, q, k=K, filters=rare)}
            hits = searcher.search(s, q, k=K, filters=rare)
            assert len(hits) == K
            found += len(exact & {h.image_id for h in hits})
        assert searcher.fallbacks == 0
        assert found / (K * 15) >= 0.9
        samples = s.execute(sa.text("SELECT DISTINCT sample FROM images WHERE id = ANY(:ids)"),
                            {"ids": [h.image_id for h in hits]}).scalars().all()
        assert samples == ["rare"]
        # Without iterative scans, ef_search = 40 candidates hold about 0.4 'rare' rows: too few, so the
        # searcher falls back to an exact scan to still return k.
        plain = Searcher.prepare(s, model_id, method="hnsw", options=SearchOptions(ef_search=40, iterative=False))
        assert len(plain.search(s, vectors[0], k=K, filters=rare)) == K
        assert plain.fallbacks == 1


def test_search_time_settings_are_set_local_by_the_statement_itself(ann) -> None:
    db, model_id, _, vectors = ann
    with db.Session() as s:
        default = s.execute(sa.text("SHOW hnsw.ef_search")).scalar_one()
        searcher = Searcher.prepare(s, model_id, method="hnsw", options=SearchOptions(ef_search=77))
        assert len(searcher.search(s, vectors[0], k=K)) == K
        # The statement called set_config(..., true): the value holds for this transaction only.
        assert s.execute(sa.text("SHOW hnsw.ef_search")).scalar_one() == "77"
        s.rollback()
        assert s.execute(sa.text("SHOW hnsw.ef_search")).scalar_one() == default


def test_codes_are_the_same_in_numpy_sql_and_the_trigger(ann) -> None:
    db, model_id, ids, vectors = ann
    with db.Session.begin() as s:
        proj = find_projection(s, model_id, 64, "itq")
        planes = load_projection(s, proj)
        stored = dict(s.execute(sa.text("SELECT image_id, code::text FROM hash_codes WHERE projection_id = :p"),
                                {"p": proj.id}).all())
        in_sql = dict(s.execute(sa.text(
            "SELECT image_id, hash_code(:p, embedding)::text FROM embeddings WHERE model_id = :m"),
            {"p": proj.id, "m": model_id}).all())
        buckets = dict(s.execute(sa.text("SELECT image_id, bucket FROM hash_codes WHERE projection_id = :p"),
                                 {"p": proj.id}).all())
        # A new embedding gets its code from the trigger, whoever writes it.
        new_id = s.execute(sa.text(
            "INSERT INTO images (sha256, original_name, original_path, width, height, format, mode, n_bytes) "
            "VALUES (repeat('f', 64), 'new', '/fake/new', 1, 1, 'PNG', 'L', 1) RETURNING id")).scalar_one()
        write_embeddings(s, model_id, [new_id], vectors[:1] * 1.01)
        new_code = s.execute(sa.text("SELECT code::text FROM hash_codes WHERE projection_id = :p AND image_id = :i"),
                             {"p": proj.id, "i": new_id}).scalar_one()
    bits = planes.bits_of(vectors)
    numpy_codes = ["".join("1" if b else "0" for b in row) for row in bits]
    assert len(stored) == N and proj.codes == N
    agree = np.mean([stored[i] == numpy_codes[j] == in_sql[i] for j, i in enumerate(ids)])
    assert agree > 0.99  # float32 sums in a different order may flip a bit that lies on a plane
    assert [buckets[i] for i in ids] == hashing.bucket_key(bits, proj.bucket_bits).tolist()
    assert new_code == "".join("1" if b else "0" for b in planes.bits_of(vectors[:1] * 1.01)[0])


def test_indexes_are_listed_with_sizes_replaced_and_dropped(db) -> None:
    with db.Session.begin() as s:
        model_id, _, _ = _seed(s, 400)
        build_hash_codes(s, model_id, 64, "itq")
        build_index(s, model_id, kind="hnsw", metric="cosine")
        build_index(s, model_id, kind="ivfflat", metric="cosine", storage="vector", lists=2)
        build_index(s, model_id, kind="hnsw", metric="l2", m=8, ef_construction=32)
        build_index(s, model_id, kind="hnsw", metric="hamming")
        found = {(i.kind, i.metric, i.storage): i for i in list_indexes(s, model_id)}
        assert set(found) == {("hnsw", "cosine", "halfvec"), ("ivfflat", "cosine", "vector"),
                              ("hnsw", "l2", "halfvec"), ("hnsw", "hamming", "bit")}
        assert all(i.bytes >= 8192 and i.valid for i in found.values())
        assert found[("hnsw", "l2", "halfvec")].options == {"m": "8", "ef_construction": "32"}
        assert found[("ivfflat", "cosine", "vector")].options == {"lists": "2"}
        assert found[("hnsw", "hamming", "bit")].bits == 64
        # Default links per node: 16 for float graphs, 8 for Hamming (a re-ranked first stage).
        assert found[("hnsw", "cosine", "halfvec")].options["m"] == "16"
        assert found[("hnsw", "hamming", "bit")].options["m"] == "8"
        # Another kind over the same expression replaces the first, so searches never run on the wrong one.
        build_index(s, model_id, kind="ivfflat", metric="hamming", lists=2)
        assert {(i.kind, i.metric) for i in list_indexes(s, model_id) if i.metric == "hamming"} == {
            ("ivfflat", "hamming")}
        drop_index(s, found[("hnsw", "cosine", "halfvec")].name)
        assert len(list_indexes(s, model_id)) == 3
        with pytest.raises(InvalidArgument, match=r"^no hnsw index for cosine on this model: run "
                                                  r"`plankton index build --kind hnsw --metric cosine` first$"):
            Searcher.prepare(s, model_id, method="hnsw")
        # Rebuilding a projection drops the Hamming indexes that were built on its codes.
        build_hash_codes(s, model_id, 64, "itq")
        assert {i.metric for i in list_indexes(s, model_id)} == {"cosine", "l2"}
        assert len(list_projections(s, model_id)) == 1


def test_bad_input_is_refused_with_one_clear_line(db) -> None:
    with db.Session.begin() as s:
        empty = s.execute(sa.text(
            "INSERT INTO embedding_models (name, arch, weights_sha256, dim, preprocess) "
            "VALUES ('empty', 'test', repeat('0', 64), 8, '{}') RETURNING id")).scalar_one()
        with pytest.raises(InvalidArgument, match="^model 'empty' has no embeddings: run `plankton embed` "
                                                  "before building an index$"):
            build_index(s, empty, kind="hnsw", metric="cosine")
        with pytest.raises(InvalidArgument, match="^this model has no embeddings yet: run `plankton embed` first$"):
            build_hash_codes(s, empty, 64, "lsh")
        with pytest.raises(InvalidArgument, match="^bits must be a multiple of 8 between 8 and 4096, got 100$"):
            build_hash_codes(s, empty, 100, "lsh")
        with pytest.raises(InvalidArgument, match="^unknown index kind 'diskann'; choose one of: hnsw, ivfflat$"):
            build_index(s, empty, kind="diskann", metric="cosine")
        model_id, ids, _ = _seed(s, 50, name="small")
        with pytest.raises(InvalidArgument, match="^unknown method 'annoy'; choose one of: exact, hnsw, ivfflat, "
                                                  "lsh, two-stage$"):
            search_by_id(s, model_id, ids[0], method="annoy")
        with pytest.raises(InvalidArgument, match="^method two-stage re-ranks full vectors by cosine or l2; "
                                                  "use --metric cosine or l2$"):
            search_by_id(s, model_id, ids[0], metric="hamming", method="two-stage")
        with pytest.raises(InvalidArgument, match=r"^no hash codes for this model: run `plankton hash build "
                                                  r"--bits 256` first$"):
            search_by_id(s, model_id, ids[0], metric="hamming")
        with pytest.raises(InvalidArgument, match="^ef_search must be between 1 and 1000, got 0$"):
            search_by_id(s, model_id, ids[0], method="hnsw", options=SearchOptions(ef_search=0))
        with pytest.raises(InvalidArgument, match=f"^query vector has 3 dimensions but the model has {DIM}$"):
            search_by_vector(s, model_id, np.ones(3))
        with pytest.raises(InvalidArgument, match=r"^no ANN index named 'nope' \(see `plankton index list`\)$"):
            drop_index(s, "nope")


# ----------------------------------------------------------------------------- the CLI


def _cli(env: dict[str, str], *args: str):
    from typer.testing import CliRunner

    from plankton_db.cli import app

    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_cli_hash_index_search_and_eval(db, cli_env) -> None:
    with db.Session.begin() as s:
        _, ids, _ = _seed(s, 300, name="tf_efficientnet_lite0")
        # Two labelled classes, so eval has something to measure.
        s.execute(sa.text("INSERT INTO taxa (name) VALUES ('a'), ('b')"))
        s.execute(sa.text(
            "INSERT INTO annotations (image_id, taxon_id, status, annotator, source) "
            "SELECT i.id, (SELECT t.id FROM taxa t WHERE t.name = CASE WHEN i.id % 2 = 0 THEN 'a' ELSE 'b' END), "
            "'validated', 't', 't' FROM images i"))
    r = _cli(cli_env, "hash", "build", "--bits", "64", "--method", "lsh", "--bucket-bits", "4")
    assert r.exit_code == 0, r.output
    assert "300 codes of 64 bits (lsh) for tf_efficientnet_lite0; bucket key b = 4 bits" in r.output
    r = _cli(cli_env, "index", "build", "--kind", "hnsw", "--metric", "hamming", "--bits", "64")
    assert r.exit_code == 0 and "built ann_p1_hnsw_hamming: hnsw hamming on bit" in r.output, r.output
    r = _cli(cli_env, "index", "list", "--json")
    assert [(i["kind"], i["metric"], i["bits"]) for i in json.loads(r.stdout)] == [("hnsw", "hamming", 64)]
    for method in ("two-stage", "lsh"):
        r = _cli(cli_env, "search", "--id", str(ids[0]), "-k", "5", "--method", method, "--radius", "1", "--json")
        assert r.exit_code == 0, r.output
        out = json.loads(r.stdout)
        assert out["method"] == method and len(out["hits"]) == 5
    r = _cli(cli_env, "eval", "--metric", "hamming", "--bits", "64", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["metric"] == "hamming" and json.loads(r.stdout)["n"] == 300
    r = _cli(cli_env, "index", "drop", "ann_p1_hnsw_hamming")
    assert r.exit_code == 0 and "dropped ann_p1_hnsw_hamming" in r.output


@pytest.mark.parametrize(("args", "message"), [
    (("hash", "build", "--bits", "100"), "error: bits must be a multiple of 8 between 8 and 4096, got 100"),
    (("hash", "build", "--method", "pq"), "error: unknown hash method 'pq'; choose one of: lsh, itq"),
    (("index", "build", "--kind", "hnsw"), "error: no embeddings yet: run `plankton embed` first"),
    (("index", "drop", "nope"), "error: no ANN index named 'nope' (see `plankton index list`)"),
    (("search", "--id", "1", "--method", "annoy"),
     "error: unknown method 'annoy'; choose one of: exact, hnsw, ivfflat, lsh, two-stage"),
    (("search", "--id", "1", "--metric", "hamming", "--method", "lsh"),
     "error: method lsh re-ranks full vectors by cosine or l2; use --metric cosine or l2"),
])
def test_cli_bad_input_is_one_line(cli_env, args, message) -> None:
    r = _cli(cli_env, *args)
    assert r.exit_code == 1
    assert r.output.strip() == message
