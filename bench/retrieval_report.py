"""Render bench/out/retrieval_*.json (and eval_hamming.json) into docs/BENCHMARKS.md and a PNG plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

from _report import write_section

OUT = Path(__file__).resolve().parent / "out"
DOCS = Path(__file__).resolve().parent.parent / "docs"
PLOT = DOCS / "retrieval_recall_latency.png"


def _table(rows: list[dict], n: int) -> str:
    lines = ["| method | metric | params | recall@10 | p50 ms | p95 ms | QPS (2 clients) | build s | index MiB "
             "| bytes/image |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items())
        lines.append(f"| {r['method']} | {r['metric']} | {params} | {r['recall_at_10']:.3f} | {r['p50_ms']:.2f} | "
                     f"{r['p95_ms']:.2f} | {r['qps']:.0f} | {r['build_s']:.1f} | {r['index_bytes'] / 2**20:.1f} | "
                     f"{r['index_bytes'] / n:.0f} |")
    return "\n".join(lines)


def _best(rows, method, floor, metric="cosine"):
    ok = [r for r in rows if r["method"] == method and r["metric"] == metric and r["recall_at_10"] >= floor]
    return min(ok, key=lambda r: r["p95_ms"]) if ok else None


def _goals(run: dict) -> str:
    rows, n = run["rows"], run["n"]
    out = []
    h = _best(rows, "hnsw", 0.95)
    if h:
        f = _best(rows, "faiss-hnsw", h["recall_at_10"])
        ratio = f"{h['p95_ms'] / f['p95_ms']:.1f}" if f else "n/a"
        out.append(f"- HNSW reaches recall@10 {h['recall_at_10']:.3f} at p95 {h['p95_ms']:.2f} ms "
                   f"({', '.join(f'{k}={v}' for k, v in h['params'].items())}); FAISS HNSW at recall "
                   f"{f['recall_at_10'] if f else 'n/a'} has p95 {f['p95_ms'] if f else 'n/a'} ms: ratio {ratio}.")
    else:
        out.append("- HNSW did not reach recall@10 0.95 in this sweep.")
    t = _best(rows, "two-stage", 0.95)
    if t and h:
        faster = "faster" if t["p95_ms"] < h["p95_ms"] else "slower"
        out.append(f"- Two-stage reaches recall@10 {t['recall_at_10']:.3f} at p95 {t['p95_ms']:.2f} ms "
                   f"({', '.join(f'{k}={v}' for k, v in t['params'].items())}): {faster} than float HNSW "
                   f"({h['p95_ms']:.2f} ms).")
    elif t is None:
        out.append("- Two-stage did not reach recall@10 0.95 in this sweep.")
    fl = [r for r in rows if r["method"] == "hnsw-filtered-1%"]
    if fl:
        out.append("- Filtered HNSW (1% of rows): recall@10 " + ", ".join(
            f"{r['recall_at_10']:.3f} at ef_search={r['params']['ef_search']} (p95 {r['p95_ms']:.2f} ms)" for r in fl))
    return "\n".join(out)


def _query_path(n: int) -> str:
    path = OUT / f"query_path_{n}.json"
    if not path.exists():
        return ""
    q = json.loads(path.read_text())
    parts = [("server-side index scan (EXPLAIN ANALYZE, timing off)", "server_index_scan"),
             ("one round trip (`SELECT 1`, prepared)", "round_trip_select_1"),
             ("bare index query from psycopg (binary, prepared)", "bare_index_query"),
             ("`Searcher.search` (knobs, labels, paths, Hit rows)", "searcher_search")]
    rows = "\n".join(f"| {label} | {q[key]['p50_ms']:.3f} | {q[key]['p95_ms']:.3f} |" for label, key in parts)
    return (f"Where an HNSW query's time goes (ef_search {q['ef_search']}, `python bench/query_path.py --n {n}`, "
            f"run after the benchmark on its database):\n\n| part | p50 ms | p95 ms |\n|---|---|---|\n{rows}")


def _graph_m(n: int) -> str:
    path = OUT / f"graph_m_{n}.json"
    if not path.exists():
        return ""
    g = json.loads(path.read_text())
    lines = ["| kind | m | ef_search / c | recall@10 | p50 ms | p95 ms | build s |", "|---|---|---|---|---|---|---|"]
    for r in g["rows"]:
        knob = r.get("ef_search", r.get("c"))
        build = "-" if r["build_s"] is None else f"{r['build_s']:.1f}"
        lines.append(f"| {r['kind']} | {r['m']} | {knob} | {r['recall_at_10']:.3f} | {r['p50_ms']:.2f} | "
                     f"{r['p95_ms']:.2f} | {build} |")
    return (f"Links per node (m = 16 or 8) for the float and the Hamming (ITQ-256) graphs, and the two-stage path "
            f"(`python bench/graph_m.py --n {n}`, its own run on fresh builds): bare prepared statements from "
            f"psycopg first (index scan and re-ranking only), then float HNSW and two-stage through "
            f"`Searcher.search`, interleaved query by query so drift hits both alike.\n\n" + "\n".join(lines))


def _extrapolation(runs: dict[int, dict]) -> str:
    if 100_000 not in runs:
        return ("Not extrapolated: this needs a 100k run (`plankton bench --n 100000`), which has not completed on "
                "this machine yet. docs/SCALING.md extrapolates index size and build time from its own 10k and "
                "100k measurements.")
    run = runs[100_000]
    scale = 10
    lines = ["| method | index at 1M (MiB) | build at 1M (s, n log n) |", "|---|---|---|"]
    seen = set()
    for r in run["rows"]:
        key = (r["method"], r["metric"], r["params"].get("storage"), r["params"].get("bits"))
        if key in seen or r["index_bytes"] == 0:
            continue
        seen.add(key)
        build = r["build_s"] * scale * math.log(1e6) / math.log(1e5)
        name = f"{r['method']} {r['metric']} " + (r["params"].get("storage") or f"{r['params'].get('bits', '')} bits")
        lines.append(f"| {name} | {r['index_bytes'] * scale / 2**20:.0f} | {build:.0f} |")
    heap = run.get("heap_bytes") or 0
    return ("Extrapolated linearly in size from the 100k run (not measured): the table of vectors "
            f"(`embeddings` with TOAST) takes {heap / 2**20:.0f} MiB at 100k, so about {heap * scale / 2**30:.1f} GiB "
            "at 1M; an HNSW build wants its graph in maintenance_work_mem (about the index size).\n\n"
            + "\n".join(lines))


def _evals() -> str:
    path = OUT / "eval_hamming.json"
    if not path.exists():
        return ""
    runs = json.loads(path.read_text())
    lines = ["| data set | metric | codes | top1 | precision@10 | mAP@10 |", "|---|---|---|---|---|---|"]
    for r in runs:
        res = r["result"]
        codes = r["run"].split("-", 1)[1] if r["run"].startswith("hamming") else "-"
        lines.append(f"| {r['dataset']} | {res['metric']} | {codes} | {res['top1']:.3f} | "
                     f"{res['precision_at_10']:.3f} | {res['map_at_10']:.3f} |")
    goal = []
    for ds in dict.fromkeys(r["dataset"] for r in runs):
        cos = next((r["result"]["top1"] for r in runs if r["dataset"] == ds and r["run"] == "cosine"), None)
        long = [r for r in runs if r["dataset"] == ds and r["run"].startswith("hamming")
                and int(r["run"].rsplit("-", 1)[1]) >= 256]
        if cos is None or not long:
            continue
        best = max(long, key=lambda r: r["result"]["top1"])
        gap = (cos - best["result"]["top1"]) * 100
        goal.append(f"- {ds}: cosine top1 {cos:.3f}; best Hamming with >= 256 bits {best['result']['top1']:.3f} "
                    f"({best['run'].split('-', 1)[1]}); cosine minus Hamming = {gap:+.1f} points: "
                    f"{'within' if gap <= 3 else 'not within'} the 3-point goal.")
    lines = goal + [""] + lines if goal else lines
    return ("### Retrieval quality: cosine, L2 and Hamming (`plankton eval`)\n\nLeave-one-out over every labelled "
            "image of each shared data set, default model. Commands: `plankton eval --metric cosine|l2 --json`, "
            "`plankton hash build --bits B --method M` then `plankton eval --metric hamming --bits B "
            "--hash-method M --json`, all run by `python bench/eval_metrics.py`.\n\n" + "\n".join(lines))


def _plot(runs: dict[int, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
    for ax, (n, run) in zip(axes[0], sorted(runs.items()), strict=True):
        groups: dict[str, list[dict]] = {}
        for r in run["rows"]:
            label = f"{r['method']} ({r['metric']}" + (f", {r['params']['storage']}" if "storage" in r["params"]
                                                       else f", {r['params']['bits']} bits" if "bits" in r["params"]
                                                       else "") + ")"
            groups.setdefault(label, []).append(r)
        for label, rs in groups.items():
            ax.plot([r["p95_ms"] for r in rs], [r["recall_at_10"] for r in rs], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("p95 latency per query (ms, log)")
        ax.set_ylabel("recall@10 vs exact cosine")
        ax.set_title(f"{n:,} vectors x {run['dim']}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    DOCS.mkdir(exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def write_report() -> None:
    """Write the "retrieval" section of docs/BENCHMARKS.md from every stored run."""
    runs = {}
    for path in sorted(OUT.glob("retrieval_*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            runs[data["n"]] = data
    if not runs:
        return
    _plot(runs)
    parts = [
        "Vectors: real `tf_efficientnet_lite0` embeddings of both shared data sets (6,220 images), extended to N by "
        "moving each a random 0-30% towards another and adding 10% per-dimension noise; queries are made the same "
        "way and are not in the collection. Recall@10 is against exact cosine top-10 in numpy. Latency: one query at "
        "a time through `Searcher.search` (what `plankton search` and the web use), including the joins for labels "
        "and paths; QPS: 2 client threads. FAISS runs in the same process and run, on one thread (its QPS row is a "
        "batched search over 2 threads). The embedded server runs with shared_buffers at a quarter of the RAM "
        "(set on first start), so the indexes are read from PostgreSQL's own cache; each method gets one untimed "
        "pass over the queries first. Shared machines are noisy: each run below gives its 1-minute load average "
        "at the start and the end; compare rows within one run.",
        f"![recall vs latency]({PLOT.name})",
    ]
    for n, run in sorted(runs.items()):
        load = run.get("load_average")
        parts.append(f"### {n:,} vectors of {run['dim']} dimensions, {run['queries']} queries\n\n"
                     + (f"Load average {load[0]} at the start, {load[1]} at the end.\n\n" if load else "")
                     + _goals(run) + "\n\n" + _table(run["rows"], n)
                     + (f"\n\n{_query_path(n)}" if _query_path(n) else "")
                     + (f"\n\n{_graph_m(n)}" if _graph_m(n) else ""))
    parts.append("### 1M images\n\n" + _extrapolation(runs))
    parts.append(_evals())
    ns = " and ".join(f"--n {n}" for n in sorted(runs))
    write_section("retrieval", "Retrieval: pgvector methods vs FAISS", f"plankton bench {ns}",
                  "\n\n".join(p for p in parts if p))


if __name__ == "__main__":
    write_report()
