"""Login, first admin, roles on every route, CSRF, bearer tokens, security headers and plain error pages."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa

from web_support import PASSWORDS, WebEnv

# Every route with a method and an example URL; the test below fails when a route is added without an entry.
ROUTES = {
    ("GET", "/"): "viewer",
    ("GET", "/similar/1"): "viewer",
    ("GET", "/review"): "viewer",
    ("GET", "/stats"): "viewer",
    ("GET", "/images/1/thumb"): "viewer",
    ("GET", "/images/1/file"): "viewer",
    ("GET", "/api/me"): "viewer",
    ("GET", "/api/images"): "viewer",
    ("GET", "/api/images/1"): "viewer",
    ("GET", "/api/images/1/similar"): "viewer",
    ("POST", "/api/search"): "viewer",
    ("POST", "/api/annotations"): "annotator",
    ("POST", "/api/undo"): "annotator",
    ("GET", "/api/images/1/annotations"): "viewer",
    ("GET", "/api/taxa"): "viewer",
    ("GET", "/api/stats"): "viewer",
    ("GET", "/api/options"): "viewer",
    ("GET", "/api/users"): "admin",
    ("GET", "/api/suggestions"): "viewer",
    ("POST", "/api/suggestions/refresh"): "annotator",
    ("POST", "/api/suggestions/accept"): "annotator",
}
PUBLIC = {"/login", "/logout", "/vendor/jquery.js"}


def _rule_path(rule: str) -> str:
    return re.sub(r"<int:\w+>", "1", rule)


def test_route_table_covers_every_route(web: WebEnv) -> None:
    listed = {path for _, path in ROUTES} | PUBLIC
    actual = {_rule_path(r.rule) for r in web.app.url_map.iter_rules() if r.endpoint != "static"}
    assert actual == listed
    for name, fn in web.app.view_functions.items():
        if name != "static":
            assert fn.required_role in ("public", "viewer", "annotator", "admin"), name


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES))
def test_anonymous_requests_are_refused(web: WebEnv, method: str, path: str) -> None:
    resp = web.app.test_client().open(path, method=method)
    if path.startswith("/api/"):
        # POSTs are stopped by the CSRF check before the login check; both refuse.
        assert resp.status_code in (401, 403)
        assert resp.get_json()["error"] in ("login required: sign in or send Authorization: Bearer TOKEN",
                                            "missing or wrong CSRF token; reload the page")
    else:
        assert resp.status_code == 302
        assert resp.headers["Location"].startswith("/login?next=")


def test_roles_are_enforced_on_every_route(web: WebEnv) -> None:
    ranks = ["viewer", "annotator", "admin"]
    for user in ("victor", "anna", "admin"):
        client, csrf = web.login(user)
        role = {"victor": "viewer", "anna": "annotator", "admin": "admin"}[user]
        for (method, path), needed in ROUTES.items():
            resp = client.open(path, method=method, headers={"X-CSRF-Token": csrf}, json={})
            if ranks.index(role) < ranks.index(needed):
                assert resp.status_code == 403, (user, path)
                assert resp.get_json()["error"] == f"this needs the {needed} role; {user} is {role}"
            else:
                assert resp.status_code not in (401, 403), (user, path, resp.get_data(as_text=True))


def test_first_start_creates_one_admin_with_a_random_password(admin_url, template_url, tmp_path) -> None:
    from conftest import drop_database, new_database
    from plankton_db.config import Settings
    from web import create_app

    name, url = new_database(admin_url)
    try:
        said: list[str] = []
        settings = Settings(home=tmp_path / "home", database_url=url)
        app = create_app(settings, announce=said.append)
        assert len(said) == 1 and said[0].startswith("first start: created user 'admin' with password ")
        password = said[0].split("password ")[1].split()[0]
        assert len(password) >= 12
        app.extensions["plankton"].db.dispose()
        again: list[str] = []
        app2 = create_app(settings, announce=again.append)
        assert again == []  # printed once only
        with app2.extensions["plankton"].db.Session() as s:
            row = s.execute(sa.text("SELECT name, role, password_hash FROM users")).one()
        assert row[:2] == ("admin", "admin") and password not in row[2] and row[2].startswith("scrypt:")
        client = app2.test_client()
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
        assert client.post("/login", data={"name": "admin", "password": password, "csrf_token": csrf}).status_code == 302
        assert (tmp_path / "home" / "web-secret").stat().st_mode & 0o777 == 0o600
        app2.extensions["plankton"].db.dispose()
    finally:
        drop_database(admin_url, name)


def test_login_wrong_password_and_logout(web: WebEnv) -> None:
    client = web.app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    bad = client.post("/login", data={"name": "anna", "password": "nope-nope", "csrf_token": csrf})
    assert bad.status_code == 401 and "wrong user name or password" in bad.get_data(as_text=True)
    assert client.post("/login", data={"name": "anna", "password": PASSWORDS["anna"]}).status_code == 403  # no CSRF
    ok = client.post("/login", data={"name": "anna", "password": PASSWORDS["anna"], "csrf_token": csrf,
                                     "next": "https://evil.example/"})
    assert ok.status_code == 302 and ok.headers["Location"] == "/"  # no open redirect
    csrf = client.get("/api/me").get_json()["csrf_token"]
    assert client.post("/logout", data={"csrf_token": csrf}).status_code == 302
    assert client.get("/api/me").status_code == 401


def test_csrf_is_required_for_cookie_sessions(web: WebEnv) -> None:
    client, csrf = web.login("anna")
    ids = web.seeded.ids_by_class["detritus"][:2]
    body = {"image_ids": ids, "taxon": "copepod"}
    missing = client.post("/api/annotations", json=body)
    assert missing.status_code == 403
    assert missing.get_json() == {"error": "missing or wrong CSRF token; reload the page"}
    wrong = client.post("/api/annotations", json=body, headers={"X-CSRF-Token": "x" + csrf})
    assert wrong.status_code == 403
    assert client.post("/api/annotations", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201


def test_bearer_tokens(web: WebEnv) -> None:
    client = web.app.test_client()
    ids = web.seeded.ids_by_class["detritus"][:1]
    auth = {"Authorization": f"Bearer {web.seeded.token}"}
    resp = client.post("/api/annotations", json={"image_ids": ids, "taxon": "copepod"}, headers=auth)
    assert resp.status_code == 201  # no CSRF token needed: no cookie is involved
    with web.session() as s:
        assert s.execute(sa.text("SELECT annotator FROM annotations WHERE image_id = :i"), {"i": ids[0]}).scalar() == "anna"
        assert s.execute(sa.text("SELECT last_used_at IS NOT NULL FROM api_tokens")).scalar()
    bad = client.get("/api/images", headers={"Authorization": "Bearer pdb_wrong"})
    assert bad.status_code == 401 and bad.get_json() == {"error": "invalid API token"}
    basic = client.get("/api/images", headers={"Authorization": "Basic YWJjOmRlZg=="})
    assert basic.status_code == 401
    assert basic.get_json() == {"error": "the Authorization header must be 'Bearer TOKEN'"}


def test_security_headers_and_plain_error_pages(web: WebEnv) -> None:
    client, _ = web.login("victor")
    resp = client.get("/")
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    missing = client.get("/similar/999999")
    assert missing.status_code == 404
    text = missing.get_data(as_text=True)
    assert "no image with id 999999" in text and "Traceback" not in text
    api_missing = client.get("/api/no-such-route")
    assert api_missing.status_code == 404 and set(api_missing.get_json()) == {"error"}


def test_server_error_is_a_plain_message(web: WebEnv, monkeypatch) -> None:
    from plankton_db import labels

    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(labels, "stats", boom)
    client, _ = web.login("victor")
    resp = client.get("/api/stats")
    assert resp.status_code == 500
    assert resp.get_json() == {"error": "internal server error; the details are in the server log"}
    page = client.get("/stats")
    assert page.status_code == 500 and "secret internal detail" not in page.get_data(as_text=True)


def test_jquery_comes_from_the_xstatic_package(web: WebEnv) -> None:
    resp = web.app.test_client().get("/vendor/jquery.js")
    assert resp.status_code == 200 and b"jQuery" in resp.data[:400]


def test_wsgi_entry_point_reads_the_environment(web: WebEnv) -> None:
    from web.wsgi import from_env

    env = {"PLANKTON_DATABASE_URL": web.settings.database_url, "PLANKTON_HOME": str(web.settings.home),
           "PLANKTON_SECRET_KEY": "k" * 32, "PLANKTON_COOKIE_SECURE": "1"}
    app = from_env(env, announce=lambda _: None)
    try:
        assert app.config["SECRET_KEY"] == "k" * 32 and app.config["SESSION_COOKIE_SECURE"] is True
        assert app.test_client().get("/api/me").get_json() == {
            "error": "login required: sign in or send Authorization: Bearer TOKEN"}
    finally:
        app.extensions["plankton"].db.dispose()
