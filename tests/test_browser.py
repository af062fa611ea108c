"""A real browser (Debian's Chromium through playwright) logs in, finds similar images, labels them, undoes.

Screenshots go to a temporary folder; `PLANKTON_SCREENSHOTS=docs/screenshots make test` refreshes the
README's. One app and one browser serve the whole module.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from conftest import drop_database, new_database
from plankton_db.config import Settings
from web_support import PASSWORDS

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(os.environ.get("PLANKTON_SCREENSHOTS") or tempfile.mkdtemp(prefix="plankton-screenshots-"))
XSS = "<script>alert(1)</script>"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make test installs it)")


@pytest.fixture(scope="module")
def server(admin_url, seeded, tmp_path_factory):  # noqa: F811
    """The app on a clone of the seeded database, served by werkzeug on a free port in a thread."""
    from werkzeug.serving import make_server

    from web import create_app

    name, url = new_database(admin_url, template=seeded.template)
    settings = Settings(home=tmp_path_factory.mktemp("browser-home"), database_url=url, store_dir=seeded.store)
    app = create_app(settings, secret_key="browser-test", announce=lambda _: None)
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield app, f"http://127.0.0.1:{srv.server_port}", seeded
    srv.shutdown()
    app.extensions["plankton"].db.dispose()
    drop_database(admin_url, name)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium for the module, with a fresh profile."""
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1400, "height": 900})
        yield context
        context.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def page(server, browser):
    """A page logged in as the annotator."""
    _, base, _ = server
    pg = browser.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog):
        dialogs.append(dialog.message)
        # Only the "create taxon?" question is expected; anything else (an alert from injected script) is refused.
        dialog.accept() if dialog.type == "confirm" else dialog.dismiss()

    pg.on("dialog", on_dialog)
    pg.dialogs = dialogs
    pg.goto(f"{base}/")
    assert "/login" in pg.url
    pg.fill("#login-name", "anna")
    pg.fill("#login-password", PASSWORDS["anna"])
    pg.click("#login-submit")
    pg.wait_for_selector("#grid .tile")
    return pg


def _db(server):
    return server[0].extensions["plankton"].db.Session()


def test_login_browse_similar_select_label_undo(server, page) -> None:
    app, base, seeded = server
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert page.locator("#grid .tile").count() == 12  # the default filter is "todo": the unlabeled images
    page.screenshot(path=str(SHOTS / "browse.png"))

    query = seeded.ids_by_class["detritus"][0]
    page.goto(f"{base}/similar/{query}")
    page.wait_for_selector("#grid .tile")
    tiles = page.locator("#grid .tile")
    assert tiles.count() == 11  # the other images without a human label (the query excluded)
    assert re.match(r"^\d\.\d{3} · unlabeled$", tiles.nth(0).locator(".cap").inner_text())

    tiles.nth(0).click()
    tiles.nth(3).click(modifiers=["Shift"])  # range: tiles 0..3
    assert page.locator("#count").inner_text() == "4 selected"
    chosen = [int(tiles.nth(i).get_attribute("data-id")) for i in range(4)]
    page.fill("#label-taxon", "marine snow")  # not a taxon yet: the page asks before creating it
    page.press("#label-taxon", "Enter")
    page.wait_for_selector("#message:has-text('labelled marine snow: 4 images')")
    assert page.dialogs == ["Create the new taxon “marine snow”?"]
    page.screenshot(path=str(SHOTS / "similar.png"))

    with _db(server) as s:
        rows = s.execute(sa.text(
            "SELECT a.image_id, t.name, a.status, a.annotator, a.source FROM annotations a "
            "JOIN taxa t ON t.id = a.taxon_id WHERE a.annotator = 'anna' ORDER BY a.image_id")).all()
    assert rows == [(i, "marine snow", "validated", "anna", "web") for i in sorted(chosen)]

    page.locator("#grid").focus()
    page.keyboard.press("z")  # undo
    page.wait_for_selector("#message:has-text('undone: label of 4 images')")
    with _db(server) as s:
        assert s.execute(sa.text("SELECT count(*) FROM annotation_retractions")).scalar() == 4
        assert s.execute(sa.text("SELECT count(*) FROM image_labels WHERE image_id = ANY(:i)"),
                         {"i": chosen}).scalar() == 0

    # Keyboard only: select all, then the first 3, then label them.
    page.wait_for_selector("#grid .tile")
    page.locator("#grid").focus()
    page.keyboard.press("a")
    assert page.locator("#count").inner_text() == f"{page.locator('#grid .tile').count()} selected"
    page.fill("#first-n", "3")
    page.locator("#grid").focus()
    page.keyboard.press("f")
    assert page.locator("#count").inner_text() == "3 selected"
    page.fill("#label-taxon", "detritus")
    page.press("#label-taxon", "Enter")
    page.wait_for_selector("#message:has-text('labelled detritus: 3 images')")

    # The history panel of a labelled image shows the undone and the current decision.
    first = page.locator("#grid .tile").nth(0)
    first.click()
    page.wait_for_selector("#history li.current")
    assert "anna: detritus (validated, web)" in page.locator("#history li.current").inner_text()


def test_review_page_accepts_suggestions(server, page) -> None:
    _, base, _ = server
    page.goto(f"{base}/review")
    page.click("#refresh")
    page.wait_for_selector("#groups .group")
    page.wait_for_selector("#grid .tile")
    page.screenshot(path=str(SHOTS / "review.png"))
    shown = page.locator("#grid .tile").count()
    assert shown >= 1
    page.click("#accept")
    page.wait_for_selector(f"#message:has-text('accepted {shown} predictions')")
    with _db(server) as s:
        n = s.execute(sa.text("SELECT count(*) FROM label_actions WHERE kind = 'accept'")).scalar()
    assert n == 1


def test_script_in_a_taxon_name_stays_text(server, page) -> None:
    app, base, seeded = server
    image_id = seeded.ids_by_class["chaetognath"][0]
    csrf = page.evaluate("() => document.querySelector('meta[name=csrf-token]').content")
    resp = page.request.post(f"{base}/api/annotations", headers={"X-CSRF-Token": csrf},
                             data={"image_ids": [image_id], "taxon": XSS, "new_taxon": True})
    assert resp.status == 201
    page.dialogs.clear()
    page.goto(f"{base}/similar/{seeded.ids_by_class['chaetognath'][1]}")
    page.uncheck("#s-todo")
    page.click("#s-apply")
    tile = page.locator(f"#grid .tile[data-id='{image_id}']")
    tile.wait_for()
    assert tile.locator(".cap").inner_text().endswith(XSS)
    assert page.locator("#grid script").count() == 0
    tile.click()
    page.wait_for_selector("#history li")
    assert XSS in page.locator("#history li").first.inner_text()
    page.goto(f"{base}/stats")
    assert XSS in page.locator("#taxa-table").inner_text()
    assert page.locator("#taxa-table script").count() == 0
    page.goto(f"{base}/")
    page.fill("#label-taxon", "<scr")
    page.wait_for_timeout(300)
    assert page.dialogs == []  # no alert ever ran
