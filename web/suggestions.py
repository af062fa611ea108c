"""kNN suggestions in the API: groups by taxon, a page of one group, refresh on demand, accept a page."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, url_for

from plankton_db import labels, suggest
from plankton_db.embed import require_model
from web.auth import requires
from web.common import float_arg, int_arg, json_body, str_arg, tx

bp = Blueprint("suggestions", __name__, url_prefix="/api/suggestions")


@bp.route("")
@requires("viewer")
def review():
    """Without `taxon`: the groups of predictions. With it: a page of that group, most confident first."""
    taxon = str_arg("taxon")
    with tx() as s:
        if taxon is None:
            return jsonify(groups=suggest.groups(s))
        offset = int_arg("offset", 0, 0, 10**9)
        limit = int_arg("limit", 50, 1, 500)
        min_score = float_arg("min_score") or 0.0
        items, total = suggest.review_page(s, taxon, offset=offset, limit=limit, min_score=min_score)
    more = offset + len(items) < total
    return jsonify(taxon=taxon, total=total, offset=offset, next_offset=offset + limit if more else None,
                   items=[{**i.to_json(), "thumb": url_for("images.thumb", image_id=i.id)} for i in items])


@bp.route("/refresh", methods=["POST"])
@requires("annotator")
def refresh():
    """Recompute predictions from the current validated labels (and extend the neighbour graph)."""
    with tx() as s:
        model = require_model(s, str_arg("model"))
        summary = suggest.refresh(s, model.id)
    return jsonify(graph_added=summary.graph_added, predictions_written=summary.predictions_written,
                   predicted_images=summary.predicted_images)


@bp.route("/accept", methods=["POST"])
@requires("annotator")
def accept():
    """Validate the predicted taxon of every listed image, as one undoable action."""
    body = json_body()
    with tx() as s:
        r = labels.accept_predictions(s, body.get("image_ids"), annotator=g.user.name)
    return jsonify(action_id=r.action_id, kind=r.kind, images=r.images, annotations=r.annotations), 201
