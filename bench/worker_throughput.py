"""Worker throughput against a bare timm forward loop over the same preprocessed tensors, in one run.

The images are split into rounds; each round times the bare loop on its images, then ingests them
(which queues their jobs) and lets a worker drain the queue. Interleaving the two keeps a noisy,
shared machine from favouring whichever ran first. Writes one section of docs/BENCHMARKS.md.

    .venv/bin/python bench/worker_throughput.py                 # CPU, pwssc_spc, section "worker"
    .venv/bin/python bench/worker_throughput.py --device cuda --batch-size 256 --rounds 2 \\
        --models tf_efficientnet_lite0,resnet50,inception_resnet_v2 --random-weights --synthetic 20000 \\
        --section worker-gpu                                    # what bench/gpu_worker.sh runs
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section  # noqa: E402

from plankton_db import queue  # noqa: E402
from plankton_db.config import Settings  # noqa: E402
from plankton_db.db import connect, stop_embedded  # noqa: E402
from plankton_db.embed import register_model  # noqa: E402
from plankton_db.embedding import DEFAULT_MODEL, Encoder  # noqa: E402
from plankton_db.ingest import IMAGE_SUFFIXES, ingest_paths  # noqa: E402
from plankton_db.store import ContentStore  # noqa: E402
from worker import Worker, WorkerConfig  # noqa: E402
from worker.source import load_images  # noqa: E402


def bare_loop(encoder: Encoder, tensors: list[torch.Tensor]) -> float:
    """Seconds for the model alone over preprocessed batches already on the device: the worker's ceiling."""
    cuda = encoder.device.type == "cuda"
    dtype = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else torch.float16
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=cuda):
        encoder.model(tensors[0][:8])  # warm-up: kernel selection is not throughput
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x in tensors:
            encoder.model(x)
        if cuda:
            torch.cuda.synchronize()
    return time.perf_counter() - start


def image_files(args: argparse.Namespace, scratch: Path) -> list[Path]:
    """The benchmark's images: a folder of class folders, or synthetic ones when asked (no data on the machine)."""
    if args.synthetic:
        from plankton_db.synthetic import CLASSES, write_dataset

        write_dataset(scratch / "synthetic", per_class=-(-args.synthetic // len(CLASSES)), seed=0)
        root = scratch / "synthetic"
    else:
        root = args.data
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    random.Random(0).shuffle(files)  # every round gets a mix of classes and sizes
    return files[: args.limit] if args.limit else files


def load_model(name: str, device: str, random_weights: bool, scratch: Path) -> tuple[Encoder, str | None]:
    """The encoder, plus a checkpoint path when weights are random (a GPU box has no model hub access)."""
    if name == DEFAULT_MODEL or not random_weights:
        return Encoder.load(name, device=device), None
    import timm

    path = scratch / f"{name}-random.pt"
    torch.save(timm.create_model(name, pretrained=False, num_classes=0).state_dict(), path)
    return Encoder.load(name, checkpoint=path, device=device), str(path)


def run_model(name: str, files: list[Path], args: argparse.Namespace, scratch: Path) -> dict:
    """Interleaved bare-loop and worker rounds for one model, on a fresh database."""
    home = scratch / f"home-{name}"
    settings = Settings(home=home)  # a fresh embedded server per model, so each model ingests (and queues) anew
    db = connect(settings)
    encoder, checkpoint = load_model(name, args.device, args.random_weights, scratch)
    with db.Session.begin() as s:
        model_id = register_model(s, encoder).id
        queue.subscribe(s, model_id)
    store = ContentStore(settings.store)
    r = dict(model=name, n=0, n_bare=0, bare_s=0.0, worker_s=0.0, wall_s=0.0, batch=[], db=[], load=[], failed=0, rounds=[])
    try:
        for i in range(args.rounds):
            chunk = files[i :: args.rounds]
            ingest_paths(db.Session, settings, chunk)  # queues a job per new image (the model is served)
            with db.Session() as s:
                jobs = [queue.Job(a, b, 0) for a, b in s.execute(sa.text(
                    "SELECT i.id, i.sha256 FROM embedding_jobs j JOIN images i ON i.id = j.image_id "
                    "WHERE j.model_id = :m AND j.status = 'pending' ORDER BY i.id"), {"m": model_id})]
            # The bare loop's input: the very tensors the worker builds, from the same store, moved beforehand.
            t0 = time.perf_counter()
            tensors = [load_images(store, tuple(jobs[k : k + args.batch_size]), encoder.spec.preprocess)[1]
                       for k in range(0, len(jobs), args.batch_size)]
            r["load"].append((time.perf_counter() - t0) / max(1, len(jobs)))
            tensors = [t.to(encoder.device).contiguous(memory_format=torch.channels_last) for t in tensors]
            bare = bare_loop(encoder, tensors)
            del tensors
            t0 = time.perf_counter()
            stats = Worker(db, WorkerConfig(model=name, checkpoint=checkpoint, device=args.device,
                                            batch_size=args.batch_size, exit_when_empty=True,
                                            loader_workers=args.loader_workers, log_every_s=1e9)).run()
            wall = time.perf_counter() - t0
            r["n"] += stats.embedded
            r["n_bare"] += len(jobs)
            r["bare_s"] += bare
            r["worker_s"] += stats.seconds
            r["wall_s"] += wall
            r["batch"] += stats.batch_times
            r["db"] += stats.db_times
            r["failed"] += stats.failed
            r["rounds"].append((stats.embedded / stats.seconds) / (len(jobs) / bare))
            print(f"{name} round {i + 1}: {len(jobs)} images; bare {len(jobs) / bare:.1f}/s, worker "
                  f"{stats.embedded / stats.seconds:.1f}/s steady, {stats.embedded / wall:.1f}/s incl. start-up",
                  flush=True)
    finally:
        db.dispose()
        stop_embedded(settings)
    return r


def report(results: list[dict], files: list[Path], args: argparse.Namespace) -> str:
    """The markdown body: throughput table, database share, and what the loader costs."""
    where = f"{len(files)} synthetic images" if args.synthetic else f"`{args.data}` ({len(files)} images)"
    dev = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    lines = [
        f"Data: {where}, {args.rounds} interleaved rounds per model; device {dev}, batch {args.batch_size}, "
        f"{args.loader_workers} DataLoader process(es) claiming and decoding, torch threads {torch.get_num_threads()}"
        + (", AMP (bf16/fp16) and channels_last in both loops" if args.device.startswith("cuda") else "")
        + (", random weights (throughput does not depend on them)" if args.random_weights else "") + ".",
        "The bare loop runs `model(x)` over tensors preprocessed and moved to the device beforehand (not timed); "
        "the worker claims, reads, decodes, preprocesses, runs the model and writes through PostgreSQL.",
        "",
        "| model | bare loop images/s (baseline) | worker images/s, steady | ratio | worker incl. start-up | ratio "
        "| DB time per batch, median | DB share of batch time | decode+preprocess ms/image (1 process) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        bare, steady, wall = r["n_bare"] / r["bare_s"], r["n"] / r["worker_s"], r["n"] / r["wall_s"]
        share = 100 * sum(r["db"]) / sum(r["batch"])
        lines.append(
            f"| {r['model']} | {bare:.1f} | {steady:.1f} | {steady / bare:.2f} | {wall:.1f} | {wall / bare:.2f} "
            f"| {1000 * statistics.median(r['db']):.1f} ms of {1000 * statistics.median(r['batch']):.0f} ms "
            f"| {share:.2f}% (max batch {100 * max(d / b for d, b in zip(r['db'], r['batch'], strict=True)):.2f}%) "
            f"| {1000 * statistics.mean(r['load']):.2f} |"
        )
    lines += ["", "Per-round ratios (worker steady / bare), to show the machine's noise: " + "; ".join(
        f"{r['model']} " + ", ".join(f"{x:.2f}" for x in r["rounds"]) for r in results) + ".",
        "", "Steady state: from the first batch reaching the model to the last batch written. "
              "DB time per batch: the lease renewal plus the binary COPY and the finishing statement. "
              f"Failed images: {sum(r['failed'] for r in results)}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/pwssc_spc")
    ap.add_argument("--synthetic", type=int, default=0, help="generate this many images instead of --data")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=None, help="use only this many images")
    ap.add_argument("--models", default=DEFAULT_MODEL, help="comma-separated timm names")
    ap.add_argument("--random-weights", action="store_true", help="random init for models without local weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--loader-workers", type=int, default=1)
    ap.add_argument("--section", default="worker")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/BENCHMARKS.md alone")
    args = ap.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    try:
        files = image_files(args, scratch)
        results = [run_model(m, files, args, scratch) for m in args.models.split(",")]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    body = report(results, files, args)
    print(body)
    if not args.no_write:
        title = "Embedding worker throughput (" + ("GPU" if args.device.startswith("cuda") else "CPU") + ")"
        write_section(args.section, title, "python " + " ".join(["bench/worker_throughput.py", *sys.argv[1:]]), body)


if __name__ == "__main__":
    main()
