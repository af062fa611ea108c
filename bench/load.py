"""Load and soak against `plankton serve` on loopback: wrk on the similar API and on browsing, then mixed labeling.

Run:  .venv/bin/python bench/load.py [--images 100000] [--home /tmp/plankton-load] [--soak 600]
Builds (once) a database of synthetic images with clustered 1280-dim vectors and an HNSW index, written
directly with COPY (no image files: the JSON API is measured, thumbnails are in the "web" section), serves
it with waitress (8 threads, as `plankton serve`), and runs bounded wrk runs that stop by themselves.
Writes the "load" and "soak" sections of docs/BENCHMARKS.md. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench._report import write_section  # noqa: E402

DIM = 1280
TAXA = [f"taxon_{i:02d}" for i in range(12)]
LUA = r"""
local n, token, kind = %d, "%s", "%s"
math.randomseed(os.time())
wrk.headers["Authorization"] = "Bearer " .. token
request = function()
  local path
  if kind == "similar" then
    path = "/api/images/" .. math.random(1, n) .. "/similar?k=20&method=hnsw"
  else
    local r = math.random(1, 3)
    if r == 1 then path = "/api/images?limit=100&offset=" .. math.random(0, n - 100)
    elseif r == 2 then path = "/api/images?limit=100&status=todo&sort=random&seed=" .. math.random(1, 1000)
    else path = "/api/images?limit=100&taxon=taxon_0" .. math.random(0, 9) .. "&offset=" .. math.random(0, 500) end
  end
  return wrk.format("GET", path)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "seconds": %%.3f, "p50": %%.3f, "p95": %%.3f, "p99": %%.3f, ' ..
    '"max": %%.3f, "connect": %%d, "read": %%d, "write": %%d, "status": %%d, "timeout": %%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(95) / 1e3,
    latency:percentile(99) / 1e3, latency.max / 1e3, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def build(db, n: int, log) -> None:
    """Images, 30% validated labels, clustered vectors and an HNSW index, unless already there."""
    import sqlalchemy as sa

    from plankton_db.indexes import build_index
    from plankton_db.ingest import add_annotations, ensure_taxa
    from plankton_db.models import EmbeddingModel
    from plankton_db.pg import raw_connection

    with db.Session.begin() as s:
        have = s.execute(sa.text("SELECT count(*) FROM images")).scalar_one()
        if have == n:
            return
        if have:
            raise SystemExit(f"{db.settings.home} holds {have} images, not {n}: use another --home")
        t0 = time.perf_counter()
        conn = raw_connection(s)
        with conn.cursor().copy("COPY images (sha256, original_name, original_path, width, height, format, mode, "
                                "n_bytes, sample, instrument) FROM STDIN") as copy:
            for i in range(n):
                copy.write_row((f"{i:064x}", f"img_{i}.png", f"/synthetic/img_{i}.png", 80 + i % 50, 60 + i % 70,
                                "PNG", "L", 2000, f"station_{i % 20:02d}", "synthetic"))
        model = EmbeddingModel(name="bench-1280", arch="synthetic", weights_sha256="0" * 64, dim=DIM, preprocess={})
        s.add(model)
        s.flush()
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(200, DIM)).astype(np.float32)
        with conn.cursor().copy("COPY embeddings (model_id, image_id, embedding) FROM STDIN WITH (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "int8", "vector"])
            for start in range(0, n, 5000):
                ids = np.arange(start + 1, min(n, start + 5000) + 1)
                vecs = centres[ids % 200] + 0.4 * rng.normal(size=(len(ids), DIM)).astype(np.float32)
                for i, v in zip(ids, vecs):
                    copy.write_row((model.id, int(i), v))
        taxa = ensure_taxa(s, TAXA)
        labelled = [(i, taxa[TAXA[i % 10]]) for i in range(1, n + 1) if i % 10 < 3]
        add_annotations(s, labelled, status="validated", annotator="seed", source="bench")
        log(f"rows, vectors and {len(labelled)} labels in {time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        build_index(s, model.id, kind="hnsw", metric="cosine")
        log(f"HNSW index in {time.perf_counter() - t0:.0f} s")
    with db.engine.begin() as c:
        c.execute(sa.text("ANALYZE"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def connections(db) -> int:
    import sqlalchemy as sa

    with db.engine.connect() as c:
        return c.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                 "AND pid <> pg_backend_pid()")).scalar_one()


def wrk(port: int, n: int, token: str, kind: str, clients: int, seconds: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(LUA % (n, token, kind))
    out = subprocess.run(["wrk", "-t1", f"-c{clients}", f"-d{seconds}s", "--timeout", "10s", "-s", fh.name,
                          f"http://127.0.0.1:{port}"], capture_output=True, text=True, timeout=seconds + 60)
    os.unlink(fh.name)
    load = os.getloadavg()[0]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("RESULT "))
    r = json.loads(line[7:])
    r["errors"] = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
    r["rps"] = r["requests"] / r["seconds"]
    r["load"] = load  # 1-minute load average at the end: other jobs on this shared machine show here
    return r


def soak(port: int, n: int, token: str, seconds: int, server_pid: int, db, log) -> dict:
    """Four clients: label 10 images, sometimes undo, search and browse, throttled to leave the CPU to the server."""
    stop = time.monotonic() + seconds
    counts = {"requests": 0, "errors": 0, "labels": 0}
    lock = threading.Lock()
    samples: list[tuple[float, float, int]] = []

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        while time.monotonic() < stop:
            r = rnd.random()
            if r < 0.3:
                ids = rnd.sample(range(1, n + 1), 10)
                req = ("POST", "/api/annotations", json.dumps({"image_ids": ids, "taxon": rnd.choice(TAXA)}))
            elif r < 0.35:
                req = ("POST", "/api/undo", None)
            elif r < 0.7:
                req = ("GET", f"/api/images/{rnd.randint(1, n)}/similar?k=20&method=hnsw", None)
            else:
                req = ("GET", f"/api/images?limit=100&offset={rnd.randint(0, n - 100)}", None)
            try:
                conn.request(req[0], req[1], body=req[2], headers=headers)
                resp = conn.getresponse()
                resp.read()
                ok = resp.status in (200, 201) or (req[1] == "/api/undo" and resp.status == 409)
            except OSError:
                ok = False
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                counts["requests"] += 1
                counts["errors"] += 0 if ok else 1
                counts["labels"] += 1 if ok and req[1] == "/api/annotations" else 0
            time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        samples.append((time.monotonic() - t0, rss_mib(server_pid), connections(db), os.getloadavg()[0]))
        log(f"soak {samples[-1][0]:.0f} s: RSS {samples[-1][1]:.0f} MiB, {samples[-1][2]} connections, "
            f"{counts['requests']} requests, {counts['errors']} errors")
        time.sleep(30)
    for t in threads:
        t.join()
    samples.append((time.monotonic() - t0, rss_mib(server_pid), connections(db), os.getloadavg()[0]))
    return {**counts, "samples": samples, "seconds": time.monotonic() - t0}


def main() -> None:
    """Build if needed, serve, measure, write the sections."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=100_000)
    ap.add_argument("--home", type=Path, default=Path("/tmp/plankton-load"))
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--soak", type=int, default=600, help="soak seconds (0 skips it)")
    ap.add_argument("--skip-load", action="store_true")
    args = ap.parse_args()
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    from plankton_db.config import Settings
    from plankton_db.db import connect
    from plankton_db.users import add_user, create_token

    settings = Settings(home=args.home)
    db = connect(settings)
    build(db, args.images, log)
    import sqlalchemy as sa

    with db.Session.begin() as s:
        if not s.execute(sa.text("SELECT 1 FROM users WHERE name = 'bench'")).first():
            add_user(s, "bench", "annotator", "bench-password")
        token = create_token(s, "bench")
    port = free_port()
    env = {**os.environ, "PLANKTON_HOME": str(args.home)}
    env.pop("PLANKTON_DATABASE_URL", None)
    server = subprocess.Popen([sys.executable, "-c", "from plankton_db.cli import run; run()", "serve", "--port",
                               str(port), "--threads", "8"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        wrk(port, args.images, token, "similar", 4, 5)  # warm the pool, the encoder-free path and the caches
        rss0, conns0 = rss_mib(server.pid), connections(db)
        if not args.skip_load:
            runs = [("similar", c, args.seconds) for c in (10, 20, 50)] + [("browse", 20, args.seconds)]
            rows = []
            for kind, clients, secs in runs:
                r = wrk(port, args.images, token, kind, clients, secs)
                log(f"{kind} {clients} clients: {r}")
                rows.append((kind, clients, r))
            table = "\n".join(
                f"| {kind} | {c} | {r['seconds']:.0f} | {r['requests']} | {r['rps']:.0f} | {r['p50']:.1f} | "
                f"{r['p95']:.1f} | {r['p99']:.1f} | {r['errors']} | {r['load']:.1f} |" for kind, c, r in rows)
            goal = next(r for k, c, r in rows if k == "similar" and c == 20)
            body = f"""
{args.images:,} images with synthetic clustered 1280-dim vectors (200 clusters), 30% validated labels, HNSW
index (halfvec, cosine, m=16, ef_construction=64). `plankton serve` (waitress, 8 threads) on 127.0.0.1;
wrk 4.1 (1 thread) on the same 2-core machine, so client, server and PostgreSQL share the two cores.
similar = `GET /api/images/<random id>/similar?k=20&method=hnsw`; browse = `GET /api/images?limit=100` with
a random offset, `status=todo&sort=random`, or a taxon filter (JSON only; thumbnails: section "web").
Bearer token auth. "load avg" is the machine's 1-minute load average after each run (2 cores; other
people's jobs share them). Server RSS {rss0:.0f} MiB before, {rss_mib(server.pid):.0f} MiB after;
connections to the database {conns0} before, {connections(db)} after.

| scenario | clients | s | requests | req/s | p50 ms | p95 ms | p99 ms | errors | load avg |
|---|---|---|---|---|---|---|---|---|---|
{table}

Goal (issue 8): zero errors and p95 <= 100 ms at 20 clients on similar: **{"met" if goal['errors'] == 0 and
goal['p95'] <= 100 else "not met"}** (p95 {goal['p95']:.1f} ms, {goal['errors']} errors).
"""
            print(body)
            write_section("load", f"Load: similar and browse at {args.images:,} images",
                          f".venv/bin/python bench/load.py --images {args.images} --seconds {args.seconds}", body)
        if args.soak:
            res = soak(port, args.images, token, args.soak, server.pid, db, log)
            rows = "\n".join(f"| {t:.0f} | {rss:.0f} | {c} | {la:.1f} |" for t, rss, c, la in res["samples"])
            first, last = res["samples"][0], res["samples"][-1]
            peak = max(s[1] for s in res["samples"])
            body = f"""
{res['seconds']:.0f} s of mixed traffic from 4 clients (each pausing 50 ms between requests): 30% label
10 random images with a random taxon, 5% undo, 35% similar (hnsw, k=20), 30% browse pages, against the
same {args.images:,}-image database and server as the load section. {res['requests']} requests,
{res['labels']} labeling actions, **{res['errors']} errors**.
Server RSS {first[1]:.0f} MiB at the start, {last[1]:.0f} MiB at the end, {peak:.0f} MiB at most; database
connections (pg_stat_activity, this database, without the observer's) {first[2]} at the start and
{last[2]} at the end, {max(s[2] for s in res['samples'])} at most.

| t (s) | server RSS (MiB) | connections | load avg |
|---|---|---|---|
{rows}
"""
            print(body)
            write_section("soak", "Soak: 10 minutes of labeling and search",
                          f".venv/bin/python bench/load.py --images {args.images} --skip-load --soak {args.soak}", body)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        db.dispose()


if __name__ == "__main__":
    main()
