"""XSS payloads in file names, sample and instrument names, metadata and annotator names stay text in Chromium.

tests/test_browser.py covers taxon names; this module reuses its server, browser and page fixtures.
"""

from __future__ import annotations

import sqlalchemy as sa

from test_browser import browser, page, pytestmark, server  # noqa: F401  (fixtures and the skip marker)

PAYLOADS = {
    "original_name": "<img src=x onerror=alert('file')>.png",
    "sample": "\"><svg onload=alert('sample')>",
    "instrument": "<script>alert('instrument')</script>",
}


def test_payloads_in_image_fields_stay_inert(server, page) -> None:  # noqa: F811
    app, base, seeded = server
    image_id = seeded.ids_by_class["detritus"][1]
    with app.extensions["plankton"].db.Session.begin() as s:
        s.execute(sa.text("UPDATE images SET original_name = :f, sample = :s, instrument = :i, "
                          "metadata = jsonb_build_object('note', CAST(:i AS text)) WHERE id = :id"),
                  {"f": PAYLOADS["original_name"], "s": PAYLOADS["sample"], "i": PAYLOADS["instrument"],
                   "id": image_id})
        # EcoTaxa imports carry free-text annotator names, unlike web users' checked names.
        s.execute(sa.text("INSERT INTO annotations (image_id, taxon_id, status, annotator, source) "
                          "SELECT :id, min(id), 'validated', :a, 'ecotaxa:x.tsv' FROM taxa"),
                  {"id": image_id, "a": "<img src=y onerror=alert('annotator')>"})
    page.dialogs.clear()
    page.goto(f"{base}/similar/{seeded.ids_by_class['detritus'][0]}")
    page.uncheck("#s-todo")
    page.click("#s-apply")
    tile = page.locator(f"#grid .tile[data-id='{image_id}']")
    tile.wait_for()
    tile.click()
    page.wait_for_selector("#detail-meta dd")
    page.wait_for_selector("#history li")
    meta = page.locator("#detail-meta").inner_text()
    for value in PAYLOADS.values():
        assert value in meta  # shown as text, exactly
    assert "<img src=y onerror=alert('annotator')>" in page.locator("#history").inner_text()
    for where in ("#detail-meta", "#history", "#grid"):
        assert page.locator(f"{where} img[onerror], {where} svg, {where} script").count() == 0
    page.wait_for_timeout(300)
    assert page.dialogs == []  # no alert ever ran
