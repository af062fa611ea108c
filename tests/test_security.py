"""Security beyond tests/test_web_auth.py: CSRF on every state change, SQL injection in every filter, path
traversal through the image routes, secrets kept out of logs, and the server's default address."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from integrity import fingerprint
from plankton_db.cli import app
from plankton_db.db import REPO_ROOT
from web_support import PASSWORDS, WebEnv

CSRF_ERROR = {"error": "missing or wrong CSRF token; reload the page"}
PAYLOADS = ["' OR '1'='1", "1; DROP TABLE annotations; --", "copepod' --", "1) OR (1=1",
            "'; SELECT pg_sleep(3); --", "%' OR 1=1 --", '" OR ""="', "copepod'||'"]
STATUSES = "unlabeled, predicted, validated, dubious, todo"


def state_changing_routes(web: WebEnv) -> list[tuple[str, str]]:
    """(method, path) of every route that accepts a method other than GET/HEAD/OPTIONS."""
    found = []
    for rule in web.app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"GET", "HEAD", "OPTIONS"}):
            found.append((method, re.sub(r"<int:\w+>", "1", rule.rule)))
    return sorted(found)


def test_every_state_change_needs_the_csrf_token(web: WebEnv) -> None:
    routes = state_changing_routes(web)
    assert len(routes) >= 7  # login, logout, search, annotations, undo, suggestions refresh and accept
    client, csrf = web.login("admin")
    engine = web.app.extensions["plankton"].db.engine
    before = fingerprint(engine, web.seeded.store)
    ids = web.seeded.ids_by_class["detritus"][:2]
    for method, path in routes:
        for headers in ({}, {"X-CSRF-Token": "forged"}, {"X-CSRF-Token": csrf[:-1]}):
            resp = client.open(path, method=method, headers=headers, json={"image_ids": ids, "taxon": "copepod"})
            assert resp.status_code == 403, (method, path, headers)
            if path.startswith("/api/"):
                assert resp.get_json() == CSRF_ERROR
            else:
                assert "missing or wrong CSRF token" in resp.get_data(as_text=True)
    assert client.get("/api/me").get_json()["name"] == "admin"  # the refused logout did not log out
    assert fingerprint(engine, web.seeded.store) == before


def _expected(param: str, value: str) -> tuple[int, object]:
    """What a filter parameter must answer to an injection payload: no rows, or a 400 naming it."""
    shown = repr(value[:40])
    ints = {"offset", "limit", "seed", "ref", "k"}
    if param in ints:
        return 400, {"error": f"{param} must be an integer, got {shown}"}
    if param in ("depth_min", "depth_max", "min_score"):
        return 400, {"error": f"{param} must be a number, got {shown}"}
    if param in ("date_from", "date_to"):
        return 400, {"error": f"{param} must be an ISO date like 2024-05-31, got {shown}"}
    if param in ("unlabeled", "todo"):
        return 400, {"error": f"{param} must be true or false, got {repr(value.lower()[:40])}"}
    if param == "status":
        return 400, {"error": f"unknown status {value!r}; choose one of: {STATUSES}"}
    if param == "model":
        return 404, {"error": f"unknown model {value!r} (registered: tf_efficientnet_lite0)"}
    return 200, None  # free text: compared as a value, so it matches nothing


FILTERS = {
    "/api/images": ["status", "taxon", "sample", "instrument", "date_from", "date_to", "depth_min", "depth_max",
                    "offset", "limit", "seed"],
    "/api/images?sort=similarity&ref=1": ["model"],
    "/api/images/1/similar": ["taxon", "sample", "unlabeled", "todo", "k", "offset", "model"],
    "/api/taxa": ["q", "limit"],
    "/api/suggestions": ["taxon"],
    "/api/suggestions?taxon=copepod": ["offset", "limit", "min_score"],
}


def test_sql_injection_in_every_filter_parameter_does_nothing(web: WebEnv) -> None:
    client, _ = web.login("victor")
    engine = web.app.extensions["plankton"].db.engine
    before = fingerprint(engine, web.seeded.store)
    from urllib.parse import quote

    start = time.monotonic()
    tried = 0
    for route, params in FILTERS.items():
        for param in params:
            for value in PAYLOADS:
                sep = "&" if "?" in route else "?"
                resp = client.get(f"{route}{sep}{param}={quote(value)}")
                status, body = _expected(param, value)
                assert resp.status_code == status, (route, param, value, resp.get_json())
                got = resp.get_json()
                if body is not None:
                    assert got == body, (route, param, value)
                elif "items" in got:  # a similar page has no total (it is a ranking, not a count)
                    total = None if "similar" in route else 0
                    assert (got["total"], got["items"]) == (total, []), (route, param, value)
                else:
                    assert got == {"taxa": []}, (route, param, value)
                tried += 1
    assert tried == 8 * 25
    assert time.monotonic() - start < 60  # no pg_sleep ran
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM annotations")).scalar_one() > 0
    assert fingerprint(engine, web.seeded.store) == before


def test_sql_injection_in_json_bodies_does_nothing(web: WebEnv) -> None:
    client, csrf = web.login("anna")
    engine = web.app.extensions["plankton"].db.engine
    before = fingerprint(engine, web.seeded.store)
    for value in PAYLOADS:
        resp = client.post("/api/annotations", json={"image_ids": [1], "taxon": value}, headers={"X-CSRF-Token": csrf})
        assert resp.status_code == 400
        assert resp.get_json() == {"error": f"unknown taxon {value.strip()!r}; pick one from the list or confirm "
                                            "creating it"}
    resp = client.post("/api/annotations", json={"image_ids": ["1 OR 1=1"], "taxon": "copepod"},
                       headers={"X-CSRF-Token": csrf})
    assert resp.get_json() == {"error": "image_ids must be positive integers"}
    assert fingerprint(engine, web.seeded.store) == before


def test_path_traversal_through_image_routes_is_impossible(web: WebEnv) -> None:
    client, _ = web.login("victor")
    for path in ["/images/..%2f..%2f..%2fetc%2fpasswd/file", "/images/1/../../../../etc/passwd",
                 "/images/%2e%2e/file", "/images/-1/file", "/images/1.5/thumb", "/static/../../../../etc/passwd",
                 "/static/..%2f..%2f..%2f..%2fetc%2fpasswd", "/vendor/jquery.js/..%2f..%2fetc%2fpasswd",
                 "/images/1/file/../../../../../../etc/passwd"]:
        resp = client.get(path)
        assert resp.status_code == 404, path
        assert b"root:" not in resp.data
    # Even a tampered row cannot point the store outside itself: digests are checked before any path is built.
    victim = web.seeded.ids_by_class["copepod"][0]
    with web.app.extensions["plankton"].db.engine.begin() as c:
        c.execute(sa.text("UPDATE images SET sha256 = :s WHERE id = :i"),
                  {"s": "../" * 10 + "etc/passwd", "i": victim})
    for kind in ("file", "thumb"):
        resp = client.get(f"/images/{victim}/{kind}")
        assert resp.status_code == 404 and b"root:" not in resp.data
        assert "not a sha256 digest" in resp.get_data(as_text=True)
    assert client.get(f"/api/images/{victim}").status_code == 200  # the metadata itself is still readable


def test_secrets_never_reach_the_logs(web: WebEnv, cli_env, caplog, capfd) -> None:
    """Passwords, tokens and password hashes stay out of every log line, even at DEBUG and with -v."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # what an operator debugging SQL would turn on
    client = web.app.test_client()
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").get_data(as_text=True)).group(1)
    client.post("/login", data={"name": "anna", "password": "wrong-" + PASSWORDS["anna"], "csrf_token": csrf})
    client.post("/login", data={"name": "anna", "password": PASSWORDS["anna"], "csrf_token": csrf})
    client.get("/api/images", headers={"Authorization": f"Bearer {web.seeded.token}"})
    client.get("/api/images", headers={"Authorization": f"Bearer {web.seeded.token}x"})
    runner = CliRunner()
    added = runner.invoke(app, ["-v", "user", "add", "carol", "--password-stdin"], input="carol-secret-pw-9\n",
                          env=cli_env)
    assert added.exit_code == 0, added.output
    token = runner.invoke(app, ["-v", "token", "create", "carol"], env=cli_env).stdout.strip()
    assert token.startswith("pdb_")
    bad = runner.invoke(app, ["db", "status"], env={**cli_env, "PLANKTON_DATABASE_URL":
                                                    "postgresql://u:db-pass-77@127.0.0.1:1/x"})
    assert bad.exit_code == 1 and "db-pass-77" not in bad.output and "u:***@127.0.0.1:1" in bad.output
    with sa.create_engine(cli_env["PLANKTON_DATABASE_URL"]).connect() as c:
        hashes = list(c.execute(sa.text("SELECT password_hash FROM users")).scalars())
    logs = "\n".join(r.getMessage() + str(r.args) for r in caplog.records) + added.stderr + capfd.readouterr().err
    assert "INSERT INTO users" in logs  # the statements themselves are logged: the check below has teeth
    for secret in [PASSWORDS["anna"], "carol-secret-pw-9", web.seeded.token, token, *hashes]:
        assert secret not in logs


def _listening(port: int) -> list[str]:
    """Local addresses of TCP sockets listening on `port`, from /proc/net/tcp and tcp6."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in open(table).read().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.append(addr)
    return found


def test_server_binds_loopback_by_default(cli_env) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("PLANKTON_WEB_HOST", "PLANKTON_WEB_PORT")}
    proc = subprocess.Popen([sys.executable, "-c", "from plankton_db.cli import run; run()", "serve", "--port",
                             str(port)], cwd=REPO_ROOT, env={**env, **cli_env}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + 60
        while not _listening(port):
            assert proc.poll() is None and time.monotonic() < end, proc.stdout.read().decode() if proc.poll() else ""
            time.sleep(0.1)
        assert _listening(port) == ["0100007F"]  # 127.0.0.1 only, not 0.0.0.0 or ::
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
