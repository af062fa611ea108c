"""Taxonomy CSV import, subtree queries and label moves against a real database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from plankton_db.cli import app
from plankton_db.errors import InvalidArgument
from plankton_db.ingest import add_annotations, ensure_taxa
from plankton_db.retrieval import Filters, search_by_id
from plankton_db.taxonomy import import_taxonomy, lineage, move_labels, parse_taxonomy_csv, subtree_ids
from seed import seed

TREE = """name,parent,aphia_id,rank
living,,,
Copepoda,living,1080,Subclass
Cyclopoida,Copepoda,1381,Order
Oithona,Cyclopoida,106485,Genus
Oncaea,Cyclopoida,128690,Genus
Calanoida,Copepoda,1100,Order
detritus,,,
"""


def test_import_tree_and_subtrees(db) -> None:
    with db.Session.begin() as s:
        summary = import_taxonomy(s, parse_taxonomy_csv(TREE))
        assert (summary.rows, summary.added, summary.updated) == (7, 7, 0)
        assert lineage(s, "Oithona") == ["living", "Copepoda", "Cyclopoida", "Oithona"]
        names = set(s.scalars(sa.text("SELECT name FROM taxa WHERE id = ANY(:ids)"),
                              {"ids": subtree_ids(s, "Cyclopoida")}))
        assert names == {"Cyclopoida", "Oithona", "Oncaea"}
        row = s.execute(sa.text("SELECT aphia_id, rank FROM taxa WHERE name = 'Oithona'")).one()
        assert tuple(row) == (106485, "Genus")
    # Re-importing with one change updates only that taxon, and leaves unstated fields alone.
    with db.Session.begin() as s:
        again = import_taxonomy(s, parse_taxonomy_csv("name;rank\nOncaea;genus\nliving;\n"))
        assert (again.added, again.updated) == (0, 1)
        assert s.scalar(sa.text("SELECT aphia_id FROM taxa WHERE name = 'Oncaea'")) == 128690


@pytest.mark.parametrize("text, message", [
    ("", "t.csv: the file is empty; expected a header with at least a 'name' column"),
    ("taxon,parent\nA,\n", "t.csv: the header has no 'name' column (found: taxon, parent)"),
    ("name,aphia_id\nA,abc\nB,0\n", "t.csv: line 2: AphiaID must be a positive integer, got 'abc'; line 3: AphiaID "
                                    "must be a positive integer, got '0'; nothing was imported"),
    ("name,parent\nA,\nA,B\n", "t.csv: line 3: 'A' is already defined on line 2; nothing was imported"),
    ("name,parent\nA,A\n", "t.csv: line 2: 'A' cannot be its own parent; nothing was imported"),
    ("name,parent\n,x\n", "t.csv: line 2: empty name; nothing was imported"),
])
def test_bad_csv_is_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_taxonomy_csv(text, "t.csv")
    assert str(exc.value) == message


def test_unknown_parent_and_cycles_are_refused_whole(db) -> None:
    with db.Session.begin() as s:
        import_taxonomy(s, parse_taxonomy_csv(TREE))
    with db.Session.begin() as s:
        with pytest.raises(InvalidArgument) as exc:
            import_taxonomy(s, parse_taxonomy_csv("name,parent\nNew,\nliving,Oithona\n"), "t.csv")
        assert str(exc.value) == ("t.csv: line 3: 'living' would be its own ancestor (cycle through 'living'); "
                                  "nothing was imported")
        with pytest.raises(InvalidArgument, match=r"line 2: parent 'Nowhere' of 'X' is neither in the file nor"):
            import_taxonomy(s, parse_taxonomy_csv("name,parent\nX,Nowhere\n"), "t.csv")
        assert s.scalar(sa.text("SELECT count(*) FROM taxa WHERE name = 'New'")) == 0


def test_move_labels_keeps_history_and_status(db) -> None:
    vectors = np.random.default_rng(1).normal(size=(6, 4)).astype(np.float32)
    with db.Session.begin() as s:
        model_id, ids = seed(s, vectors, ["Oithona sp.", "Oithona sp.", "Oncaea", None, None, None])
        taxa = ensure_taxa(s, ["Oithona sp."])
        add_annotations(s, [(ids[3], taxa["Oithona sp."])], status="predicted", annotator="cnn", source="model")
        import_taxonomy(s, parse_taxonomy_csv(TREE))
        moved = move_labels(s, "Oithona sp.", "Oithona", annotator="curator")
    assert moved == 3
    with db.engine.connect() as conn:
        labels = dict(conn.execute(sa.text("SELECT image_id, taxon || '/' || status FROM current_labels")).all())
        history = conn.execute(sa.text("SELECT count(*) FROM annotations WHERE image_id = :i"), {"i": ids[0]}).scalar()
    assert labels == {ids[0]: "Oithona/validated", ids[1]: "Oithona/validated", ids[2]: "Oncaea/validated",
                      ids[3]: "Oithona/predicted"}
    assert history == 2  # the old annotation is still there
    # Subtree filters see the moved labels: Cyclopoida covers Oithona and Oncaea.
    with db.Session() as s:
        hits = search_by_id(s, model_id, ids[5], k=5, filters=Filters(taxon="Cyclopoida"))
    assert {h.image_id for h in hits} == set(ids[:4])
    with db.Session.begin() as s, pytest.raises(InvalidArgument) as exc:
        move_labels(s, "Oithona", "Nope")
    assert str(exc.value) == "unknown taxon 'Nope'"


def test_cli_taxonomy(cli_env: dict[str, str], tmp_path: Path) -> None:
    runner = CliRunner()
    (tmp_path / "tree.csv").write_text(TREE)
    r = runner.invoke(app, ["taxonomy", "import", str(tmp_path / "tree.csv")], env=cli_env)
    assert r.exit_code == 0 and "7 taxa read: 7 added, 0 updated" in r.stdout
    r = runner.invoke(app, ["taxonomy", "move", "Oithona", "Oncaea"], env=cli_env)
    assert r.exit_code == 0 and "0 labels moved from Oithona to Oncaea" in r.stdout
    r = runner.invoke(app, ["taxonomy", "move", "Oithona", "Oithona"], env=cli_env)
    assert r.exit_code == 1 and "error: cannot move labels from 'Oithona' to itself" in r.stderr
    r = runner.invoke(app, ["taxonomy", "import", str(tmp_path / "missing.csv")], env=cli_env)
    assert r.exit_code == 1 and "error: cannot read" in r.stderr
