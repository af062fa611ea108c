"""`plankton worker` (drain the embedding queue) and `plankton status` (queue counts, rate, time left)."""

from __future__ import annotations

import json
import logging
from typing import Annotated

import typer
from rich.table import Table

from plankton_db.cli.common import JsonOut, ModelOpt, app, handles_errors, open_db, out
from plankton_db.errors import InvalidArgument


@app.command("worker")
@handles_errors
def worker_cmd(
    model: ModelOpt = None,
    checkpoint: Annotated[str | None, typer.Option("--checkpoint", help="local weights for a timm model")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per claim and per forward pass")] = 64,
    exit_when_empty: Annotated[bool, typer.Option("--exit-when-empty", help="exit once no job is pending or running")]
    = False,
    loader_workers: Annotated[int | None, typer.Option("--loader-workers",
                                                       help="decoding processes (default: 1 on CPU, up to 8 on CUDA)")]
    = None,
    lease_seconds: Annotated[float, typer.Option("--lease-seconds",
                                                 help="how long a claim is held before others may take it over")]
    = 600.0,
    max_attempts: Annotated[int, typer.Option("--max-attempts", help="tries per image before it is marked failed")] = 3,
    log_every: Annotated[float, typer.Option("--log-every", help="seconds between throughput log lines")] = 30.0,
) -> None:
    """Embed queued images until stopped; SIGTERM finishes the current batch, then exits."""
    from worker import Worker, WorkerConfig, stop_on_signals

    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise InvalidArgument(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    config = WorkerConfig(model=model, checkpoint=checkpoint, device=device, batch_size=batch_size,
                          exit_when_empty=exit_when_empty, loader_workers=loader_workers, lease_seconds=lease_seconds,
                          max_attempts=max_attempts, log_every_s=log_every)
    config.check()
    # The worker is a long-running service: its throughput log is the point, so INFO even without -v.
    logging.getLogger("worker").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    db = open_db()
    try:
        w = Worker(db, config)
        with stop_on_signals(w):
            stats = w.run()
    finally:
        db.dispose()
    out.print(f"worker {w.name}: {stats.embedded} embedded with {stats.model} on {stats.device} "
              f"({stats.images_per_second:.1f} images/s), {stats.failed} failed, {stats.retried} retried"
              + (", stopped on request" if w.stopping else ""), highlight=False)


@app.command("status")
@handles_errors
def status_cmd(model: ModelOpt = None, as_json: JsonOut = False) -> None:
    """Embedding queue counts per model (pending, running, done, failed), with rate and time left."""
    from plankton_db.embed import require_model
    from plankton_db.queue import queue_status

    db = open_db()
    try:
        with db.Session() as s:
            only = require_model(s, model).id if model else None
            st = queue_status(s, model_id=only)
    finally:
        db.dispose()
    if as_json:
        out.print_json(json.dumps(st.to_json()))
        return
    total = st.to_json()
    out.print(f"{st.images} images; jobs: {total['pending']} pending, {total['running']} running, "
              f"{total['done']} done, {total['failed']} failed", highlight=False)
    if not st.models:
        out.print("no embedding model registered yet: start `plankton worker` or run `plankton embed`")
        return
    table = Table()
    for col in ("model", "embedded", "pending", "running", "done", "failed", "images/s", "time left"):
        table.add_column(col)
    for m in st.models:
        eta = "-" if m.eta_s is None else _duration(m.eta_s)
        table.add_row(m.name, str(m.embedded), str(m.pending), str(m.running), str(m.done), str(m.failed),
                      f"{m.rate_per_s:.1f}", eta)
    out.print(table)
    for m in st.models:
        for e in m.errors:
            out.print(f"failed {m.name} image {e['image_id']}: {e['error']}", highlight=False, markup=False)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
