"""HNSW links per node (m = 16 or 8), float and Hamming graphs, measured with bare statements.

What `indexes.DEFAULT_M` rests on. On the benchmark's vectors (bench/retrieval.py: real embeddings extended to
N, queries not in the collection), for each m it builds the halfvec cosine HNSW index and the ITQ-256 Hamming
HNSW index through `build_index`, then times one prepared, binary statement per query from psycopg (no
`Searcher`, no label joins), so only the index scan and the re-ranking differ:
- float: `ORDER BY embedding::halfvec(D) <=> q LIMIT 10` at ef_search 10, 20, 40;
- Hamming shortlist alone: `ORDER BY code::bit(256) <~> code(q) LIMIT c`;
- two-stage: that shortlist joined back to `embeddings` and re-ranked by full cosine, as the search does.
Then float HNSW and two-stage through `Searcher.search` (what the CLI and web run), interleaved query by query.
FAISS HNSW (m = 16) runs on the same vectors as the reference. Recall@10 is against exact cosine.
Usage: python bench/graph_m.py --n 100000   (writes bench/out/graph_m_N.json and prints a markdown table)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import psycopg
from pgvector.psycopg import register_vector

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval import (
    DEFAULT_SOURCES,
    OUT,
    extend,
    faiss_hnsw,
    faiss_single_queries,
    fresh_database,
    load,
    normalise,
    real_embeddings,
    recall,
    truth,
)

from plankton_db.hashing import bool_bitstring
from plankton_db.hashstore import build_hash_codes, load_projection
from plankton_db.indexes import build_index

K = 10


def _timed(conn, sql: str, args: list[tuple], pos: dict[int, int]) -> tuple[list[list[int]], np.ndarray]:
    for a in args[:20]:  # untimed pass: plans prepared, pages in shared buffers
        conn.execute(sql, a, prepare=True, binary=True).fetchall()
    found, lat = [], []
    for a in args:
        t = time.perf_counter()
        rows = conn.execute(sql, a, prepare=True, binary=True).fetchall()
        lat.append((time.perf_counter() - t) * 1000)
        found.append([pos[r[0]] for r in rows])
    return found, np.array(lat)


def interleaved(db, model_id: int, queries: np.ndarray, pos: dict[int, int], add) -> None:
    """Float HNSW against two-stage through `Searcher.search`, the query order interleaved, so that drift on a
    shared machine hits every method alike. The Hamming graph keeps m = 8 (its default); the float graph is
    built with 16, then with 8."""
    from plankton_db.retrieval import Searcher, SearchOptions

    methods = [("hnsw", SearchOptions(ef_search=10)), ("hnsw", SearchOptions(ef_search=20)),
               ("two-stage", SearchOptions(candidates=20, bits=256, hash_method="itq")),
               ("two-stage", SearchOptions(candidates=30, bits=256, hash_method="itq"))]
    for m in (16, 8):
        with db.Session.begin() as s:
            build_index(s, model_id, kind="hnsw", metric="cosine", m=m)
        with db.Session() as s:
            searchers = [Searcher.prepare(s, model_id, method=name, options=o, load_planes=name == "two-stage")
                         for name, o in methods]
            for sr in searchers:  # untimed pass
                for v in queries[:20]:
                    sr.search(s, v, k=K)
            found: list[list[list[int]]] = [[] for _ in methods]
            lat: list[list[float]] = [[] for _ in methods]
            for j, v in enumerate(queries):
                for i in np.roll(np.arange(len(methods)), j):  # each method goes first as often as the others
                    t = time.perf_counter()
                    hits = searchers[i].search(s, v, k=K)
                    lat[i].append((time.perf_counter() - t) * 1000)
                    found[i].append([pos[h.image_id] for h in hits])
        for (name, o), f, t in zip(methods, found, lat, strict=True):
            kind, knob, value = ((f"Searcher hnsw (float m={m})", "ef_search", o.ef_search) if name == "hnsw" else
                                 (f"Searcher two-stage (float m={m} present)", "c", o.candidates))
            add(kind, 8 if name == "two-stage" else m, knob, value, f, np.array(t), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=200)
    a = p.parse_args()
    real = real_embeddings(DEFAULT_SOURCES)
    x, q = extend(real, a.n, seed=1), extend(real, a.queries, seed=2)
    xn, qn = normalise(x), normalise(q)
    gt = truth(xn, qn)
    db = fresh_database(a.n)
    model_id, ids = load(db, x)
    pos = {int(i): j for j, i in enumerate(ids)}
    dim = x.shape[1]
    rows: list[dict] = []

    def add(kind: str, m: int | None, knob: str, value: int, found, lat, build_s: float | None) -> None:
        first = [f[:K] for f in found]
        rows.append({"kind": kind, "m": m, knob: value, "recall_at_10": round(recall(first, gt), 4),
                     "p50_ms": round(float(np.percentile(lat, 50)), 3),
                     "p95_ms": round(float(np.percentile(lat, 95)), 3),
                     "build_s": None if build_s is None else round(build_s, 1)})
        print(json.dumps(rows[-1]), flush=True)

    with db.Session.begin() as s:
        proj = build_hash_codes(s, model_id, 256, "itq")
        planes = load_projection(s, proj)
    codes = [bool_bitstring(b) for b in planes.bits_of(q)]
    url = db.engine.url.render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://")
    conn = psycopg.connect(url, autocommit=True)
    register_vector(conn)
    for m in (16, 8):
        t = time.perf_counter()
        with db.Session.begin() as s:
            build_index(s, model_id, kind="hnsw", metric="cosine", m=m)
        float_s = time.perf_counter() - t
        t = time.perf_counter()
        with db.Session.begin() as s:
            build_index(s, model_id, kind="hnsw", metric="hamming", bits=256, hash_method="itq", m=m)
        ham_s = time.perf_counter() - t
        sql = (f"SELECT image_id FROM embeddings WHERE model_id = {model_id} "
               f"ORDER BY embedding::halfvec({dim}) <=> %s::halfvec({dim}) LIMIT {K}")
        for ef in (10, 20, 40):
            conn.execute(f"SET hnsw.ef_search = {ef}")
            add("float hnsw", m, "ef_search", ef, *_timed(conn, sql, [(v,) for v in qn], pos), float_s)
        short = (f"SELECT c.image_id FROM hash_codes c WHERE c.projection_id = {proj.id} "
                 "ORDER BY c.code::bit(256) <~> %s::bit(256) LIMIT {c}")
        for c in (20, 40):
            conn.execute(f"SET hnsw.ef_search = {c}")
            add("hamming shortlist", m, "c", c, *_timed(conn, short.format(c=c), [(code,) for code in codes], pos),
                ham_s)
            two = (f"SELECT e.image_id FROM ({short.format(c=c)}) s JOIN embeddings e ON e.model_id = {model_id} "
                   f"AND e.image_id = s.image_id ORDER BY e.embedding <=> %s LIMIT {K}")
            add("two-stage", m, "c", c, *_timed(conn, two, list(zip(codes, qn, strict=True)), pos), ham_s)
    conn.close()
    interleaved(db, model_id, q, pos, add)  # raw queries: the stored vectors and their codes are raw too
    db.dispose()

    index, _ = faiss_hnsw(xn)
    for ef in (10, 20, 40):
        index.hnsw.efSearch = ef
        add("faiss hnsw", 16, "ef_search", ef, *faiss_single_queries(index, qn), None)

    OUT.mkdir(exist_ok=True)
    (OUT / f"graph_m_{a.n}.json").write_text(json.dumps({"n": a.n, "dim": dim, "queries": a.queries, "rows": rows},
                                                         indent=1))
    print("\n| kind | m | ef_search / c | recall@10 | p50 ms | p95 ms | build s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        knob = r.get("ef_search", r.get("c"))
        print(f"| {r['kind']} | {r['m']} | {knob} | {r['recall_at_10']:.3f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} | "
              f"{'-' if r['build_s'] is None else r['build_s']} |")


if __name__ == "__main__":
    main()
