"""Where one HNSW query's time goes: server-side index scan, one round trip, and the project's search function.

Runs on the database `bench/retrieval.py --n N` leaves behind (its vectors stay; its indexes are dropped, so
this builds the halfvec HNSW index again if needed). Prints one JSON object and appends a table to the
"retrieval" section's notes in bench/out/query_path_N.json. Usage: python bench/query_path.py --n 100000
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from retrieval import BENCH_HOME, DEFAULT_SOURCES, OUT, extend, real_embeddings

from plankton_db.config import Settings
from plankton_db.db import connect, start_embedded
from plankton_db.indexes import build_index, list_indexes
from plankton_db.pg import raw_connection
from plankton_db.retrieval import Searcher, SearchOptions


def _percentiles(values: list[float]) -> dict:
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p95_ms": round(float(np.percentile(values, 95)), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--ef", type=int, default=20)
    p.add_argument("--queries", type=int, default=200)
    a = p.parse_args()
    url = start_embedded(Settings(home=BENCH_HOME))
    db = connect(Settings(home=BENCH_HOME, database_url=url.replace("/plankton?", f"/bench_{a.n}?")))
    queries = extend(real_embeddings(DEFAULT_SOURCES), a.queries, seed=2)
    with db.Session() as s:
        model_id = s.execute(sa.text("SELECT id FROM embedding_models WHERE name = 'bench'")).scalar_one()
        dim = s.execute(sa.text("SELECT dim FROM embedding_models WHERE id = :m"), {"m": model_id}).scalar_one()
        if not any(i.kind == "hnsw" and i.metric == "cosine" for i in list_indexes(s)):
            with db.Session.begin() as b:
                build_index(b, model_id, kind="hnsw", metric="cosine", storage="halfvec")
        searcher = Searcher.prepare(s, model_id, method="hnsw", options=SearchOptions(ef_search=a.ef))
        conn = raw_connection(s)
        bare = (f"SELECT e.image_id FROM embeddings e WHERE e.model_id = {model_id} "
                f"ORDER BY e.embedding::halfvec({dim}) <=> %(vec)s::halfvec({dim}) LIMIT 10")

        def timed(fn) -> dict:
            for q in queries:  # untimed pass: pages cached, statements prepared
                fn(q)
            lat = []
            for q in queries:
                t = time.perf_counter()
                fn(q)
                lat.append((time.perf_counter() - t) * 1000)
            return _percentiles(lat)

        conn.execute(f"SET hnsw.ef_search = {a.ef}")
        for q in queries:  # the index was maybe just built: bring its pages into shared_buffers first
            conn.execute(bare, {"vec": q}).fetchall()
        server = []
        for q in queries:
            plan = "\n".join(r[0] for r in conn.execute("EXPLAIN (ANALYZE, TIMING OFF) " + bare, {"vec": q}))
            server.append(float(re.search(r"Execution Time: ([\d.]+)", plan).group(1)))
        result = {
            "n": a.n, "ef_search": a.ef,
            "server_index_scan": _percentiles(server),
            "round_trip_select_1": timed(lambda q: conn.execute("SELECT 1", prepare=True).fetchall()),
            "bare_index_query": timed(lambda q: conn.execute(bare.replace("%(vec)s", "%(vec)b"), {"vec": q},
                                                             prepare=True, binary=True).fetchall()),
            "searcher_search": timed(lambda q: searcher.search(s, q, k=10)),
        }
    db.dispose()
    OUT.mkdir(exist_ok=True)
    (OUT / f"query_path_{a.n}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
