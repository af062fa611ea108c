"""Image bytes by id, from the content store only (never a path from the request), and cached thumbnails."""

from __future__ import annotations

from flask import Blueprint, Response, request

from plankton_db.browse import image_info, image_sha256
from web.auth import requires
from web.common import state, tx

bp = Blueprint("images", __name__)

MIMETYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "BMP": "image/bmp"}


def _cached(data: bytes, mimetype: str, etag: str) -> Response:
    # Content never changes for an id (it is addressed by sha256), so browsers may keep it.
    resp = Response(data, mimetype=mimetype)
    resp.set_etag(etag)
    resp.headers["Cache-Control"] = "private, max-age=86400, immutable"
    return resp.make_conditional(request)


@bp.route("/images/<int:image_id>/thumb")
@requires("viewer")
def thumb(image_id: int):
    """A JPEG thumbnail, made once and cached on disk."""
    with tx() as s:
        sha = image_sha256(s, image_id)
    return _cached(state().thumbs.get(sha), "image/jpeg", f"t-{sha}")


@bp.route("/images/<int:image_id>/file")
@requires("viewer")
def full(image_id: int):
    """The original stored bytes."""
    with tx() as s:
        info = image_info(s, image_id)
    sha, fmt = info["sha256"], info["format"]
    data = state().store.read(sha)
    # TIFF and BMP do not display in every browser, but the bytes are the original either way.
    resp = _cached(data, MIMETYPES.get(fmt, "application/octet-stream"), f"f-{sha}")
    resp.headers["Content-Disposition"] = f'inline; filename="{image_id}.{fmt.lower()}"'
    return resp
