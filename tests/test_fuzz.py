"""Fuzzing the parsers with hypothesis: TSV and taxonomy CSV bytes, API query parameters and JSON bodies.

Each property is the contract: a clear refusal (InvalidArgument, or a 4xx JSON error) or a result, never
a crash or a 500. tests/test_ecotaxa.py already fuzzes well-formed TSV rows; this goes below that, to bytes.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, example, given, settings as hsettings, strategies as st

from conftest import drop_database, new_database
from plankton_db.config import Settings
from plankton_db.ecotaxa import parse_tsv
from plankton_db.errors import InvalidArgument
from plankton_db.taxonomy import parse_taxonomy_csv
from web_support import PASSWORDS

FAST = hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])
TSV_START = b"img_file_name\tobject_lat\tobject_annotation_category\n[t]\t[f]\t[t]\n"


@FAST
@given(st.one_of(st.binary(max_size=400), st.binary(max_size=200).map(lambda b: TSV_START + b)))
def test_tsv_parser_takes_any_bytes(data: bytes) -> None:
    try:
        table = parse_tsv(data, "fuzz.tsv")
    except InvalidArgument as exc:
        assert str(exc).startswith("fuzz.tsv: ")
        return
    assert all(r.image for r in table.records)
    assert all(p.line is None or p.line >= 1 for p in table.problems)


@FAST
@given(st.text(max_size=300))
@example("\r0")  # found by this test: a bare carriage return raised csv.Error (a traceback in the CLI)
@example("name\n" + "x" * 200_000)  # a field over the csv module's limit
def test_taxonomy_csv_parser_takes_any_text(text: str) -> None:
    try:
        rows = parse_taxonomy_csv(text, "t.csv")
    except InvalidArgument as exc:
        assert str(exc).startswith("t.csv: ")
        return
    assert all(r.name and r.name.strip() == r.name for r in rows)


@pytest.fixture(scope="module")
def client(admin_url, seeded, tmp_path_factory):
    """One app for every example (hypothesis reruns the body, not the fixture), logged in as the annotator."""
    from web import create_app

    name, url = new_database(admin_url, template=seeded.template)
    app = create_app(Settings(home=tmp_path_factory.mktemp("fuzz-home"), database_url=url, store_dir=seeded.store),
                     secret_key="fuzz", announce=lambda _: None)
    c = app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").get_data(as_text=True)).group(1)
    assert c.post("/login", data={"name": "anna", "password": PASSWORDS["anna"], "csrf_token": csrf}).status_code == 302
    c.environ_base["HTTP_X_CSRF_TOKEN"] = c.get("/api/me").get_json()["csrf_token"]
    yield c
    app.extensions["plankton"].db.dispose()
    drop_database(admin_url, name)


NAMES = ["status", "taxon", "sample", "instrument", "date_from", "date_to", "depth_min", "depth_max", "sort",
         "offset", "limit", "seed", "ref", "model", "k", "metric", "method", "unlabeled", "todo", "q", "min_score"]
VALUE = st.one_of(st.text(max_size=30), st.integers(-10**20, 10**20).map(str),
                  st.sampled_from(["", "0", "1", "true", "similarity", "random", "todo", "cosine", "hnsw", "1e309",
                                   "nan", "2024-02-30", "copepod", "-0", "\x00"]))


def _answered(resp) -> None:
    assert resp.status_code in (200, 201, 400, 404, 409), (resp.status_code, resp.get_data(as_text=True)[:300])
    body = resp.get_json()
    if resp.status_code >= 400:
        assert set(body) == {"error"} and body["error"]


@FAST
@given(st.sampled_from(["/api/images", "/api/images/1/similar", "/api/taxa", "/api/suggestions"]),
       st.dictionaries(st.sampled_from(NAMES), VALUE, max_size=5))
def test_query_parameters_never_cause_a_server_error(client, path: str, params: dict[str, str]) -> None:
    _answered(client.get(f"{path}?{urlencode(params)}"))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=10)


@FAST
@given(st.sampled_from(["/api/annotations", "/api/suggestions/accept"]),
       st.one_of(JSON, st.fixed_dictionaries({"image_ids": JSON, "taxon": JSON}, optional={"status": JSON,
                                                                                          "new_taxon": JSON})))
def test_json_bodies_never_cause_a_server_error(client, path: str, body) -> None:
    _answered(client.post(path, json=body))
