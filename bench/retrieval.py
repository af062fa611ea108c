"""Retrieval benchmark: every search method of plankton-db against FAISS on the same vectors, in one run.

Vectors are real embeddings of the shared plankton images, extended to N by mixing pairs of them and
adding noise; queries are made the same way and are not in the collection. Ground truth is exact cosine
top-10 in numpy. Latency is single-query, through `plankton_db.retrieval.Searcher.search` (the function
the CLI and web use), on one connection; QPS uses 2 clients. Run: `plankton bench --n 100000`.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg
import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from plankton_db.config import Settings  # noqa: E402
from plankton_db.db import connect  # noqa: E402
from plankton_db.embed import write_embeddings  # noqa: E402
from plankton_db.hashstore import build_hash_codes  # noqa: E402
from plankton_db.indexes import DEFAULT_M, build_index, drop_index  # noqa: E402
from plankton_db.retrieval import Filters, Searcher, SearchOptions  # noqa: E402

DEFAULT_SOURCES = [Path("/tmp/ann-uvp6_uvpec"), Path("/tmp/ann-pwssc_spc")]
BENCH_HOME = Path(os.environ.get("PLANKTON_BENCH_HOME", "/tmp/ann-bench"))
K = 10
OUT = REPO / "bench" / "out"


# ----------------------------------------------------------------------------- data


def real_embeddings(sources: list[Path]) -> np.ndarray:
    """Every stored embedding of the default model in the given PLANKTON_HOME folders."""
    parts = []
    for home in sources:
        db = connect(Settings(home=home))
        with db.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT embedding::text FROM embeddings ORDER BY image_id")).scalars().all()
        db.dispose()
        parts.append(np.array([np.array(r.strip("[]").split(","), dtype=np.float32) for r in rows]))
    if not parts or not sum(len(p) for p in parts):
        raise SystemExit("no real embeddings found: ingest and embed the shared data sets first (see docs/ANN.md)")
    return np.vstack(parts)


def extend(real: np.ndarray, n: int, seed: int, dim: int | None = None) -> np.ndarray:
    """n vectors: each a real one moved up to 30% towards another real one, plus 10% per-dimension noise."""
    rng = np.random.default_rng(seed)
    if dim is not None and dim != real.shape[1]:
        real = real[:, rng.permutation(real.shape[1])[:dim]] if dim < real.shape[1] else \
            np.hstack([real, real[:, rng.integers(0, real.shape[1], dim - real.shape[1])]])
    sd = real.std(axis=0)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for s in range(0, n, 20_000):
        m = min(20_000, n - s)
        a, b = real[rng.integers(0, len(real), m)], real[rng.integers(0, len(real), m)]
        lam = rng.uniform(0, 0.3, (m, 1)).astype(np.float32)
        out[s:s + m] = a + lam * (b - a) + rng.normal(size=(m, real.shape[1])).astype(np.float32) * 0.1 * sd
    return np.maximum(out, 0)  # pooled ReLU features stay non-negative


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def truth(xn: np.ndarray, qn: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """Exact cosine top-10 indices per query (optionally among rows where keep is True)."""
    sims = qn @ xn.T
    if keep is not None:
        sims[:, ~keep] = -np.inf
    top = np.argpartition(-sims, K, axis=1)[:, :K]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(sims, top, 1), axis=1), 1)


def recall(found: list[list[int]], gt: np.ndarray) -> float:
    """Mean overlap of each result list with the true top-10."""
    return float(np.mean([len(set(f[:K]) & set(g)) / K for f, g in zip(found, gt, strict=True)]))


# ----------------------------------------------------------------------------- database


def load(db, x: np.ndarray) -> tuple[int, np.ndarray]:
    """Images, one model and its vectors, bulk loaded (indexes are built afterwards); 1% in sample 'rare'."""
    with db.Session.begin() as s:
        ids = np.array(s.execute(sa.text(
            "INSERT INTO images (sha256, original_name, original_path, width, height, format, mode, n_bytes, sample) "
            "SELECT md5(g::text) || md5('b' || g), 'b' || g, '/bench/' || g, 1, 1, 'PNG', 'L', 1, "
            "CASE WHEN g % 100 = 0 THEN 'rare' ELSE 'common' END FROM generate_series(1, :n) g ORDER BY g "
            "RETURNING id"), {"n": len(x)}).scalars().all())
        model_id = s.execute(sa.text(
            "INSERT INTO embedding_models (name, arch, weights_sha256, dim, preprocess) "
            "VALUES ('bench', 'bench', repeat('0', 64), :d, '{}') RETURNING id"), {"d": x.shape[1]}).scalar_one()
    for start in range(0, len(x), 10_000):
        with db.Session.begin() as s:
            write_embeddings(s, model_id, ids[start:start + 10_000], x[start:start + 10_000])
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE embeddings"))
    return model_id, ids


def fresh_database(n: int):
    """A new database on the benchmark's own embedded server."""
    from plankton_db.db import start_embedded

    url = start_embedded(Settings(home=BENCH_HOME))
    name = f"bench_{n}"
    admin = url.replace("postgresql+psycopg://", "postgresql://").replace("/plankton?", "/postgres?")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    return connect(Settings(home=BENCH_HOME, database_url=url.replace("/plankton?", f"/{name}?")))


def time_searches(db, searcher: Searcher, queries: np.ndarray, filters: Filters = Filters(),
                  clients: int = 2) -> tuple[list[list[int]], np.ndarray, float]:
    """Results, per-query latencies (ms) on one connection, and QPS with `clients` connections."""
    found, lat = [], []
    with db.Session() as s:
        for q in queries:  # one untimed pass: index pages in shared_buffers (FAISS is in RAM too), statements prepared
            searcher.search(s, q, k=K, filters=filters)
        for q in queries:
            t = time.perf_counter()
            hits = searcher.search(s, q, k=K, filters=filters)
            lat.append((time.perf_counter() - t) * 1000)
            found.append([h.image_id for h in hits])
    done = [0] * clients

    def client(i: int) -> None:
        with db.Session() as s:
            for q in queries[i::clients]:
                searcher.search(s, q, k=K, filters=filters)
                done[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return found, np.array(lat), sum(done) / (time.perf_counter() - t)


def row(method, metric, params, rec, lat, qps, build_s, index_bytes) -> dict:
    """One result row with the contract keys of `plankton bench --json`."""
    return {"method": method, "metric": metric, "params": params, "recall_at_10": round(rec, 4),
            "p50_ms": round(float(np.percentile(lat, 50)), 3), "p95_ms": round(float(np.percentile(lat, 95)), 3),
            "qps": round(float(qps), 1), "build_s": round(build_s, 2), "index_bytes": int(index_bytes)}


def timed_build(db, model_id, **kw) -> tuple[float, int, str]:
    """Build an index; return (seconds, bytes, name)."""
    t = time.perf_counter()
    with db.Session.begin() as s:
        info = build_index(s, model_id, **kw)
    return time.perf_counter() - t, info.bytes, info.name


def heap_bytes(db) -> int:
    """Bytes of the embeddings table with its TOAST (the vectors themselves)."""
    with db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT pg_total_relation_size('embeddings')")).scalar_one()


# ----------------------------------------------------------------------------- FAISS


def faiss_hnsw(xn: np.ndarray):
    """FAISS's HNSW over unit vectors (inner product), m = 16 and ef_construction = 64 like pgvector's default,
    built on 2 threads; returns (index, build seconds) with FAISS left on one thread for timed queries."""
    import faiss

    faiss.omp_set_num_threads(2)
    t = time.perf_counter()
    index = faiss.IndexHNSWFlat(xn.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 64
    index.add(xn)
    build = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    return index, build


def faiss_single_queries(index, queries: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
    """Top-K ids per query and per-query latencies (ms), one query at a time."""
    found, lat = [], []
    for v in queries:
        t = time.perf_counter()
        _, ix = index.search(v[None, :], K)
        lat.append((time.perf_counter() - t) * 1000)
        found.append(ix[0].tolist())
    return found, np.array(lat)


def faiss_rows(xn: np.ndarray, qn: np.ndarray, gt: np.ndarray, codes: np.ndarray | None, qcodes,
               quick: bool, log) -> list[dict]:
    """FAISS flat, HNSW and binary HNSW on the same vectors, one query at a time on one thread."""
    import faiss

    faiss.omp_set_num_threads(1)
    rows = []

    def measure(index, q, name, metric, params, build_s, nbytes):
        found, lat = faiss_single_queries(index, q)
        faiss.omp_set_num_threads(2)
        t = time.perf_counter()
        index.search(q, K)  # batched over 2 threads: FAISS's own best throughput
        qps = len(q) / (time.perf_counter() - t)
        faiss.omp_set_num_threads(1)
        rows.append(row(name, metric, params, recall(found, gt), lat, qps, build_s, nbytes))
        log(f"  {rows[-1]}")

    flat = faiss.IndexFlatIP(xn.shape[1])
    flat.add(xn)
    measure(flat, qn, "faiss-flat", "cosine", {}, 0.0, xn.nbytes)
    hnsw, build = faiss_hnsw(xn)
    nbytes = faiss.serialize_index(hnsw).nbytes
    for ef in ([40, 160] if quick else [10, 20, 40, 80, 160, 320]):
        hnsw.hnsw.efSearch = ef
        measure(hnsw, qn, "faiss-hnsw", "cosine", {"m": 16, "ef_construction": 64, "ef_search": ef}, build, nbytes)
    if codes is not None:
        t = time.perf_counter()
        bh = faiss.IndexBinaryHNSW(codes.shape[1] * 8, 16)
        bh.add(codes)
        build = time.perf_counter() - t
        for ef in [40, 160]:
            bh.hnsw.efSearch = ef
            measure(bh, qcodes, "faiss-binary-hnsw", "hamming", {"bits": codes.shape[1] * 8, "ef_search": ef}, build,
                    faiss.serialize_index_binary(bh).nbytes)
    return rows


# ----------------------------------------------------------------------------- the run


def run_benchmark(*, n: int, dim: int | None = None, n_queries: int = 200, sources: list[Path] | None = None,
                  quick: bool = False, write: bool = True, log: Callable[[str], None] = print) -> list[dict]:
    """Measure every method at n vectors; return the rows (and write docs/ when asked)."""
    real = real_embeddings(sources or DEFAULT_SOURCES)
    x = extend(real, n, seed=1, dim=dim)
    q = extend(real, n_queries, seed=2, dim=dim)
    xn, qn = normalise(x), normalise(q)
    gt = truth(xn, qn)
    rare = np.arange(1, n + 1) % 100 == 0
    gt_rare = truth(xn, qn, rare)
    log(f"{len(real)} real embeddings -> {n} x {x.shape[1]} vectors, {n_queries} queries")

    load_before = os.getloadavg()[0]
    db = fresh_database(n)
    t = time.perf_counter()
    model_id, ids = load(db, x)
    heap = heap_bytes(db)
    log(f"loaded in {time.perf_counter() - t:.1f} s; heap+toast {heap / 2**20:.0f} MiB")
    gt_ids, gt_rare_ids = ids[gt], ids[gt_rare]
    rows: list[dict] = []

    def add(method, metric, params, searcher, build_s, nbytes, filters=Filters(), gt_=gt_ids, queries=q):
        found, lat, qps = time_searches(db, searcher, queries, filters)
        rows.append(row(method, metric, params, recall(found, gt_), lat, qps, build_s, nbytes))
        log(f"  {rows[-1]}")

    with db.Session() as s:
        exact = Searcher.prepare(s, model_id, method="exact")
    add("exact", "cosine", {}, exact, 0.0, 0, queries=q[:20], gt_=gt_ids[:20])

    for storage in ("halfvec", "vector") if not quick else ("halfvec",):
        log(f"hnsw on {storage}: building")
        build_s, nbytes, name = timed_build(db, model_id, kind="hnsw", metric="cosine", storage=storage)
        log(f"  built in {build_s:.1f} s, {nbytes / 2**20:.1f} MiB")
        for ef in ([40, 100] if quick or storage == "vector" else [10, 20, 40, 100, 200]):
            with db.Session() as s:
                sr = Searcher.prepare(s, model_id, method="hnsw", options=SearchOptions(ef_search=ef))
            add("hnsw", "cosine", {"storage": storage, "m": 16, "ef_construction": 64, "ef_search": ef}, sr,
                build_s, nbytes)
        if storage == "halfvec":
            for ef in (40, 100):
                with db.Session() as s:
                    sr = Searcher.prepare(s, model_id, method="hnsw", options=SearchOptions(ef_search=ef))
                add("hnsw-filtered-1%", "cosine", {"storage": storage, "ef_search": ef, "filter": "sample=rare"},
                    sr, build_s, nbytes, filters=Filters(sample="rare"), gt_=gt_rare_ids)
        with db.Session.begin() as s:
            drop_index(s, name)
    if not quick:  # fewer links per node: cheaper per query, lower recall at the same ef_search
        build_s, nbytes, name = timed_build(db, model_id, kind="hnsw", metric="cosine", m=8)
        log(f"hnsw m=8 built in {build_s:.1f} s")
        for ef in (10, 20, 40):
            with db.Session() as s:
                sr = Searcher.prepare(s, model_id, method="hnsw", options=SearchOptions(ef_search=ef))
            add("hnsw", "cosine", {"storage": "halfvec", "m": 8, "ef_construction": 64, "ef_search": ef}, sr,
                build_s, nbytes)
        with db.Session.begin() as s:
            drop_index(s, name)

    log("ivfflat: building")
    build_s, nbytes, name = timed_build(db, model_id, kind="ivfflat", metric="cosine")
    lists = max(1, n // 1000)
    for probes in ([5, 20] if quick else [1, 5, 10, 20, 40]):
        with db.Session() as s:
            sr = Searcher.prepare(s, model_id, method="ivfflat", options=SearchOptions(probes=probes))
        add("ivfflat", "cosine", {"storage": "halfvec", "lists": lists, "probes": probes}, sr, build_s, nbytes)
    with db.Session.begin() as s:
        drop_index(s, name)

    codes = qcodes = None
    for bits, method in ((256, "itq"),) if quick else ((256, "itq"), (1024, "lsh")):
        log(f"hash {method} {bits}: building")
        t = time.perf_counter()
        with db.Session.begin() as s:
            proj = build_hash_codes(s, model_id, bits, method)
        hash_s = time.perf_counter() - t
        code_bytes = n * (bits // 8 + 4)
        hb, hbytes, _ = timed_build(db, model_id, kind="hnsw", metric="hamming", bits=bits, hash_method=method)
        log(f"  codes in {hash_s:.1f} s, hamming hnsw in {hb:.1f} s ({hbytes / 2**20:.1f} MiB)")
        opts = {"bits": bits, "hash_method": method}
        graph = {"m": DEFAULT_M["hamming"]}
        with db.Session() as s:
            sr = Searcher.prepare(s, model_id, metric="hamming", method="hnsw",
                                  options=SearchOptions(ef_search=100, **opts), load_planes=True)
        add("hnsw", "hamming", dict(opts, **graph, ef_search=100), sr, hash_s + hb, hbytes)
        for c in ([30, 200] if quick else [20, 25, 30, 50, 100, 200]):
            with db.Session() as s:
                sr = Searcher.prepare(s, model_id, method="two-stage", options=SearchOptions(candidates=c, **opts),
                                      load_planes=True)
            add("two-stage", "cosine", dict(opts, **graph, candidates=c), sr, hash_s + hb, hbytes)
        for r in (1, 2, 3):
            with db.Session() as s:
                sr = Searcher.prepare(s, model_id, method="lsh", options=SearchOptions(radius=r, **opts),
                                      load_planes=True)
            add("lsh", "cosine", dict(opts, bucket_bits=proj.bucket_bits, radius=r), sr, hash_s, code_bytes)
        if method == "itq":
            from plankton_db.hashing import pack

            codes, qcodes = pack(sr.codes.bits_of(x)), pack(sr.codes.bits_of(q))
    del x
    gc.collect()
    log("faiss")
    rows += faiss_rows(xn, qn, gt, codes, qcodes, quick, log)
    db.dispose()
    OUT.mkdir(exist_ok=True)
    (OUT / f"retrieval_{n}.json").write_text(json.dumps(
        {"n": n, "dim": int(xn.shape[1]), "queries": n_queries, "heap_bytes": heap, "rows": rows,
         "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}, indent=1))
    if write:
        from retrieval_report import write_report

        write_report()
    return rows


def main() -> None:
    """Command-line entry: python bench/retrieval.py --n N [--dim D] [--json] [--quick]."""
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    rows = run_benchmark(n=a.n, dim=a.dim, n_queries=a.queries, quick=a.quick, write=not a.no_write,
                         log=lambda m: print(m, file=sys.stderr, flush=True))
    if a.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
