"""The HTML pages: browse, similar, review and stats. They are shells; the script fills them from the API."""

from __future__ import annotations

from pathlib import Path

import xstatic.pkg.jquery as xjquery
from flask import Blueprint, render_template, send_file

from plankton_db import browse, labels
from web.auth import requires
from web.common import tx

bp = Blueprint("pages", __name__)

JQUERY = Path(xjquery.BASE_DIR) / "jquery.min.js"


@bp.route("/")
@requires("viewer")
def browse_page():
    """The thumbnail grid with filters."""
    return _grid("browse")


@bp.route("/similar/<int:image_id>")
@requires("viewer")
def similar_page(image_id: int):
    """The neighbours of one image."""
    with tx() as s:
        browse.image_sha256(s, image_id)  # a plain 404 page for an unknown id
    return _grid("similar", image_id=image_id)


@bp.route("/review")
@requires("viewer")
def review_page():
    """Predictions grouped by taxon, a page at a time."""
    return _grid("review")


@bp.route("/stats")
@requires("viewer")
def stats_page():
    """Counts per status and taxon, and labels per hour per user."""
    with tx() as s:
        data = labels.stats(s)
    return render_template("stats.html", stats=data)


def _grid(mode: str, image_id: int | None = None):
    return render_template("grid.html", mode=mode, image_id=image_id, metrics=browse.search_metrics(),
                           methods=browse.search_methods(), sorts=browse.SORTS, statuses=browse.STATUSES)


@bp.route("/vendor/jquery.js")
@requires("public")
def jquery():
    """jQuery, served from the installed xstatic-jquery package (no CDN, no copy in this repository)."""
    return send_file(JQUERY, mimetype="text/javascript", max_age=86400)
