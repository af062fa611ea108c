"""Fixtures for the web tests: one seeded, embedded template database per session, cloned for each test."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from conftest import drop_database, new_database
from plankton_db.config import Settings
from plankton_db.db import connect
from plankton_db.embed import embed_missing, register_model
from plankton_db.ingest import add_annotations, ensure_taxa, ingest_paths
from plankton_db.store import ContentStore

PASSWORDS = {"admin": "admin-password-1", "anna": "annotator-pass-1", "victor": "viewer-pass-1"}
ROLES = {"admin": "admin", "anna": "annotator", "victor": "viewer"}
LABELLED = ("copepod", "diatom_chain", "radiolarian")  # the other two classes stay unlabeled


@dataclass(frozen=True)
class Seeded:
    """The seeded template: its name, its shared store, and the facts tests look up."""

    template: str
    store: Path
    token: str
    ids_by_class: dict[str, list[int]]


@pytest.fixture(scope="session")
def seeded(admin_url: str, template_url: str, encoder, image_folder: Path, tmp_path_factory) -> Seeded:
    """Ingest and embed the 30 synthetic images once, label three classes, add three users and a token."""
    from plankton_db.users import add_user, create_token

    name, url = new_database(admin_url)
    home = tmp_path_factory.mktemp("web-seed")
    settings = Settings(home=home, database_url=url)
    db = connect(settings)
    ingest_paths(db.Session, settings, [image_folder], sample="synthetic", instrument="synth")
    with db.Session.begin() as s:
        model = register_model(s, encoder)
    embed_missing(db.Session, ContentStore(settings.store), encoder, model.id)
    with db.Session.begin() as s:
        rows = s.execute(sa.text("SELECT id, original_path FROM images ORDER BY id")).all()
        by_class: dict[str, list[int]] = {}
        for image_id, path in rows:
            by_class.setdefault(Path(path).parent.name, []).append(image_id)
        taxa = ensure_taxa(s, list(by_class))
        pairs = [(i, taxa[c]) for c in LABELLED for i in by_class[c]]
        add_annotations(s, pairs, status="validated", annotator="seed", source="folder")
        for user, password in PASSWORDS.items():
            add_user(s, user, ROLES[user], password)
        token = create_token(s, "anna")
    db.dispose()
    yield Seeded(name, settings.store, token, by_class)
    drop_database(admin_url, name)


@dataclass
class WebEnv:
    """An app on a fresh clone of the seeded database."""

    app: Flask
    settings: Settings
    seeded: Seeded
    announced: list[str]

    def session(self):
        """A session on this test's database, for checking what the app wrote."""
        return self.app.extensions["plankton"].db.Session()

    def login(self, user: str) -> tuple[FlaskClient, str]:
        """A test client logged in as `user`, and its CSRF token."""
        client = self.app.test_client()
        page = client.get("/login").get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        resp = client.post("/login", data={"name": user, "password": PASSWORDS[user], "csrf_token": csrf})
        assert resp.status_code == 302, resp.get_data(as_text=True)
        return client, client.get("/api/me").get_json()["csrf_token"]


@pytest.fixture
def web(admin_url: str, seeded: Seeded, tmp_path: Path) -> WebEnv:
    """A fresh clone of the seeded database behind a new app."""
    from web import create_app

    name, url = new_database(admin_url, template=seeded.template)
    settings = Settings(home=tmp_path / "home", database_url=url, store_dir=seeded.store)
    announced: list[str] = []
    app = create_app(settings, secret_key="test-secret", announce=announced.append)
    app.config["TESTING"] = True
    yield WebEnv(app, settings, seeded, announced)
    app.extensions["plankton"].db.dispose()
    drop_database(admin_url, name)
