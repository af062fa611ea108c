"""The REST API through Flask's test client, against the real seeded PostgreSQL: results and bad input."""

from __future__ import annotations

import io

import pytest
import sqlalchemy as sa
from PIL import Image

from web_support import WebEnv


@pytest.fixture
def anna(web: WebEnv):
    client, csrf = web.login("anna")
    client.environ_base["HTTP_X_CSRF_TOKEN"] = csrf
    return client


def test_list_images_filters_sorts_and_pages(web: WebEnv, anna) -> None:
    all_ = anna.get("/api/images?limit=200").get_json()
    assert all_["total"] == 30 and len(all_["items"]) == 30 and all_["next_offset"] is None
    assert all_["items"][0]["thumb"] == f"/images/{all_['items'][0]['id']}/thumb"
    unl = anna.get("/api/images?status=unlabeled&limit=5").get_json()
    assert unl["total"] == 12 and len(unl["items"]) == 5 and unl["next_offset"] == 5
    assert all(i["taxon"] is None for i in unl["items"])
    page2 = anna.get("/api/images?status=unlabeled&limit=5&offset=5").get_json()
    assert not {i["id"] for i in unl["items"]} & {i["id"] for i in page2["items"]}
    cop = anna.get("/api/images?taxon=copepod").get_json()
    assert cop["total"] == 6 and {i["taxon"] for i in cop["items"]} == {"copepod"}
    assert anna.get("/api/images?sample=synthetic&instrument=synth").get_json()["total"] == 30
    assert anna.get("/api/images?sample=other").get_json()["total"] == 0
    sizes = [i["width"] * i["height"] for i in anna.get("/api/images?sort=size").get_json()["items"]]
    assert sizes == sorted(sizes, reverse=True)
    r1 = [i["id"] for i in anna.get("/api/images?sort=random&seed=3").get_json()["items"]]
    assert r1 == [i["id"] for i in anna.get("/api/images?sort=random&seed=3").get_json()["items"]]
    assert sorted(r1) == sorted(i["id"] for i in all_["items"]) and r1 != sorted(r1)
    ref = web.seeded.ids_by_class["copepod"][0]
    sim = anna.get(f"/api/images?sort=similarity&ref={ref}&limit=5").get_json()["items"]
    assert sim[0]["id"] == ref and sim[0]["distance"] == pytest.approx(0, abs=1e-5)
    assert [i["distance"] for i in sim] == sorted(i["distance"] for i in sim)
    assert anna.get("/api/images?depth_min=0&date_from=2024-01-01").get_json()["total"] == 0


@pytest.mark.parametrize(("query", "message"), [
    ("status=maybe", "unknown status 'maybe'; choose one of: unlabeled, predicted, validated, dubious, todo"),
    ("sort=size2", "unknown sort 'size2'; choose one of: ingested, random, size, confidence, similarity"),
    ("limit=0", "limit must be between 1 and 500, got 0"),
    ("limit=abc", "limit must be an integer, got 'abc'"),
    ("offset=-1", "offset must be between 0 and 1000000000, got -1"),
    ("date_from=yesterday", "date_from must be an ISO date like 2024-05-31, got 'yesterday'"),
    ("depth_min=deep", "depth_min must be a number, got 'deep'"),
    ("sort=similarity", "sort=similarity needs a reference image (ref=ID)"),
])
def test_list_images_bad_parameters(anna, query: str, message: str) -> None:
    resp = anna.get(f"/api/images?{query}")
    assert resp.status_code == 400
    assert resp.get_json() == {"error": message}


def test_image_info_thumbnail_and_file(web: WebEnv, anna) -> None:
    image_id = web.seeded.ids_by_class["copepod"][0]
    info = anna.get(f"/api/images/{image_id}").get_json()
    assert info["taxon"] == "copepod" and info["status"] == "validated" and len(info["sha256"]) == 64
    thumb = anna.get(f"/images/{image_id}/thumb")
    assert thumb.status_code == 200 and thumb.mimetype == "image/jpeg"
    assert max(Image.open(io.BytesIO(thumb.data)).size) == 160
    cached = web.settings.home / "thumbs" / "v1" / info["sha256"][:2] / f"{info['sha256']}.jpg"
    assert cached.read_bytes() == thumb.data  # made once, then served from the cache
    assert anna.get(f"/images/{image_id}/thumb", headers={"If-None-Match": thumb.headers["ETag"]}).status_code == 304
    full = anna.get(f"/images/{image_id}/file")
    assert full.mimetype == "image/png" and Image.open(io.BytesIO(full.data)).format == "PNG"
    for path in ("/api/images/999999", "/images/999999/thumb", "/images/999999/file"):
        resp = anna.get(path)
        assert resp.status_code == 404, path
    assert anna.get("/api/images/999999").get_json() == {"error": "no image with id 999999"}
    assert anna.get("/images/..%2f..%2fetc%2fpasswd/file").status_code == 404


def test_similar_pages_continue_one_ranking(web: WebEnv, anna) -> None:
    image_id = web.seeded.ids_by_class["copepod"][0]
    whole = anna.get(f"/api/images/{image_id}/similar?k=20").get_json()
    assert whole["query"] == {"image_id": image_id} and whole["metric"] == "cosine" and whole["method"] == "exact"
    assert len(whole["items"]) == 20 and whole["next_offset"] == 20
    first = anna.get(f"/api/images/{image_id}/similar?k=8").get_json()
    second = anna.get(f"/api/images/{image_id}/similar?k=8&offset={first['next_offset']}").get_json()
    assert [i["id"] for i in first["items"] + second["items"]] == [i["id"] for i in whole["items"][:16]]
    last = anna.get(f"/api/images/{image_id}/similar?k=20&offset=20").get_json()
    assert len(last["items"]) == 9 and last["next_offset"] is None  # 29 others in all
    todo = anna.get(f"/api/images/{image_id}/similar?k=50&todo=1").get_json()["items"]
    assert len(todo) == 12 and all(i["status"] is None for i in todo)
    l2 = anna.get(f"/api/images/{image_id}/similar?k=5&metric=l2").get_json()
    assert l2["metric"] == "l2" and l2["items"][0]["distance"] > 0
    only = anna.get(f"/api/images/{image_id}/similar?k=50&taxon=diatom_chain").get_json()["items"]
    assert {i["taxon"] for i in only} == {"diatom_chain"}


@pytest.mark.parametrize(("query", "status", "message"), [
    ("k=0", 400, "k must be between 1 and 500, got 0"),
    ("metric=manhattan", 400, "unknown metric 'manhattan'; choose one of: "),
    ("method=magic", 400, "unknown method 'magic'; choose one of: "),
    ("unlabeled=perhaps", 400, "unlabeled must be true or false, got 'perhaps'"),
    ("model=nope", 404, "unknown model 'nope' (registered: tf_efficientnet_lite0)"),
])
def test_similar_bad_parameters(web: WebEnv, anna, query: str, status: int, message: str) -> None:
    image_id = web.seeded.ids_by_class["copepod"][0]
    resp = anna.get(f"/api/images/{image_id}/similar?{query}")
    assert resp.status_code == status
    assert resp.get_json()["error"].startswith(message)


def test_similar_unknown_image(anna) -> None:
    resp = anna.get("/api/images/999999/similar")
    assert resp.status_code == 404 and resp.get_json() == {"error": "no image with id 999999"}


def test_search_by_upload(web: WebEnv, anna, image_folder) -> None:
    data = next((image_folder / "radiolarian").iterdir()).read_bytes()
    resp = anna.post("/api/search?k=5", data={"file": (io.BytesIO(data), "query.png")},
                     content_type="multipart/form-data")
    body = resp.get_json()
    assert resp.status_code == 200, body
    assert body["query"]["file"] == "query.png" and body["items"][0]["distance"] == pytest.approx(0, abs=1e-4)
    assert body["items"][0]["taxon"] == "radiolarian"


@pytest.mark.parametrize(("payload", "status", "message"), [
    (None, 400, "send the image as a multipart form field named 'file'"),
    (b"", 400, "empty file"),
    (b"GIF89a not really", 400, "not an image (unrecognised content)"),
    ("truncated", 400, "corrupt or truncated image"),
])
def test_search_rejects_bad_uploads(anna, payload, status, message) -> None:
    if payload == "truncated":
        buf = io.BytesIO()
        Image.effect_noise((64, 64), 50).save(buf, "PNG")
        payload = buf.getvalue()[: len(buf.getvalue()) // 2]
    data = {} if payload is None else {"file": (io.BytesIO(payload), "x.png")}
    resp = anna.post("/api/search", data=data, content_type="multipart/form-data")
    assert resp.status_code == status
    assert resp.get_json()["error"].startswith(message)


def test_search_upload_size_limit(web: WebEnv, anna) -> None:
    web.app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    resp = anna.post("/api/search", data={"file": (io.BytesIO(b"x" * (2 * 1024 * 1024)), "big.png")},
                     content_type="multipart/form-data")
    assert resp.status_code == 413
    assert resp.get_json() == {"error": "upload too large: the limit is 1 MiB"}


def test_annotate_history_undo(web: WebEnv, anna) -> None:
    ids = web.seeded.ids_by_class["detritus"][:3]
    resp = anna.post("/api/annotations", json={"image_ids": ids, "taxon": "radiolarian", "status": "validated"})
    assert resp.status_code == 201
    first = resp.get_json()
    assert first["images"] == 3 and first["annotations"] == 3 and first["kind"] == "label"
    resp = anna.post("/api/annotations", json={"image_ids": ids[:1], "status": "dubious"})
    assert resp.get_json()["kind"] == "dubious"
    hist = anna.get(f"/api/images/{ids[0]}/annotations").get_json()["annotations"]
    assert [(h["status"], h["taxon"], h["annotator"], h["current"]) for h in hist] == [
        ("dubious", "radiolarian", "anna", True), ("validated", "radiolarian", "anna", False)]
    assert anna.post("/api/undo").get_json()["kind"] == "dubious"
    hist = anna.get(f"/api/images/{ids[0]}/annotations").get_json()["annotations"]
    assert [(h["status"], h["retracted"], h["current"]) for h in hist] == [("dubious", True, False),
                                                                          ("validated", False, True)]
    assert anna.post("/api/undo").get_json()["action_id"] == first["action_id"]
    with web.session() as s:
        assert s.execute(sa.text("SELECT count(*) FROM image_labels WHERE image_id = ANY(:i)"), {"i": ids}).scalar() == 0
        assert s.execute(sa.text("SELECT count(*) FROM annotations WHERE image_id = ANY(:i)"), {"i": ids}).scalar() == 4
    resp = anna.post("/api/undo")
    assert resp.status_code == 409 and resp.get_json() == {"error": "anna has no action to undo"}


@pytest.mark.parametrize(("body", "status", "message"), [
    ("not json", 400, "the request body must be a JSON object (Content-Type: application/json)"),
    ({"image_ids": [], "taxon": "copepod"}, 400, "image_ids must be a non-empty list of image ids"),
    ({"image_ids": "1", "taxon": "copepod"}, 400, "image_ids must be a non-empty list of image ids"),
    ({"image_ids": [1, "2"], "taxon": "copepod"}, 400, "image_ids must be positive integers"),
    ({"image_ids": [999999], "taxon": "copepod"}, 404, "no image with id 999999"),
    ({"image_ids": [1], "taxon": ""}, 400, "taxon must be a non-empty string"),
    ({"image_ids": [1], "taxon": "x" * 201}, 400, "taxon names are at most 200 characters"),
    ({"image_ids": [1], "taxon": "Unknownia"}, 400,
     "unknown taxon 'Unknownia'; pick one from the list or confirm creating it"),
    ({"image_ids": [1], "taxon": "copepod", "status": "predicted"}, 400, "status must be one of: validated, dubious"),
    ({"image_ids": [1], "taxon": "copepod", "new_taxon": "yes"}, 400, "new_taxon must be true or false"),
])
def test_annotate_bad_input(anna, body, status, message) -> None:
    if isinstance(body, str):
        resp = anna.post("/api/annotations", data=body, content_type="text/plain")
    else:
        resp = anna.post("/api/annotations", json=body)
    assert resp.status_code == status
    assert resp.get_json() == {"error": message}


def test_new_taxon_and_dubious_without_label(web: WebEnv, anna) -> None:
    image_id = web.seeded.ids_by_class["chaetognath"][0]
    resp = anna.post("/api/annotations", json={"image_ids": [image_id], "status": "dubious"})
    assert resp.status_code == 400
    assert resp.get_json() == {"error": f"image {image_id} has no label to mark dubious; give a taxon"}
    resp = anna.post("/api/annotations", json={"image_ids": [image_id], "taxon": "Sagitta", "new_taxon": True})
    assert resp.status_code == 201
    taxa = anna.get("/api/taxa?q=sag").get_json()["taxa"]
    assert taxa == [{"id": taxa[0]["id"], "name": "Sagitta", "parent": None, "images": 1}]


def test_history_of_unknown_image(anna) -> None:
    resp = anna.get("/api/images/999999/annotations")
    assert resp.status_code == 404 and resp.get_json() == {"error": "no image with id 999999"}


def test_taxa_and_stats(web: WebEnv, anna) -> None:
    names = [t["name"] for t in anna.get("/api/taxa").get_json()["taxa"]]
    assert {"copepod", "diatom_chain", "radiolarian"} <= set(names)
    assert anna.get("/api/taxa?q=%25").get_json()["taxa"] == []  # % is a literal, not a wildcard
    assert anna.get("/api/taxa?limit=0").get_json() == {"error": "limit must be between 1 and 1000, got 0"}
    anna.post("/api/annotations", json={"image_ids": web.seeded.ids_by_class["detritus"], "taxon": "copepod"})
    stats = anna.get("/api/stats").get_json()
    assert stats["images"] == 30
    assert stats["status"] == {"unlabeled": 6, "predicted": 0, "validated": 24, "dubious": 0}
    assert {"taxon": "copepod", "predicted": 0, "validated": 12, "dubious": 0} in stats["taxa"]
    mine = next(u for u in stats["users"] if u["annotator"] == "anna")
    assert mine["labels"] == 6 and mine["active_hours"] == 1 and mine["labels_per_hour"] == 6.0


def test_suggestions_refresh_review_accept(web: WebEnv, anna) -> None:
    assert anna.get("/api/suggestions").get_json() == {"groups": []}
    refreshed = anna.post("/api/suggestions/refresh").get_json()
    assert refreshed["graph_added"] == 30 and refreshed["predicted_images"] == 12
    groups = anna.get("/api/suggestions").get_json()["groups"]
    assert sum(g["images"] for g in groups) == 12
    taxon = groups[0]["taxon"]
    page = anna.get(f"/api/suggestions?taxon={taxon}&limit=50").get_json()
    scores = [i["score"] for i in page["items"]]
    assert page["total"] == groups[0]["images"] and scores == sorted(scores, reverse=True)
    assert all(0 < s <= 1 and i["status"] == "predicted" for s, i in zip(scores, page["items"]))
    with web.session() as s:
        src = s.execute(sa.text("SELECT DISTINCT source, annotator FROM annotations WHERE status = 'predicted'")).all()
    assert src == [("knn", "knn")]
    ids = [i["id"] for i in page["items"]]
    accepted = anna.post("/api/suggestions/accept", json={"image_ids": ids})
    assert accepted.status_code == 201 and accepted.get_json()["images"] == len(ids)
    assert anna.get(f"/api/images/{ids[0]}").get_json()["status"] == "validated"
    again = anna.post("/api/suggestions/accept", json={"image_ids": ids[:1]})
    assert again.status_code == 400 and again.get_json() == {"error": f"image {ids[0]} has no prediction to accept"}
    assert anna.post("/api/suggestions/refresh").get_json()["graph_added"] == 0


@pytest.mark.parametrize(("query", "message"), [
    ("taxon=copepod&limit=0", "limit must be between 1 and 500, got 0"),
    ("taxon=copepod&min_score=high", "min_score must be a number, got 'high'"),
])
def test_suggestions_bad_parameters(anna, query, message) -> None:
    resp = anna.get(f"/api/suggestions?{query}")
    assert resp.status_code == 400 and resp.get_json() == {"error": message}


def test_options_and_users(web: WebEnv) -> None:
    client, _ = web.login("admin")
    opts = client.get("/api/options").get_json()
    assert "cosine" in opts["metrics"] and "exact" in opts["methods"] and "todo" in opts["statuses"]
    users = client.get("/api/users").get_json()["users"]
    assert users == [{"name": "admin", "role": "admin"}, {"name": "anna", "role": "annotator"},
                     {"name": "victor", "role": "viewer"}]


def test_pages_render(web: WebEnv, anna) -> None:
    image_id = web.seeded.ids_by_class["copepod"][0]
    for path in ("/", f"/similar/{image_id}", "/review", "/stats"):
        resp = anna.get(path)
        assert resp.status_code == 200, path
        assert 'name="csrf-token"' in resp.get_data(as_text=True)
