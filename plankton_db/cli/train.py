"""Training commands: train, augment-preview and report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from plankton_db.cli.common import Device, app, err, handles_errors, open_db, out


@app.command()
@handles_errors
def train(
    base: Annotated[str | None, typer.Option("--base", help="model whose features to start from (default: default)")] = None,
    name: Annotated[str | None, typer.Option("--name", help="name of the new model (default: BASE-MODE-N)")] = None,
    mode: Annotated[str, typer.Option("--mode", help="head (a projection on cached features, seconds), last (the backbone's last stage on cached trunk outputs, minutes on a CPU) or full (every layer; meant for a GPU)")] = "head",
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, max=10000,
                                               help="default: 30 (head, full), 16 (last)")] = None,
    augment: Annotated[str, typer.Option("--augment", help="none, dihedral, or a list of rotate,flip,blur,color,scale")]
    = "none",
    copies: Annotated[int, typer.Option("--copies", min=1, max=64, help="random augmented copies per image (head, last)")] = 4,
    holdout: Annotated[float, typer.Option("--holdout", min=0.0, max=0.95, help="fraction never trained on")] = 0.2,
    loss: Annotated[str, typer.Option("--loss", help="normface, arcface or supcon")] = "normface",
    dim: Annotated[int, typer.Option("--dim", min=2, max=4096, help="embedding dimensions")] = 256,
    hidden: Annotated[int, typer.Option("--hidden", min=0, max=8192, help="head's hidden units (0: linear)")] = 512,
    tta: Annotated[bool, typer.Option("--tta", help="embed as the mean over the 8 flips/rotations (8x compute)")]
    = False,
    limit_per_class: Annotated[int, typer.Option("--limit-per-class", min=0,
                                                 help="full and last modes: training images per class")] = 0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Device = "auto",
) -> None:
    """Learn a new embedding space from the validated labels and register it as a model."""
    from plankton_db.store import ContentStore
    from plankton_db.train import TrainConfig
    from plankton_db.train import train as run_training

    cfg = TrainConfig(base=base, name=name, mode=mode, epochs=epochs, augment=tuple(augment.split(",")),
                      copies=copies, holdout=holdout, loss=loss, dim=dim, hidden=hidden, tta=tta, seed=seed,
                      device=device, limit_per_class=limit_per_class)
    cfg.check()
    db = open_db()
    result = run_training(
        db.Session, ContentStore(db.settings.store), cfg, cache_dir=db.settings.home / "cache",
        on_message=lambda m: err.print(m, highlight=False, markup=False),
        on_epoch=lambda e, loss_, sec: err.print(f"epoch {e}/{cfg.n_epochs}  loss {loss_:.4f}  ({sec:.1f} s)",
                                                highlight=False),
        on_progress=lambda done, total: err.print(f"augmented views: {done}/{total} images", highlight=False)
        if done == total or done % 320 == 0 else None,
    )
    db.dispose()
    m = result.metrics
    if result.interrupted:
        out.print(f"interrupted after epoch {result.epochs_done}: that checkpoint was kept", highlight=False)
    out.print(f"registered {result.model.name} ({result.model.dim} dims, parent {cfg.base or 'default'}) from "
              f"{result.n_train} training images in {result.seconds:.1f} s; checkpoint sha256 "
              f"{result.model.weights_sha256[:12]}…", highlight=False, soft_wrap=True)
    if "holdout_top1" in m:
        out.print(f"holdout top1 {m['holdout_top1']:.3f} (base {m['base_holdout_top1']:.3f}) over "
                  f"{result.n_holdout} images", highlight=False)
    if result.embedded:
        out.print(f"{result.embedded} images embedded from cached base vectors; new images: "
                  f"`plankton embed --model {result.model.name}` or `--enqueue`", highlight=False, soft_wrap=True)
    else:
        out.print(f"next: plankton embed --model {result.model.name} (or --enqueue and plankton worker), then "
                  f"plankton eval --model {result.model.name} --holdout", highlight=False, soft_wrap=True)


@app.command("augment-preview")
@handles_errors
def augment_preview(
    image: Annotated[Path, typer.Argument(help="an image file")],
    out_path: Annotated[Path, typer.Option("--out", help="PNG grid to write")] = Path("augment-preview.png"),
    augment: Annotated[str, typer.Option("--augment", help="dihedral, or a list of rotate,flip,blur,color,scale")]
    = "rotate,flip,blur,color,scale",
    n: Annotated[int, typer.Option("-n", min=1, max=64, help="random views")] = 9,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Write a grid of the original image and what training sees after augmentation."""
    from plankton_db import augment as aug
    from plankton_db.errors import InvalidArgument
    from plankton_db.imageio import decode

    names = aug.parse(augment)
    if not names:
        raise InvalidArgument("--augment names no augmentation")
    try:
        data = image.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {image}: {exc.strerror or exc}") from None
    grid = aug.preview(decode(data).image, names, n=n, seed=seed)
    try:
        grid.save(out_path, format="PNG")
    except OSError as exc:
        raise InvalidArgument(f"cannot write {out_path}: {exc.strerror or exc}") from None
    out.print(f"wrote {out_path} ({grid.width}x{grid.height}): the original, then {len(names) and n} views",
              highlight=False)


@app.command()
@handles_errors
def report(
    out_path: Annotated[Path, typer.Argument(help="HTML file to write")],
    models: Annotated[list[str] | None, typer.Option("--model", help="models to compare (default: all embedded)")]
    = None,
    title: Annotated[str, typer.Option("--title")] = "plankton-db retrieval report",
) -> None:
    """Write a self-contained HTML report: metrics, per-class precision/recall, confusion, precision@k, ablation."""
    from plankton_db.report import build_report

    db = open_db()
    with db.Session.begin() as s:
        html = build_report(s, models or None, title=title)
    db.dispose()
    try:
        out_path.write_text(html, encoding="utf-8")
    except OSError as exc:
        from plankton_db.errors import InvalidArgument

        raise InvalidArgument(f"cannot write {out_path}: {exc.strerror or exc}") from None
    out.print(f"wrote {out_path} ({len(html) // 1024} KiB)", highlight=False)
