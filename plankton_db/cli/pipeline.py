"""The core pipeline commands: ingest, embed, search, eval and demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.table import Table

from plankton_db.cli.common import Device, JsonOut, ModelOpt, app, err, handles_errors, open_db, out, progress


@app.command()
@handles_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="image files or folders (searched recursively)")],
    labels_from_folders: Annotated[bool, typer.Option(help="label each image with its folder's name (validated)")] = False,
    sample: Annotated[str | None, typer.Option(help="sample name recorded on every image")] = None,
    instrument: Annotated[str | None, typer.Option(help="instrument recorded on every image")] = None,
) -> None:
    """Copy images into the store and the database; bad files are listed and skipped."""
    from plankton_db.ingest import ingest_paths

    db = open_db()
    with progress() as bar:
        task = bar.add_task("ingest", total=None)
        summary = ingest_paths(
            db.Session, db.settings, paths, labels_from_folders=labels_from_folders, sample=sample,
            instrument=instrument,
            on_discovered=lambda n: bar.update(task, total=n),
            on_progress=lambda n: bar.advance(task, n),
        )
    db.dispose()
    out.print(
        f"{summary.seen} files: {summary.added} added, {summary.already_present} already present, "
        f"{len(summary.rejected)} rejected, {summary.labels_added} labels added"
        + (f", {summary.ignored} non-image files ignored" if summary.ignored else ""),
        highlight=False,
    )
    if summary.added == 0 and summary.already_present and not summary.rejected:
        out.print("nothing new: every image was already in the database")
    for r in summary.rejected:
        err.print(f"rejected {r.path}: {r.reason}", highlight=False, markup=False, soft_wrap=True)
    if summary.rejected:
        raise typer.Exit(1)


@app.command()
@handles_errors
def embed(
    model: ModelOpt = None,
    checkpoint: Annotated[Path | None, typer.Option(help="local weights for a timm model")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=4096)] = 64,
    device: Device = "auto",
    workers: Annotated[int, typer.Option(min=0, max=64, help="decoding processes")] = 1,
    enqueue: Annotated[bool, typer.Option("--enqueue", help="queue the images for `plankton worker` instead")] = False,
) -> None:
    """Embed every image that has no embedding for the model."""
    from plankton_db.embed import embed_missing, load_encoder
    from plankton_db.store import ContentStore

    db = open_db()
    with db.Session.begin() as s:
        encoder, row = load_encoder(s, model, checkpoint=str(checkpoint) if checkpoint else None, device=device,
                                    store=ContentStore(db.settings.store))
        if enqueue:
            from plankton_db.queue import enqueue as enqueue_jobs, subscribe

            # One transaction: the model, its subscription to future ingests and the jobs appear together.
            subscribe(s, row.id)
            queued = enqueue_jobs(s, row.id)
    if enqueue:
        db.dispose()
        out.print(f"{queued} images queued for {row.name}; run `plankton worker --model {row.name}` to embed them",
                  highlight=False, soft_wrap=True)
        return
    with progress() as bar:
        task = bar.add_task(f"embed ({row.name}, {encoder.device.type})", total=None)
        summary = embed_missing(
            db.Session, ContentStore(db.settings.store), encoder, row.id, batch_size=batch_size, workers=workers,
            on_pending=lambda n: bar.update(task, total=n), on_progress=lambda n: bar.advance(task, n),
        )
    db.dispose()
    out.print(f"{summary.embedded} images embedded with {row.name} ({row.dim} dims) "
              f"in {summary.seconds:.1f} s: {summary.images_per_second:.1f} images/s", highlight=False)
    for image_id, reason in summary.failed:
        err.print(f"failed image {image_id}: {reason}", highlight=False, markup=False, soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- search / eval


@app.command()
@handles_errors
def search(
    image_file: Annotated[Path | None, typer.Argument(help="an image file to search with")] = None,
    image_id: Annotated[int | None, typer.Option("--id", help="search with a stored image")] = None,
    metric: Annotated[str, typer.Option("--metric", help="cosine, l2 or hamming (on hash codes)")] = "cosine",
    k: Annotated[int, typer.Option("-k", help="number of results")] = 20,
    taxon: Annotated[str | None, typer.Option(help="only this taxon and its subtree")] = None,
    sample: Annotated[str | None, typer.Option(help="only this sample")] = None,
    unlabeled: Annotated[bool, typer.Option(help="only images without a label")] = False,
    depth_min: Annotated[float | None, typer.Option("--depth-min", help="only images reaching this depth")] = None,
    depth_max: Annotated[float | None, typer.Option("--depth-max", help="only images above this depth")] = None,
    method: Annotated[str, typer.Option("--method", help="exact, hnsw, ivfflat, lsh or two-stage")] = "exact",
    ef_search: Annotated[int | None, typer.Option("--ef-search", help="hnsw: candidate list (default 40)")] = None,
    probes: Annotated[int | None, typer.Option("--probes", help="ivfflat: lists probed (default 1)")] = None,
    candidates: Annotated[int | None, typer.Option("--candidates",
                                                   help="two-stage: Hamming shortlist size (default 200)")] = None,
    radius: Annotated[int | None, typer.Option("--radius", help="lsh: bucket Hamming radius (default 2)")] = None,
    bits: Annotated[int | None, typer.Option("--bits", help="hash code length to use (default: newest)")] = None,
    hash_method: Annotated[str | None, typer.Option("--hash-method", help="lsh or itq codes (default: newest)")] = None,
    model: ModelOpt = None,
    device: Device = "auto",
    as_json: JsonOut = False,
) -> None:
    """The k most similar images, by one SQL query over pgvector (exactly, or through an ANN index)."""
    from plankton_db.embed import load_encoder, require_model
    from plankton_db.errors import InvalidArgument
    from plankton_db.imageio import decode
    from plankton_db.retrieval import Filters, SearchOptions, check_search_args, search_by_id, search_by_vector
    from plankton_db.store import ContentStore

    if (image_file is None) == (image_id is None):
        raise InvalidArgument("give exactly one of IMAGE_FILE or --id")
    check_search_args(metric, k, method)
    filters = Filters(taxon=taxon, sample=sample, unlabeled=unlabeled, depth_min=depth_min, depth_max=depth_max)
    options = SearchOptions(method=method, ef_search=ef_search, probes=probes, candidates=candidates, radius=radius,
                            bits=bits, hash_method=hash_method)
    db = open_db()
    with db.ReadSession() as s:  # a streaming replica when PLANKTON_REPLICA_URLS is set
        row = require_model(s, model)
        if image_id is not None:
            hits = search_by_id(s, row.id, image_id, metric=metric, k=k, filters=filters, method=method,
                                options=options)
        else:
            try:
                data = image_file.read_bytes()
            except OSError as exc:
                raise InvalidArgument(f"cannot read {image_file}: {exc.strerror or exc}") from None
            decoded = decode(data, max_pixels=db.settings.max_pixels)
            encoder, _ = load_encoder(s, row.name, device=device, store=ContentStore(db.settings.store))
            vector = encoder.encode([decoded.image])[0]
            hits = search_by_vector(s, row.id, vector, metric=metric, k=k, filters=filters, method=method,
                                    options=options)
    db.dispose()
    query = {"image_id": image_id} if image_id is not None else {"file": str(image_file)}
    if as_json:
        out.print_json(json.dumps({"query": query, "model": row.name, "metric": metric, "method": method,
                                   "hits": [h.__dict__ for h in hits]}))
        return
    table = Table(title=f"{len(hits)} nearest by {metric} ({row.name}, {method})")
    for col in ("id", "distance", "label", "path"):
        table.add_column(col)
    for h in hits:
        label = f"{h.taxon} ({h.status})" if h.taxon else "-"
        table.add_row(str(h.image_id), f"{h.distance:.4f}", label, h.original_path)
    out.print(table)


@app.command("eval")
@handles_errors
def eval_cmd(
    metric: Annotated[str, typer.Option("--metric", help="cosine, l2 or hamming (on hash codes)")] = "cosine",
    bits: Annotated[int | None, typer.Option("--bits", help="hamming: code length (default: newest codes)")] = None,
    hash_method: Annotated[str | None, typer.Option("--hash-method", help="hamming: lsh or itq codes")] = None,
    model: ModelOpt = None,
    holdout: Annotated[bool, typer.Option("--holdout", help="query only with images the model never trained on")]
    = False,
    holdout_of: Annotated[str | None, typer.Option("--holdout-of", help="like --holdout, with another model's "
                                                   "training images (compare a base model on the same queries)")]
    = None,
    as_json: JsonOut = False,
) -> None:
    """Leave-one-out retrieval over every image with a validated label."""
    from plankton_db.embed import require_model
    from plankton_db.evaluate import evaluate
    from plankton_db.retrieval import check_search_args

    check_search_args(metric, 10)
    db = open_db()
    with db.Session.begin() as s, progress() as bar:
        row = require_model(s, model)
        held = require_model(s, holdout_of).id if holdout_of else (row.id if holdout else None)
        task = bar.add_task(f"eval ({row.name}, {metric})", total=None)
        result = evaluate(s, row.id, row.name, metric=metric, bits=bits, hash_method=hash_method, holdout_of=held,
                          on_total=lambda n: bar.update(task, total=n), on_progress=lambda n: bar.advance(task, n))
    db.dispose()
    if as_json:
        out.print_json(json.dumps(result.to_json()))
        return
    out.print(f"model {result.model}, metric {result.metric}: {result.n} queries over {result.classes} classes",
              highlight=False)
    out.print(f"top1 {result.top1:.3f}   precision@5 {result.precision_at_5:.3f}   "
              f"precision@10 {result.precision_at_10:.3f}   mAP@10 {result.map_at_10:.3f}", highlight=False)
    table = Table()
    for col in ("class", "n", "top1", "precision@10"):
        table.add_column(col)
    for name, m in result.per_class.items():
        table.add_row(name, str(m["n"]), f"{m['top1']:.3f}", f"{m['precision_at_10']:.3f}")
    out.print(table)


# ----------------------------------------------------------------------------- demo


@app.command()
@handles_errors
def demo(per_class: Annotated[int, typer.Option(min=2, max=1000)] = 24, device: Device = "auto") -> None:
    """Generate plankton-like images, ingest and embed them, and show a similarity search."""
    from plankton_db.embed import embed_missing, load_encoder
    from plankton_db.evaluate import evaluate
    from plankton_db.ingest import ingest_paths
    from plankton_db.retrieval import search_by_id
    from plankton_db.store import ContentStore
    from plankton_db.synthetic import write_dataset

    db = open_db()
    folder = db.settings.home / "demo-images"
    if not folder.exists():
        write_dataset(folder, per_class=per_class)
    summary = ingest_paths(db.Session, db.settings, [folder], labels_from_folders=True, sample="demo")
    out.print(f"ingest: {summary.added} added, {summary.already_present} already present ({folder})")
    with db.Session.begin() as s:
        encoder, row = load_encoder(s, None, device=device)
    done = embed_missing(db.Session, ContentStore(db.settings.store), encoder, row.id)
    out.print(f"embed: {done.embedded} images with {row.name} at {done.images_per_second:.1f} images/s")
    with db.Session.begin() as s:
        result = evaluate(s, row.id, row.name)
        query_id = s.execute(sa.text("SELECT min(image_id) FROM image_labels")).scalar_one()
        label = s.execute(sa.text("SELECT taxon FROM current_labels WHERE image_id = :i"), {"i": query_id}).scalar()
        hits = search_by_id(s, row.id, query_id, k=10)
    db.dispose()
    out.print(f"eval: top1 {result.top1:.3f}, precision@10 {result.precision_at_10:.3f} over {result.n} images")
    table = Table(title=f"10 images most like image {query_id} ({label})")
    for col in ("id", "cosine distance", "label"):
        table.add_column(col)
    for h in hits:
        table.add_row(str(h.image_id), f"{h.distance:.4f}", h.taxon or "-")
    out.print(table)
    out.print(f"next: plankton search --id {query_id}   |   plankton eval")
