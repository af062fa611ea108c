"""Sizing measurements for docs/SCALING.md: bytes per image, and HNSW index size, build time and latency.

Measures at 10k and 100k images (1280-dim vectors, the default model's size) on the embedded PostgreSQL
in a throwaway folder, then writes the "scaling" section of docs/BENCHMARKS.md and bench/out/scaling.json.
Vectors are synthetic (a 200-centre Gaussian mixture, L2-normalised) because 100k real embeddings are not
available here; HNSW build and search costs depend on the dimension and the count far more than on the data.

    .venv/bin/python bench/scaling.py            # 10k and 100k, about 10 minutes on 2 cores
    .venv/bin/python bench/scaling.py --sizes 10000
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section  # noqa: E402

from plankton_db.config import Settings  # noqa: E402
from plankton_db.db import connect, stop_embedded  # noqa: E402
from plankton_db.embed import write_embeddings  # noqa: E402
from plankton_db.models import EmbeddingModel  # noqa: E402

DIM = 1280
BITS = 256
OUT = Path(__file__).resolve().parent / "out" / "scaling.json"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def vectors(n: int, seed: int = 0) -> np.ndarray:
    """A clustered, normalised float32 sample, generated in blocks to keep memory flat."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)
    x = centres[rng.integers(0, 200, n)] + rng.normal(scale=0.6, size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def ecotaxa_like_metadata(i: int) -> dict:
    """An EcoTaxa-sized metadata record: about 50 object_ features plus sample/acq/process text fields."""
    rng = np.random.default_rng(i)
    meta = {f"object_f{j:02d}": float(np.float32(rng.normal() * 100)) for j in range(50)}
    meta.update({"object_id": f"cruise42_st{i // 1000:03d}_{i:07d}", "sample_ship": "Thalassa",
                 "sample_volconc": "13.125", "acq_id": f"acq_{i // 1000:03d}", "acq_cell_type": "200-500",
                 "process_id": f"zooprocess_{i // 1000:03d}", "process_software": "zooprocess_pid_to_ecotaxa_7.23",
                 "img_rank": 0.0})
    return meta


def thumbnail_bytes(limit: int = 300) -> tuple[float, int]:
    """Mean size of 160-px JPEG thumbnails (the web UI's recipe) of real plankton images, if present."""
    from plankton_db.imageio import decode, to_rgb
    from plankton_db.thumbnails import THUMB_SIZE

    files = sorted(p for p in SHARED.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"))
    sizes = []
    for p in files[:: max(1, len(files) // limit)][:limit]:
        img = to_rgb(decode(p.read_bytes()).image)
        img.thumbnail((THUMB_SIZE, THUMB_SIZE))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=85)
        sizes.append(len(buf.getvalue()))
    return (statistics.mean(sizes) if sizes else float("nan")), len(sizes)


def measure(n: int, home: Path) -> dict:
    """Load n images + vectors, build one HNSW halfvec cosine index, and time queries."""
    db = connect(Settings(home=home / f"n{n}"))
    x = vectors(n)
    with db.Session.begin() as s:
        model = EmbeddingModel(name=f"bench-{n}", arch="synthetic", weights_sha256="0" * 64, dim=DIM, preprocess={})
        s.add(model)
        s.flush()
        model_id = model.id
        s.execute(sa.text(
            "INSERT INTO images (sha256, original_name, original_path, width, height, format, mode, n_bytes, sample) "
            "SELECT md5(i::text) || md5((-i)::text), i || '.png', '/bench/' || i || '.png', 100, 80, 'PNG', 'L', "
            "9000, 'st' || (i / 1000) FROM generate_series(1, :n) i"), {"n": n})
        ids = list(s.scalars(sa.text("SELECT id FROM images ORDER BY id")))
    t0 = time.perf_counter()
    for start in range(0, n, 5000):
        with db.Session.begin() as s:
            write_embeddings(s, model_id, ids[start : start + 5000], x[start : start + 5000])
    load_s = time.perf_counter() - t0
    with db.Session.begin() as s:
        # Metadata on 10k rows is enough for a per-row average.
        for start in range(0, min(n, 10_000), 1000):
            s.execute(sa.text("UPDATE images SET metadata = CAST(m.j AS jsonb) FROM unnest(CAST(:ids AS bigint[]), "
                              "CAST(:js AS text[])) AS m(id, j) WHERE images.id = m.id"),
                      {"ids": ids[start : start + 1000],
                       "js": [json.dumps(ecotaxa_like_metadata(i)) for i in range(start, start + 1000)]})
    with db.engine.connect() as conn:
        row = conn.execute(sa.text(
            "SELECT avg(pg_column_size(embedding)), avg(pg_column_size(embedding::halfvec(1280))), "
            f"avg(pg_column_size(binary_quantize(embedding)::bit({BITS}))) FROM (SELECT embedding FROM embeddings "
            "LIMIT 2000) e")).one()
        meta = conn.execute(sa.text("SELECT avg(pg_column_size(metadata)) FROM images WHERE metadata <> '{}'")).scalar()
        heap = conn.execute(sa.text("SELECT pg_total_relation_size('embeddings')")).scalar()
        images_heap = conn.execute(sa.text("SELECT pg_total_relation_size('images')")).scalar()
    result = {"n": n, "load_seconds": round(load_s, 1), "vector_bytes": float(row[0]), "halfvec_bytes": float(row[1]),
              "bit_bytes": float(row[2]), "metadata_bytes": float(meta or 0),
              "embeddings_table_bytes_per_row": heap / n, "images_table_bytes_per_row": images_heap / n}
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(sa.text("SET maintenance_work_mem = '4GB'"))
        conn.execute(sa.text("SET max_parallel_maintenance_workers = 1"))  # 2 cores: leader + one worker
        t0 = time.perf_counter()
        conn.execute(sa.text(f"CREATE INDEX ann_m{model_id}_hnsw_cosine_halfvec ON embeddings USING hnsw "
                             f"((embedding::halfvec({DIM})) halfvec_cosine_ops) WITH (m = 16, ef_construction = 64) "
                             f"WHERE model_id = {model_id}"))
        result["hnsw_build_seconds"] = round(time.perf_counter() - t0, 1)
        result["hnsw_index_bytes"] = conn.execute(sa.text(
            f"SELECT pg_relation_size('ann_m{model_id}_hnsw_cosine_halfvec')")).scalar()
        t0 = time.perf_counter()
        conn.execute(sa.text(f"CREATE INDEX bench_ivf ON embeddings USING ivfflat "
                             f"((embedding::halfvec({DIM})) halfvec_cosine_ops) WITH (lists = {max(1, n // 1000)}) "
                             f"WHERE model_id = {model_id}"))
        result["ivfflat_build_seconds"] = round(time.perf_counter() - t0, 1)
        result["ivfflat_index_bytes"] = conn.execute(sa.text("SELECT pg_relation_size('bench_ivf')")).scalar()
        conn.execute(sa.text("DROP INDEX bench_ivf"))
    # Latency through the SQL function analysts call: HNSW (index present) vs exact (planner told to avoid it).
    qids = ids[:: max(1, n // 50)][:50]
    with db.engine.connect() as conn:
        conn.execute(sa.text("SELECT * FROM similar_images(:i, 20)"), {"i": qids[0]}).all()  # warm the cache
        hnsw = []
        for q in qids:
            t0 = time.perf_counter()
            conn.execute(sa.text("SELECT * FROM similar_images(:i, 20)"), {"i": q}).all()
            hnsw.append(time.perf_counter() - t0)
        conn.execute(sa.text("SET enable_indexscan = off"))
        exact = []
        for q in qids[:5]:
            t0 = time.perf_counter()
            conn.execute(sa.text("SELECT * FROM similar_images(:i, 20)"), {"i": q}).all()
            exact.append(time.perf_counter() - t0)
    result["hnsw_query_ms_p50"] = round(statistics.median(hnsw) * 1000, 2)
    result["exact_query_ms_p50"] = round(statistics.median(exact) * 1000, 1)
    db.dispose()
    stop_embedded(Settings(home=home / f"n{n}"))
    return result


def fit_power(points: list[tuple[int, float]]) -> tuple[float, float]:
    """c, b for t = c * n**b through the two measured points (b = 1 with one point)."""
    (n1, t1), (n2, t2) = points[0], points[-1]
    b = 1.0 if n1 == n2 else float(np.log(t2 / t1) / np.log(n2 / n1))
    return t2 / n2**b, b


def report(results: list[dict], thumb: tuple[float, int]) -> str:
    """The markdown table for docs/BENCHMARKS.md."""
    lines = ["| images | vector B | halfvec B | bit(256) B | metadata B | embeddings table B/row | images table B/row "
             "| HNSW index MiB | HNSW build s | IVFFlat index MiB | IVFFlat build s | HNSW query p50 ms | exact query p50 ms "
             "| exact / HNSW (baseline ratio) |",
             "|" + "---|" * 14]
    for r in results:
        lines.append(f"| {r['n']:,} | {r['vector_bytes']:.0f} | {r['halfvec_bytes']:.0f} | {r['bit_bytes']:.0f} | "
                     f"{r['metadata_bytes']:.0f} | {r['embeddings_table_bytes_per_row']:.0f} | "
                     f"{r['images_table_bytes_per_row']:.0f} | {r['hnsw_index_bytes'] / 2**20:.1f} | "
                     f"{r['hnsw_build_seconds']} | {r['ivfflat_index_bytes'] / 2**20:.1f} | {r['ivfflat_build_seconds']} | "
                     f"{r['hnsw_query_ms_p50']} | {r['exact_query_ms_p50']} | "
                     f"{r['exact_query_ms_p50'] / r['hnsw_query_ms_p50']:.0f}x |")
    lines.append("\nMetadata is written on the first 10,000 rows only, so the images-table figure with EcoTaxa-sized "
                 "metadata on every row is the 10k one. Vectors are stored inline (revision 0001), one 1280-dim row "
                 "per 8 KiB page, hence ~8.2 KB per row for a 5.1 KB vector.")
    lines.append(f"\nThumbnail (160 px JPEG q85, the web UI's recipe): {thumb[0]:.0f} B mean over {thumb[1]} real "
                 "UVP6/SPC images.")
    if len(results) > 1:
        c, b = fit_power([(r["n"], r["hnsw_build_seconds"]) for r in results])
        lines.append(f"\nHNSW build time fits t = {c:.3g} * n^{b:.2f} s through the two points (used for "
                     "the extrapolations in docs/SCALING.md).")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--report-only", action="store_true", help="rewrite the report from bench/out/scaling.json")
    args = ap.parse_args()
    if args.report_only:
        saved = json.loads(OUT.read_text())
        results, thumb = saved["results"], (saved["thumbnail_bytes"], saved["thumbnails"])
        args.sizes = [r["n"] for r in results]
    else:
        with tempfile.TemporaryDirectory(prefix="plankton-scaling-") as tmp:
            results = []
            for n in args.sizes:
                results.append(measure(n, Path(tmp)))
                print(json.dumps(results[-1]), flush=True)
        thumb = thumbnail_bytes()
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(json.dumps({"results": results, "thumbnail_bytes": thumb[0], "thumbnails": thumb[1]}, indent=1))
    write_section("scaling", "Sizing: bytes per image, HNSW/IVFFlat index size, build time and latency",
                  "python bench/scaling.py --sizes " + " ".join(map(str, args.sizes)), report(results, thumb))
    print(report(results, thumb))


if __name__ == "__main__":
    main()
