"""A self-contained HTML report comparing embedding models on images none of them trained on."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.embed import ModelRow, require_model
from plankton_db.errors import InvalidArgument
from plankton_db.evaluate import DEPTH, Neighbours, average_precision, neighbour_lists

CSS = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;"
       "margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}"
       "td:first-child,th:first-child{text-align:left}img{max-width:100%}.note{color:#555}")


@dataclass(frozen=True)
class Scores:
    """One model under one metric, on the report's queries."""

    model: ModelRow
    metric: str
    run: Neighbours
    precision_at: list[float]
    top1: float
    map_at_10: float


def _score(model: ModelRow, metric: str, run: Neighbours) -> Scores:
    rels = [np.array([t == run.labels[q] for t in run.neighbours[q]], bool) for q in run.queries]
    p_at = [float(np.mean([r[:k].sum() / k for r in rels])) for k in range(1, DEPTH + 1)]
    aps = [average_precision(r, run.sizes[run.labels[q]] - 1) for r, q in zip(rels, run.queries, strict=True)]
    return Scores(model, metric, run, p_at, p_at[0], float(np.mean(aps)))


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _table(head: list[str], rows: list[list[object]]) -> str:
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))
    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows) + "</table>")


def _metrics_for(session: Session, model: ModelRow) -> list[str]:
    has_codes = session.scalar(sa.text("SELECT EXISTS (SELECT 1 FROM hash_projections WHERE model_id = :m)"),
                               {"m": model.id})
    return ["cosine", "l2"] + (["hamming"] if has_codes else [])


def _confusion(s: Scores) -> tuple[list[str], np.ndarray]:
    """Rows: true class, columns: the nearest neighbour's class."""
    taxa = sorted({s.run.labels[q] for q in s.run.queries}, key=lambda t: s.run.names[t])
    index = {t: i for i, t in enumerate(taxa)}
    m = np.zeros((len(taxa), len(taxa)), np.int64)
    for q in s.run.queries:
        first = s.run.neighbours[q][0] if s.run.neighbours[q] else None
        if first in index:
            m[index[s.run.labels[q]], index[first]] += 1
    return [s.run.names[t] for t in taxa], m


def build_report(session: Session, names: list[str] | None = None, *, title: str = "retrieval report") -> str:
    """Evaluate the models (default: every model with vectors of validated images) and return one HTML page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if names is None:
        names = list(session.scalars(sa.text(
            "SELECT m.name FROM embedding_models m WHERE EXISTS (SELECT 1 FROM embeddings e JOIN image_labels l "
            "ON l.image_id = e.image_id WHERE e.model_id = m.id AND l.status = 'validated') ORDER BY m.id")))
    if not names:
        raise InvalidArgument("nothing to report: no model has embeddings of images with validated labels")
    models = [require_model(session, n) for n in names]
    parents = dict(session.execute(sa.text("SELECT id, name FROM embedding_models")).all())
    parent_of = dict(session.execute(sa.text("SELECT id, parent_id FROM embedding_models")).all())
    trained = [m.id for m in models]
    scores = [_score(m, metric, neighbour_lists(session, m.id, metric=metric, holdout_of=trained))
              for m in models for metric in _metrics_for(session, m)]
    cosine = [s for s in scores if s.metric == "cosine"]
    n_q = len(cosine[0].run.queries)
    head = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>")
    note = (f"<p class=note>{n_q} queries: every validated image that none of the {len(models)} models trained on, "
            f"each searched against all other validated images (leave-one-out, exact SQL scans, depth {DEPTH}).</p>")
    parts = [head, note]

    parts.append("<h2>Models</h2>" + _table(
        ["model", "parent", "dims", "mode", "augment", "loss", "epochs", "train s", "training images"],
        [[m.name, parents.get(parent_of.get(m.id), "-"), m.dim, m.params.get("mode", "frozen"),
          ",".join(m.params.get("hyper", {}).get("augment", [])) or "-", m.params.get("hyper", {}).get("loss", "-"),
          m.params.get("metrics", {}).get("epochs_done", "-"), m.params.get("metrics", {}).get("train_seconds", "-"),
          m.params.get("n_train", 0)] for m in models]))
    parts.append("<h2>Retrieval quality</h2>" + _table(
        ["model", "metric", "top1", "precision@5", "precision@10", "mAP@10"],
        [[s.model.name, s.metric, s.top1, s.precision_at[4], s.precision_at[9], s.map_at_10] for s in scores]))

    fig, ax = plt.subplots(figsize=(7, 4))
    for s in cosine:
        ax.plot(range(1, DEPTH + 1), s.precision_at, marker="o", label=s.model.name)
    ax.set(xlabel="k", ylabel="precision@k (cosine)", title="precision@k", ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    parts.append("<h2>Precision@k</h2>" + _png(fig))

    ablation = [s for s in cosine if s.model.params.get("mode")]
    if ablation:
        base_top1 = {s.model.id: s.top1 for s in cosine}
        parts.append("<h2>Augmentation ablation</h2><p class=note>Trained models on the same queries; the change "
                     "is against the parent model measured here.</p>" + _table(
                         ["model", "augment", "tta", "loss", "top1", "change vs parent", "mAP@10"],
                         [[s.model.name, ",".join(s.model.params["hyper"].get("augment", [])) or "none",
                           s.model.params["hyper"].get("tta", False), s.model.params["hyper"].get("loss", "-"),
                           s.top1, (f"{s.top1 - base_top1[parent_of[s.model.id]]:+.3f}"
                                    if parent_of.get(s.model.id) in base_top1 else "-"), s.map_at_10]
                          for s in ablation]))

    for s in cosine:
        labels, m = _confusion(s)
        recall = m.diagonal() / np.maximum(m.sum(1), 1)
        precision = m.diagonal() / np.maximum(m.sum(0), 1)
        parts.append(f"<h2>{html.escape(s.model.name)}: per class (nearest neighbour as the prediction)</h2>" + _table(
            ["class", "queries", "precision", "recall"],
            [[c, m[i].sum(), float(precision[i]), float(recall[i])] for i, c in enumerate(labels)]))
        size = max(4.0, 0.35 * len(labels) + 2)
        fig, ax = plt.subplots(figsize=(size, size))
        norm = m / np.maximum(m.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), [c[:24] for c in labels], rotation=90, fontsize=7)
        ax.set_yticks(range(len(labels)), [c[:24] for c in labels], fontsize=7)
        ax.set(xlabel="nearest neighbour's class", ylabel="true class", title=f"confusion: {s.model.name}")
        parts.append(_png(fig))
    parts.append("</body></html>")
    return "\n".join(parts)
