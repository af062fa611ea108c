"""Web latency: the similar API's p95 and a 200-thumbnail browse page, against the database in PLANKTON_HOME.

Run: PLANKTON_HOME=/tmp/web-home-pwssc_spc .venv/bin/python bench/web.py [--queries 200]
Writes the "web" section of docs/BENCHMARKS.md. Baselines from the same run: retrieval.search_by_id
called directly (the floor the API adds to), and the same page with thumbnails already cached.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

# This file is named web.py, so its folder must not shadow the `web` package: put the repository root first.
sys.path[0] = str(Path(__file__).resolve().parent.parent)
from bench._report import write_section  # noqa: E402


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main() -> None:
    """Measure and write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=100)
    args = parser.parse_args()

    from plankton_db.config import Settings
    from plankton_db.embed import require_model
    from plankton_db.retrieval import search_by_id
    from plankton_db.users import add_user
    from web import create_app

    settings = Settings.from_env()
    app = create_app(settings, announce=lambda _: None)
    db = app.extensions["plankton"].db
    with db.Session.begin() as s:
        if not s.execute(sa.text("SELECT 1 FROM users WHERE name = 'bench'")).first():
            add_user(s, "bench", "viewer", "bench-password")
        n_images = s.execute(sa.text("SELECT count(*) FROM images")).scalar_one()
        model = require_model(s, None)
        ids = [r[0] for r in s.execute(sa.text(
            "SELECT image_id FROM embeddings WHERE model_id = :m ORDER BY md5(image_id::text) LIMIT :n"),
            {"m": model.id, "n": args.queries})]
    client = app.test_client()
    csrf = client.get("/login").get_data(as_text=True).split('name="csrf_token" value="')[1].split('"')[0]
    assert client.post("/login", data={"name": "bench", "password": "bench-password", "csrf_token": csrf}).status_code == 302

    for i in ids[:5]:  # warm the pool and the buffer cache
        client.get(f"/api/images/{i}/similar?k={args.k}")
    api_t, direct_t = [], []
    for i in ids:
        t0 = time.perf_counter()
        resp = client.get(f"/api/images/{i}/similar?k={args.k}")
        api_t.append(time.perf_counter() - t0)
        assert resp.status_code == 200, resp.get_data(as_text=True)
        with db.Session() as s:
            t0 = time.perf_counter()
            search_by_id(s, model.id, i, k=args.k)
            direct_t.append(time.perf_counter() - t0)

    def page() -> float:
        t0 = time.perf_counter()
        items = client.get("/api/images?limit=200&sort=random&seed=7").get_json()["items"]
        for item in items:
            assert client.get(item["thumb"]).status_code == 200
        return time.perf_counter() - t0

    shutil.rmtree(settings.home / "thumbs", ignore_errors=True)
    cold = page()
    warm = [page() for _ in range(5)]
    warm_med = float(np.median(warm))

    body = f"""
Database: {n_images} images embedded with `{model.name}` ({model.dim} dims), method exact, metric cosine,
k={args.k}, {len(ids)} random query images; Flask test client in-process (no network), one thread.

| measure | p50 ms | p95 ms |
|---|---|---|
| `GET /api/images/<id>/similar?k={args.k}` | {_p(api_t, 50):.1f} | {_p(api_t, 95):.1f} |
| baseline: `retrieval.search_by_id` called directly | {_p(direct_t, 50):.1f} | {_p(direct_t, 95):.1f} |

API p95 / direct p95 = {_p(api_t, 95) / _p(direct_t, 95):.2f}x (what the web layer adds: auth, JSON, the
per-page label lookup).

200-thumbnail page (`GET /api/images?limit=200` plus 200 `GET /images/<id>/thumb`):
cold cache (thumbnails rendered) {cold * 1000:.0f} ms; warm cache median of 5 {warm_med * 1000:.0f} ms;
cold / warm = {cold / warm_med:.1f}x.

Goal (issue 5): p95 <= 50 ms and a 200-thumbnail page <= 1 s at 100k images. Measured here at
{n_images} images only; the 100k figure has not been measured.
"""
    print(body)
    write_section("web", "Web UI latency", f"PLANKTON_HOME=... .venv/bin/python bench/web.py --queries {args.queries}",
                  body)
    db.dispose()


if __name__ == "__main__":
    main()
