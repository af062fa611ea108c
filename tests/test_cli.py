"""The CLI end to end against a real database: exit codes, messages and JSON contracts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from images import write_bad_files
from plankton_db.cli import app

runner = CliRunner()


def plankton(env: dict[str, str], *args: str):
    """Run a CLI command in-process with this test's environment."""
    return runner.invoke(app, list(args), env=env, catch_exceptions=False)


def test_full_tour(cli_env: dict[str, str], image_folder: Path) -> None:
    r = plankton(cli_env, "ingest", str(image_folder), "--labels-from-folders", "--sample", "tour")
    assert r.exit_code == 0, r.output
    assert "30 files: 30 added, 0 already present, 0 rejected, 30 labels added" in r.output
    r = plankton(cli_env, "ingest", str(image_folder), "--labels-from-folders")
    assert r.exit_code == 0 and "nothing new" in r.output

    r = plankton(cli_env, "embed", "--device", "cpu", "--batch-size", "8", "--workers", "0")
    assert r.exit_code == 0, r.output
    assert "30 images embedded with tf_efficientnet_lite0 (1280 dims)" in r.output
    r = plankton(cli_env, "embed", "--device", "cpu")
    assert "0 images embedded" in r.output

    r = plankton(cli_env, "search", "--id", "1", "-k", "5", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert len(result["hits"]) == 5 and result["query"] == {"image_id": 1}
    assert all(h["image_id"] != 1 for h in result["hits"])
    dists = [h["distance"] for h in result["hits"]]
    assert dists == sorted(dists)
    assert {"image_id", "distance", "taxon", "status", "original_path"} <= set(result["hits"][0])

    query_file = sorted((image_folder / "radiolarian").glob("*.png"))[0]
    r = plankton(cli_env, "search", str(query_file), "-k", "3", "--json", "--device", "cpu")
    assert r.exit_code == 0, r.output
    hits = json.loads(r.stdout)["hits"]
    # The file is itself in the database, so it comes back first at distance ~0.
    assert hits[0]["original_path"] == str(query_file.absolute()) and hits[0]["distance"] < 1e-4

    r = plankton(cli_env, "eval", "--json")
    assert r.exit_code == 0, r.output
    ev = json.loads(r.stdout)
    assert {"n", "classes", "top1", "precision_at_5", "precision_at_10", "map_at_10", "per_class"} <= set(ev)
    assert ev["n"] == 30 and ev["classes"] == 5
    # Five very different synthetic shapes: the pretrained features must separate them well.
    assert ev["top1"] >= 0.8, ev

    r = plankton(cli_env, "eval", "--metric", "l2")
    assert r.exit_code == 0 and "top1" in r.output

    r = plankton(cli_env, "db", "status", "--json")
    status = json.loads(r.stdout)
    assert {"url", "embedded", "data_dir", "revision", "images", "embeddings", "annotations"} <= set(status)
    assert (status["images"], status["embeddings"], status["annotations"]) == (30, 30, 30)
    assert status["embedded"] is False and status["revision"] is not None


def test_errors_are_one_line_and_exit_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    r = plankton(cli_env, "search", "--id", "1")
    assert r.exit_code == 1 and "error: no embeddings yet: run `plankton embed` first" in r.output
    assert "Traceback" not in r.output

    r = plankton(cli_env, "search")
    assert r.exit_code == 1 and "give exactly one of IMAGE_FILE or --id" in r.output
    r = plankton(cli_env, "search", "--id", "1", "--metric", "hamming-ish")
    assert r.exit_code == 1 and "unknown metric 'hamming-ish'" in r.output
    r = plankton(cli_env, "search", "--id", "1", "-k", "0")
    assert r.exit_code == 1 and "k must be between 1 and" in r.output
    r = plankton(cli_env, "eval", "--model", "nope")
    assert r.exit_code == 1 and "error: unknown model 'nope' (registered: none)" in r.output
    r = plankton(cli_env, "embed", "--model", "no_such_timm_model_xyz", "--device", "cpu")
    assert r.exit_code == 1 and "no_such_timm_model_xyz" in r.output and "Traceback" not in r.output
    r = plankton(cli_env, "embed", "--device", "tpu")
    assert r.exit_code == 1 and "tpu" in r.output


def test_ingest_with_bad_files_lists_them_and_exits_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    expected = write_bad_files(tmp_path / "bad")
    r = plankton(cli_env, "ingest", str(tmp_path / "bad"))
    assert r.exit_code == 1
    for name, reason in expected.items():
        assert f"{name}: {reason}" in r.output.replace("\n", " ") or (name in r.output and reason in r.output)
    assert "0 added" in r.output


def test_bad_database_url_is_one_line(tmp_path: Path) -> None:
    env = {"PLANKTON_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "PLANKTON_HOME": str(tmp_path)}
    r = plankton(env, "db", "status")
    assert r.exit_code == 1 and "error: cannot connect to postgresql+psycopg://nobody@127.0.0.1:1/none" in r.output
    r = plankton({**env, "PLANKTON_DATABASE_URL": "mysql://x@y/z"}, "db", "status")
    assert r.exit_code == 1 and "must start with postgresql://" in r.output
    r = plankton({**env, "PLANKTON_DATABASE_URL": "", "PLANKTON_MAX_PIXELS": "lots"}, "db", "status")
    assert r.exit_code == 1 and "PLANKTON_MAX_PIXELS must be an integer" in r.output


def test_console_script_exit_codes(cli_env: dict[str, str]) -> None:
    exe = Path(sys.executable).parent / "plankton"
    ok = subprocess.run([str(exe), "db", "status", "--json"], env=cli_env, capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout)["images"] == 0
    bad = subprocess.run([str(exe), "search", "--id", "1"], env=cli_env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip().startswith("error:") and bad.stdout == ""
    usage = subprocess.run([str(exe), "search", "--bogus"], env=cli_env, capture_output=True, text=True)
    assert usage.returncode == 2


@pytest.mark.parametrize("args", [["ingest"], ["embed", "--batch-size", "0"]])
def test_usage_errors_exit_2(cli_env: dict[str, str], args: list[str]) -> None:
    assert plankton(cli_env, *args).exit_code == 2
