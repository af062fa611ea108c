"""Two labelers on overlapping selections at the same moment, through the real HTTP server, with threads.

The documented rule (migration 0001, docs/RELIABILITY.md): an image's current label is its newest
non-retracted annotation, a human decision (validated, dubious) outranking any prediction; "newest" is
the annotation's created_at (its transaction's start), ties broken by annotation id. Commit order does
not matter, so the rule can be recomputed from the history alone and compared.
"""

from __future__ import annotations

import http.client
import json
import threading

import pytest
import sqlalchemy as sa

from conftest import drop_database, new_database
from plankton_db.config import Settings
from plankton_db.users import add_user, create_token

ROUNDS = 12
RULE = """
SELECT DISTINCT ON (a.image_id) a.image_id, a.id FROM annotations a
 WHERE NOT EXISTS (SELECT 1 FROM annotation_retractions r WHERE r.annotation_id = a.id)
 ORDER BY a.image_id, (a.status <> 'predicted') DESC, a.created_at DESC, a.id DESC
"""


@pytest.fixture
def server(admin_url, seeded, tmp_path):
    """The app on a clone of the seeded database, served by werkzeug's threaded server on loopback."""
    from werkzeug.serving import make_server

    from web import create_app

    name, url = new_database(admin_url, template=seeded.template)
    app = create_app(Settings(home=tmp_path / "home", database_url=url, store_dir=seeded.store),
                     secret_key="concurrency", announce=lambda _: None)
    with app.extensions["plankton"].db.Session.begin() as s:
        add_user(s, "bob", "annotator", "bob-password-1")
        tokens = {"anna": seeded.token, "bob": create_token(s, "bob")}
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield app, srv.server_port, tokens
    srv.shutdown()
    app.extensions["plankton"].db.dispose()
    drop_database(admin_url, name)


def call(port: int, token: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=json.dumps(body) if body is not None else None,
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def test_two_labelers_on_overlapping_selections(server) -> None:
    app, port, tokens = server
    db = app.extensions["plankton"].db
    with db.Session() as s:
        ids = list(s.execute(sa.text("SELECT id FROM images ORDER BY id")).scalars())
        before = s.execute(sa.text("SELECT count(*) FROM annotations")).scalar_one()
    # Overlapping, and in opposite orders: the worst case for row-lock ordering.
    selections = {"anna": ids[:20], "bob": ids[10:][::-1]}
    taxa = {"anna": ["copepod", "radiolarian"], "bob": ["diatom_chain", "copepod"]}
    barrier = threading.Barrier(2)
    results: dict[str, list[tuple[str, int, dict]]] = {"anna": [], "bob": []}

    def labeler(user: str) -> None:
        for r in range(ROUNDS):
            barrier.wait(timeout=60)
            body = {"image_ids": selections[user], "taxon": taxa[user][r % 2]}
            if r % 4 == 3:
                body = {"image_ids": selections[user], "status": "dubious"}
            results[user].append(("label", *call(port, tokens[user], "POST", "/api/annotations", body)))
            if r % 3 == 2:
                barrier.wait(timeout=60)
                results[user].append(("undo", *call(port, tokens[user], "POST", "/api/undo")))

    threads = [threading.Thread(target=labeler, args=(u,)) for u in ("anna", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a labeler is stuck"
    for user, got in results.items():
        bad = [(kind, status, body) for kind, status, body in got if status not in (200, 201)]
        assert bad == [], (user, bad)  # no deadlock victim (503), no error of any kind
        assert len(got) == ROUNDS + ROUNDS // 3

    with db.Session() as s:
        # No lost update: every annotation each response reported is in the history, none more, none less.
        for user, got in results.items():
            reported = sum(body["annotations"] for kind, _, body in got if kind == "label")
            stored = s.execute(sa.text("SELECT count(*) FROM annotations WHERE annotator = :u"), {"u": user}).scalar()
            assert stored == reported == ROUNDS * len(selections[user])
            undone = s.execute(sa.text("SELECT count(*) FROM label_actions WHERE annotator = :u AND undone_at "
                                       "IS NOT NULL"), {"u": user}).scalar()
            assert undone == ROUNDS // 3
        assert s.execute(sa.text("SELECT count(*) FROM annotations")).scalar_one() == before + ROUNDS * 40
        current = dict(s.execute(sa.text("SELECT image_id, annotation_id FROM image_labels")).all())
        rule = dict(s.execute(sa.text(RULE)).all())
    assert current == rule
    assert set(current) >= set(ids[:30]) - set(ids[20:]) | set(ids[10:])  # every touched image has a label
