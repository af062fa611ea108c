"""The REST JSON API the page's script and other scripts share."""

from __future__ import annotations

from flask import Blueprint, g, jsonify, request, url_for

from plankton_db import browse, labels, users
from plankton_db.embed import require_model
from plankton_db.errors import InvalidArgument
from plankton_db.imageio import decode
from plankton_db.retrieval import Filters
from plankton_db.store import sha256_bytes
from web.auth import requires
from web.common import bool_arg, choice_arg, date_arg, float_arg, int_arg, json_body, state, str_arg, tx

bp = Blueprint("api", __name__, url_prefix="/api")

RECENT_VECTORS = 32


def _item(item: browse.Item) -> dict:
    return {**item.to_json(), "thumb": url_for("images.thumb", image_id=item.id)}


def _page(page: browse.Page, **extra) -> dict:
    return {**extra, "items": [_item(i) for i in page.items], "total": page.total, "offset": page.offset,
            "next_offset": page.next_offset}


def _browse_filters() -> browse.BrowseFilters:
    return browse.BrowseFilters(
        status=str_arg("status"), taxon=str_arg("taxon"), sample=str_arg("sample"),
        instrument=str_arg("instrument"), date_from=date_arg("date_from"), date_to=date_arg("date_to"),
        depth_min=float_arg("depth_min"), depth_max=float_arg("depth_max"),
    )


@bp.route("/images")
@requires("viewer")
def list_images():
    """A page of images with filters, sort order and paging."""
    filters = _browse_filters()
    sort = choice_arg("sort", "ingested", browse.SORTS)
    offset = int_arg("offset", 0, 0, 10**9)
    limit = int_arg("limit", 100, 1, browse.MAX_PAGE)
    seed = int_arg("seed", 0, 0, 2**31 - 1)
    ref = int_arg("ref", None, 1, 2**62)
    with tx() as s:
        model_id = require_model(s, str_arg("model")).id if sort == "similarity" else None
        page = browse.list_images(s, filters, sort=sort, offset=offset, limit=limit, seed=seed,
                                  reference=ref, model_id=model_id)
    return jsonify(_page(page, sort=sort))


@bp.route("/images/<int:image_id>")
@requires("viewer")
def image(image_id: int):
    """One image's metadata and current label."""
    with tx() as s:
        info = browse.image_info(s, image_id)
    return jsonify({**info, "thumb": url_for("images.thumb", image_id=image_id),
                    "file": url_for("images.full", image_id=image_id)})


def _search_args() -> dict:
    return {
        "metric": choice_arg("metric", "cosine", browse.search_metrics()),
        "method": choice_arg("method", "exact", browse.search_methods()),
        "k": int_arg("k", 100, 1, browse.MAX_PAGE),
        "offset": int_arg("offset", 0, 0, browse.MAX_SIMILAR - 1),
        "filters": Filters(taxon=str_arg("taxon"), sample=str_arg("sample"), unlabeled=bool_arg("unlabeled")),
        "todo": bool_arg("todo"),
    }


@bp.route("/images/<int:image_id>/similar")
@requires("viewer")
def similar(image_id: int):
    """The k nearest neighbours of a stored image, from `offset` on, with distances."""
    args = _search_args()
    with tx() as s:
        model = require_model(s, str_arg("model"))
        page = browse.similar(s, model.id, image_id=image_id, **args)
    return jsonify(_page(page, query={"image_id": image_id}, model=model.name, metric=args["metric"],
                         method=args["method"], k=args["k"]))


def _encoder(s, name: str):
    from plankton_db.embed import load_encoder

    st = state()
    with st.lock:  # one CNN per model per process; loading takes seconds and memory
        if name not in st.encoders:
            st.encoders[name] = load_encoder(s, name, device="cpu", store=st.store)[0]
        return st.encoders[name]


def _upload_vector(s, model, data: bytes):
    st = state()
    key = (model.name, sha256_bytes(data))
    with st.lock:
        if key in st.vectors:
            st.vectors.move_to_end(key)
            return st.vectors[key]
    decoded = decode(data, max_pixels=st.settings.max_pixels)
    vector = _encoder(s, model.name).encode([decoded.image])[0]
    with st.lock:
        st.vectors[key] = vector
        while len(st.vectors) > RECENT_VECTORS:
            st.vectors.popitem(last=False)
    return vector


@bp.route("/search", methods=["POST"])
@requires("viewer")
def search():
    """Nearest neighbours of an uploaded image (multipart field `file`), validated like ingest."""
    upload = request.files.get("file")
    if upload is None:
        raise InvalidArgument("send the image as a multipart form field named 'file'")
    data = upload.read()
    args = _search_args()
    with tx() as s:
        model = require_model(s, str_arg("model"))
        vector = _upload_vector(s, model, data)
        page = browse.similar(s, model.id, vector=vector, **args)
    return jsonify(_page(page, query={"file": (upload.filename or "")[:200], "sha256": sha256_bytes(data)},
                         model=model.name, metric=args["metric"], method=args["method"], k=args["k"]))


def _result(r: labels.ActionResult) -> dict:
    return {"action_id": r.action_id, "kind": r.kind, "images": r.images, "annotations": r.annotations}


@bp.route("/annotations", methods=["POST"])
@requires("annotator")
def annotate():
    """Give the images one taxon (validated), or mark them dubious, as one undoable action."""
    body = json_body()
    status = body.get("status", "validated")
    if status not in labels.HUMAN_STATUSES:
        raise InvalidArgument(f"status must be one of: {', '.join(labels.HUMAN_STATUSES)}")
    new_taxon = body.get("new_taxon", False)
    if not isinstance(new_taxon, bool):
        raise InvalidArgument("new_taxon must be true or false")
    with tx() as s:
        if status == "dubious" and body.get("taxon") in (None, ""):
            result = labels.mark_dubious(s, body.get("image_ids"), annotator=g.user.name)
        else:
            result = labels.label_images(s, body.get("image_ids"), body.get("taxon"), status=status,
                                         annotator=g.user.name, create_taxon=new_taxon)
    return jsonify(_result(result)), 201


@bp.route("/undo", methods=["POST"])
@requires("annotator")
def undo():
    """Retract the current user's last action."""
    with tx() as s:
        result = labels.undo_last(s, g.user.name)
    return jsonify(_result(result))


@bp.route("/images/<int:image_id>/annotations")
@requires("viewer")
def image_history(image_id: int):
    """Every annotation of the image, newest first, marked retracted or current."""
    with tx() as s:
        entries = labels.history(s, image_id)
    return jsonify(image_id=image_id, annotations=[
        {**e.__dict__, "created_at": e.created_at.isoformat()} for e in entries])


@bp.route("/taxa")
@requires("viewer")
def taxa():
    """Taxa matching `q` (for the autocomplete), with how many images carry each."""
    q = str_arg("q") or ""
    with tx() as s:
        rows = labels.search_taxa(s, q, int_arg("limit", 50, 1, 1000))
    return jsonify(taxa=rows)


@bp.route("/stats")
@requires("viewer")
def stats():
    """Counts per status and taxon, and each user's labels per hour."""
    with tx() as s:
        return jsonify(labels.stats(s))


@bp.route("/options")
@requires("viewer")
def options():
    """The metrics, search methods, sort orders and statuses the UI can offer."""
    return jsonify(metrics=list(browse.search_metrics()), methods=list(browse.search_methods()),
                   sorts=list(browse.SORTS), statuses=list(browse.STATUSES))


@bp.route("/users")
@requires("admin")
def list_users():
    """Every user and role (admins only)."""
    with tx() as s:
        return jsonify(users=[{"name": u.name, "role": u.role} for u in users.list_users(s)])
