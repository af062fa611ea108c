"""`plankton index ...`, `plankton hash ...` and `plankton bench`: ANN indexes, hash codes, and the benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from plankton_db.cli.common import JsonOut, ModelOpt, app, err, handles_errors, open_db, out, progress

index_app = typer.Typer(help="ANN indexes (HNSW, IVFFlat) per embedding model.", no_args_is_help=True)
hash_app = typer.Typer(help="Binary hash codes (LSH, ITQ) and their bucket partitions.", no_args_is_help=True)
app.add_typer(index_app, name="index")
app.add_typer(hash_app, name="hash")

Bits = Annotated[int | None, typer.Option("--bits", help="code length of the hash projection (hamming)")]
HashMethod = Annotated[str | None, typer.Option("--hash-method", help="lsh or itq projection (hamming)")]


def _bench_module():
    # The benchmark lives in bench/ (it needs faiss-cpu and matplotlib, the `bench` extra), not in the package.
    import importlib.util

    from plankton_db.db import REPO_ROOT
    from plankton_db.errors import PlanktonError

    path = REPO_ROOT / "bench" / "retrieval.py"
    if not path.is_file():
        raise PlanktonError(f"plankton bench needs a source checkout: {path} not found")
    try:
        import faiss  # noqa: F401
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlanktonError("plankton bench needs the bench extra: pip install -e '.[bench]'") from None
    spec = importlib.util.spec_from_file_location("plankton_bench_retrieval", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@index_app.command("build")
@handles_errors
def index_build(
    kind: Annotated[str, typer.Option("--kind", help="hnsw or ivfflat")] = "hnsw",
    metric: Annotated[str, typer.Option("--metric", help="cosine, l2 or hamming")] = "cosine",
    m: Annotated[int | None, typer.Option("--m", help="hnsw: links per node (default 16; 8 for hamming)")] = None,
    ef_construction: Annotated[int, typer.Option("--ef-construction", help="hnsw: build candidate list")] = 64,
    lists: Annotated[int | None, typer.Option("--lists", help="ivfflat: lists (default rows/1000)")] = None,
    storage: Annotated[str, typer.Option("--storage", help="vector or halfvec (half the bytes)")] = "halfvec",
    bits: Bits = None,
    hash_method: HashMethod = None,
    model: ModelOpt = None,
) -> None:
    """Build (or rebuild) an ANN index for one model, showing progress, then ANALYZE."""
    from plankton_db.embed import require_model
    from plankton_db.indexes import build_index

    db = open_db()
    with db.Session.begin() as s, progress() as bar:
        row = require_model(s, model)
        task = bar.add_task(f"{kind} {metric} ({row.name})", total=None)

        def show(phase: str, done: int, total: int) -> None:
            bar.update(task, description=f"{kind} {metric}: {phase}", completed=done, total=total or None)

        info = build_index(s, row.id, kind=kind, metric=metric, storage=storage, m=m, ef_construction=ef_construction,
                           lists=lists, bits=bits, hash_method=hash_method, on_progress=show)
    db.dispose()
    out.print(f"built {info.name}: {info.kind} {info.metric} on {info.storage}, {_mib(info.bytes)}, "
              f"{', '.join(f'{k}={v}' for k, v in info.options.items())}", highlight=False)


@index_app.command("list")
@handles_errors
def index_list(model: ModelOpt = None, as_json: JsonOut = False) -> None:
    """Every ANN index with its size."""
    from plankton_db.embed import require_model
    from plankton_db.indexes import list_indexes

    db = open_db()
    with db.Session() as s:
        model_id = require_model(s, model).id if model else None
        rows = list_indexes(s, model_id)
    db.dispose()
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in rows]))
        return
    table = Table(title=f"{len(rows)} ANN indexes")
    for col in ("name", "model", "kind", "metric", "storage", "size", "options", "valid"):
        table.add_column(col)
    for r in rows:
        table.add_row(r.name, str(r.model_id), r.kind, r.metric, r.storage + (f"({r.bits})" if r.bits else ""),
                      _mib(r.bytes), ", ".join(f"{k}={v}" for k, v in r.options.items()), "yes" if r.valid else "NO")
    out.print(table)


@index_app.command("drop")
@handles_errors
def index_drop(name: Annotated[str, typer.Argument(help="index name, as `plankton index list` shows it")]) -> None:
    """Drop one ANN index."""
    from plankton_db.indexes import drop_index

    db = open_db()
    with db.Session.begin() as s:
        info = drop_index(s, name)
    db.dispose()
    out.print(f"dropped {info.name} ({_mib(info.bytes)})", highlight=False)


@hash_app.command("build")
@handles_errors
def hash_build(
    bits: Annotated[int, typer.Option("--bits", help="code length, a multiple of 8 (64 to 2048 typical)")] = 256,
    method: Annotated[str, typer.Option("--method", help="lsh (random hyperplanes) or itq (learned rotation)")] = "itq",
    bucket_bits: Annotated[int | None, typer.Option("--bucket-bits",
                                                    help="bucket key length b (default: about 16 images a bucket)")] = None,
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    model: ModelOpt = None,
) -> None:
    """Learn a projection from the model's mean-centred embeddings and give every image a bit code."""
    from plankton_db.embed import require_model
    from plankton_db.hashing import check_bits, check_method
    from plankton_db.hashstore import build_hash_codes

    check_bits(bits)
    check_method(method)
    db = open_db()
    with db.Session.begin() as s, progress() as bar:
        row = require_model(s, model)
        task = bar.add_task(f"hash {method} {bits} bits ({row.name})", total=None)
        proj = build_hash_codes(s, row.id, bits, method, bucket_bits=bucket_bits, seed=seed,
                                on_total=lambda n: bar.update(task, total=n),
                                on_progress=lambda n: bar.advance(task, n))
    db.dispose()
    out.print(f"{proj.codes} codes of {proj.bits} bits ({proj.method}) for {row.name}; bucket key b = "
              f"{proj.bucket_bits} bits; new embeddings are coded automatically", highlight=False)


@hash_app.command("list")
@handles_errors
def hash_list(model: ModelOpt = None, as_json: JsonOut = False) -> None:
    """Every stored projection: method, bits, bucket bits and how many images have codes."""
    from plankton_db.embed import require_model
    from plankton_db.hashstore import list_projections

    db = open_db()
    with db.Session() as s:
        rows = list_projections(s, require_model(s, model).id if model else None)
    db.dispose()
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in rows]))
        return
    table = Table(title=f"{len(rows)} hash projections")
    for col in ("id", "model", "method", "bits", "bucket bits", "codes"):
        table.add_column(col)
    for r in rows:
        table.add_row(str(r.id), str(r.model_id), r.method, str(r.bits), str(r.bucket_bits), str(r.codes))
    out.print(table)


@app.command()
@handles_errors
def bench(
    n: Annotated[int, typer.Option("--n", min=1000, help="vectors in the collection")] = 10_000,
    dim: Annotated[int | None, typer.Option("--dim", help="dimension (default: the real embeddings')")] = None,
    queries: Annotated[int, typer.Option("--queries", min=10, help="query vectors")] = 200,
    source: Annotated[list[Path] | None, typer.Option("--source",
                                                      help="PLANKTON_HOME folders with real embeddings")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="fewer parameter settings")] = False,
    write: Annotated[bool, typer.Option("--write/--no-write", help="write docs/BENCHMARKS.md and the plot")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as a JSON list")] = False,
) -> None:
    """Recall@10, latency and size of every search method against FAISS on the same vectors."""
    run_benchmark = _bench_module().run_benchmark
    rows = run_benchmark(n=n, dim=dim, n_queries=queries, sources=source, quick=quick, write=write,
                         log=lambda msg: err.print(msg, highlight=False, markup=False))
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table(title=f"retrieval at {n} vectors")
    for col in ("method", "metric", "params", "recall@10", "p50 ms", "p95 ms", "qps", "build s", "index MiB"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["method"], r["metric"], json.dumps(r["params"]), f"{r['recall_at_10']:.3f}",
                      f"{r['p50_ms']:.2f}", f"{r['p95_ms']:.2f}", f"{r['qps']:.0f}", f"{r['build_s']:.1f}",
                      _mib(r["index_bytes"]))
    out.print(table)
