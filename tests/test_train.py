"""Training on the tiny synthetic set: registration, holdout evaluation, loading, Ctrl-C, errors and the report."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from typer.testing import CliRunner

from plankton_db.cli import app
from plankton_db.db import Database
from plankton_db.embed import embed_missing, load_encoder, register_model
from plankton_db.embedding import Encoder, Preprocess
from plankton_db.evaluate import evaluate, neighbour_lists
from plankton_db.finetune import split_backbone, trunk_maps
from plankton_db.imageio import decode
from plankton_db.ingest import ingest_paths
from plankton_db.models import Embedding
from plankton_db.report import build_report
from plankton_db.store import ContentStore
from plankton_db.train import TrainConfig, fit_head, one_cycle, split, train

runner = CliRunner()


def ingest_and_embed(db: Database, folder: Path, encoder: Encoder) -> int:
    """Load the synthetic images with folder labels and embed them with the default model; returns its id."""
    # 64 px inputs: the same weights and code paths at a twelfth of the compute, so the suite stays fast.
    encoder = Encoder(encoder.model, dataclasses.replace(encoder.spec, preprocess=Preprocess(size=64)),
                      encoder.device)
    ingest_paths(db.Session, db.settings, [folder], labels_from_folders=True)
    with db.Session.begin() as s:
        row = register_model(s, encoder)
    embed_missing(db.Session, ContentStore(db.settings.store), encoder, row.id, batch_size=16, workers=0)
    return row.id


def test_head_training_registers_a_model_whose_eval_excludes_its_training_images(
    db: Database, image_folder: Path, encoder
) -> None:
    base_id = ingest_and_embed(db, image_folder, encoder)
    store = ContentStore(db.settings.store)
    epochs: list[tuple[int, float]] = []
    result = train(db.Session, store, TrainConfig(epochs=1, holdout=0.34, device="cpu", dim=16),
                   cache_dir=db.settings.home / "cache", on_epoch=lambda e, loss, _s: epochs.append((e, loss)))
    assert [e for e, _ in epochs] == [1] and np.isfinite(epochs[0][1])
    assert (result.n_train, result.n_holdout, result.embedded) == (20, 10, 30)
    with db.Session.begin() as s:
        row = s.execute(sa.text("SELECT id, parent_id, dim, weights_sha256, params FROM embedding_models "
                                "WHERE name = :n"), {"n": result.model.name}).one()
        trained = set(s.scalars(sa.text("SELECT image_id FROM training_images WHERE model_id = :m"), {"m": row.id}))
        assert row.parent_id == base_id and row.dim == 16 and len(trained) == 20
        assert row.params["hyper"]["epochs"] == 1 and row.params["mode"] == "head"
        assert row.params["checkpoint_sha256"] == row.weights_sha256
        # The checkpoint is in the content store under its own sha256.
        assert hashlib.sha256(store.read(row.weights_sha256)).hexdigest() == row.weights_sha256
        held = evaluate(s, row.id, result.model.name, holdout_of=row.id)
        everything = evaluate(s, row.id, result.model.name)
        run = neighbour_lists(s, row.id, holdout_of=row.id)
        assert held.n == 10 and everything.n == 30 and not trained & set(run.queries)
        assert set(held.to_json()) == set(everything.to_json())
        # The new model loads through the ordinary path (search by file, embed, the worker) and gives the
        # same vector as the one written from the cached base features.
        tuned, _ = load_encoder(s, result.model.name, device="cpu")
        image_id, sha = s.execute(sa.text("SELECT id, sha256 FROM images ORDER BY id LIMIT 1")).one()
        stored = s.scalar(sa.select(Embedding.embedding).where(Embedding.model_id == row.id,
                                                               Embedding.image_id == image_id))
    fresh = tuned.encode([decode(store.read(sha)).image])[0]
    assert tuned.spec.dim == 16 and np.allclose(np.asarray(stored), fresh, atol=1e-3)

    with db.Session.begin() as s:
        html = build_report(s, None, title="test report")
    assert html.count("data:image/png;base64,") == 3  # precision@k and one confusion matrix per model
    assert result.model.name in html and "Augmentation ablation" in html and "recall" in html


def test_a_tuned_model_loads_from_its_store_after_the_store_moved(db: Database, image_folder: Path,
                                                                 encoder) -> None:
    # Restoring a backup into another PLANKTON_HOME moves the store: the recorded checkpoint path goes stale,
    # and the checkpoint is found again by its sha256.
    from plankton_db.errors import UnknownModel

    ingest_and_embed(db, image_folder, encoder)
    store = ContentStore(db.settings.store)
    result = train(db.Session, store, TrainConfig(epochs=1, device="cpu", dim=8), cache_dir=db.settings.home / "cache")
    with db.Session.begin() as s:
        s.execute(sa.text("UPDATE embedding_models SET params = params || '{\"checkpoint\": \"/gone/ckpt.pt\"}' "
                          "WHERE name = :n"), {"n": result.model.name})
    with db.Session() as s:
        tuned, row = load_encoder(s, result.model.name, device="cpu", store=store)
        assert row.params["checkpoint"] == "/gone/ckpt.pt" and tuned.spec.dim == 8
        with pytest.raises(UnknownModel):  # without the store only the stale path is known
            load_encoder(s, result.model.name, device="cpu")


def test_ctrl_c_keeps_the_last_complete_epoch() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8)).astype(np.float32) + np.repeat(np.eye(2, 8) * 3, 20, axis=0).astype(np.float32)
    y = np.repeat([0, 1], 20)

    def stop_after_two(epoch: int, _loss: float, _s: float) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    head, done, interrupted, loss = fit_head(x, y, TrainConfig(epochs=5, dim=4, batch_size=8), 2, stop_after_two)
    assert (done, interrupted) == (2, True) and np.isfinite(loss)
    with torch.no_grad():
        assert head(torch.as_tensor(x)).shape == (40, 4)


def test_split_is_stratified_and_keeps_a_training_image_per_class() -> None:
    y = np.array([0] * 10 + [1] * 5 + [2])
    tr, ho = split(y, 0.2, seed=3)
    assert sorted(np.bincount(y[ho], minlength=3)) == [0, 1, 2]
    assert set(y[tr]) == {0, 1, 2} and not set(tr) & set(ho)


def test_bad_base_no_labels_and_bad_options_are_clear_errors(cli_env: dict[str, str], db: Database,
                                                             image_folder: Path) -> None:
    r = runner.invoke(app, ["train", "--base", "nope"], env=cli_env)
    assert r.exit_code == 1 and "unknown model 'nope'" in r.output
    ingest_paths(db.Session, db.settings, [image_folder])  # images, but no labels
    with db.Session.begin() as s:
        s.execute(sa.text("INSERT INTO embedding_models (name, arch, weights_sha256, dim, preprocess) "
                          "VALUES ('tf_efficientnet_lite0', 'tf_efficientnet_lite0', :z, 1280, '{}')"), {"z": "0" * 64})
    r = runner.invoke(app, ["train"], env=cli_env)
    assert r.exit_code == 1 and "no images with validated labels to train on" in r.output
    r = runner.invoke(app, ["train", "--mode", "both"], env=cli_env)
    assert r.exit_code == 1 and "mode must be one of head, last, full" in r.output
    r = runner.invoke(app, ["train", "--augment", "spin"], env=cli_env)
    assert r.exit_code == 1 and "unknown augmentation 'spin'" in r.output


def test_full_mode_fine_tunes_the_backbone_on_a_small_subset(db: Database, image_folder: Path, encoder) -> None:
    ingest_and_embed(db, image_folder, encoder)
    store = ContentStore(db.settings.store)
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    result = train(db.Session, store, TrainConfig(mode="full", epochs=1, limit_per_class=2, batch_size=10, dim=8,
                                                  augment=("rotate", "flip"), device="cpu"),
                   cache_dir=db.settings.home / "cache")
    assert result.n_train == 10 and result.embedded == 0 and result.epochs_done == 1
    with db.Session.begin() as s:
        tuned, row = load_encoder(s, result.model.name, device="cpu")
    changed = [k for k, v in tuned.model.backbone.state_dict().items() if v.dtype.is_floating_point
               and not torch.equal(v, before[k])]
    assert changed, "full mode must change backbone weights"
    # The shared encoder fixture itself is untouched (training works on a copy).
    assert all(torch.equal(v, before[k]) for k, v in encoder.model.state_dict().items())
    assert row.params["mode"] == "full"


def test_last_mode_trains_only_the_last_stage_on_cached_trunk_outputs(db: Database, image_folder: Path,
                                                                     encoder) -> None:
    ingest_and_embed(db, image_folder, encoder)
    store = ContentStore(db.settings.store)
    before = {k: v.clone() for k, v in encoder.model.state_dict().items()}
    views: list[int] = []
    result = train(db.Session, store, TrainConfig(mode="last", epochs=1, batch_size=8, dim=8, augment=("dihedral",),
                                                  device="cpu"),
                   cache_dir=db.settings.home / "cache", on_progress=lambda done, _total: views.append(done))
    assert result.n_train == 25 and result.epochs_done == 1 and views[-1] == 25
    with db.Session.begin() as s:
        tuned, row = load_encoder(s, result.model.name, device="cpu")
    state = tuned.model.backbone.state_dict()
    changed = {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks.") else "")
               for k, v in state.items() if v.dtype.is_floating_point and not torch.equal(v, before[k])}
    # Only the last block and the head convolution (with its BatchNorm) learn; the trunk is the pretrained one.
    assert changed and changed <= {f"blocks.{len(encoder.model.blocks) - 1}", "conv_head", "bn2"}, changed
    assert all(torch.equal(v, before[k]) for k, v in encoder.model.state_dict().items())
    assert row.params["mode"] == "last" and row.params["hyper"]["augment"] == ["dihedral"]
    # The registered checkpoint embeds like any model: unit vectors of the head's size.
    out = tuned.encode_tensors(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 8) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    # The trunk maps were cached: a second pass reads them and never runs the trunk.
    (cache,) = (db.settings.home / "cache").glob("trunk-*.pt")
    with db.Session() as s:
        base, _ = load_encoder(s, None, device="cpu")
    trunk, _ = split_backbone(base.model.float())
    shas = list(torch.load(cache, weights_only=True))

    def refuse(_x):
        raise AssertionError("the trunk ran although its maps were cached")

    maps, owner = trunk_maps(base, refuse, store, shas, ("dihedral",), 4, 0, cache_dir=cache.parent)
    assert maps.shape[0] == 8 * len(shas) and owner.tolist() == np.repeat(np.arange(len(shas)), 8).tolist()
    # A damaged cache file is recomputed, not trusted.
    cache.write_bytes(b"not a torch file")
    again, _ = trunk_maps(base, trunk, store, shas, ("dihedral",), 4, 0, cache_dir=cache.parent)
    assert torch.equal(again, maps)


def test_last_mode_refuses_to_hold_more_trunk_maps_than_memory_allows(db: Database, image_folder: Path, encoder,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from plankton_db import finetune
    from plankton_db.errors import InvalidArgument

    ingest_and_embed(db, image_folder, encoder)
    store = ContentStore(db.settings.store)
    # At 64 px a trunk map is 192 x 2 x 2 float16 = 1.5 KiB; 25 images x 8 views need 300 KiB.
    monkeypatch.setattr(finetune, "available_memory", lambda: 400 * 1024)
    cfg = TrainConfig(mode="last", epochs=1, dim=8, augment=("dihedral",), device="cpu")
    with pytest.raises(InvalidArgument, match=r"^--mode last would hold 0\.0 GiB of trunk maps in memory \(200 views\)"):
        train(db.Session, store, cfg, cache_dir=db.settings.home / "cache")
    with db.Session() as s:  # nothing was registered
        assert s.execute(sa.text("SELECT count(*) FROM embedding_models")).scalar_one() == 1
    # --limit-per-class applies to last mode too, and brings the run under the limit.
    result = train(db.Session, store, dataclasses.replace(cfg, limit_per_class=2),
                   cache_dir=db.settings.home / "cache")
    assert result.n_train == 10 and result.epochs_done == 1  # 2 from each of the 5 classes


def test_last_mode_names_the_families_it_supports() -> None:
    from plankton_db.errors import InvalidArgument
    from plankton_db.finetune import split_backbone

    with pytest.raises(InvalidArgument, match="^--mode last supports timm EfficientNet and ResNet models, not Linear;"):
        split_backbone(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("holdout", ["--holdout"])
def test_eval_holdout_flag_on_a_model_without_training_images(cli_env: dict[str, str], db: Database,
                                                             holdout: str) -> None:
    from seed import seed

    with db.Session.begin() as s:
        seed(s, np.eye(4, 8, dtype=np.float32) + 0.01, labels=["a", "a", "b", "b"])
    r = runner.invoke(app, ["eval", "--model", "test-model", holdout, "--json"], env=cli_env)
    assert r.exit_code == 0, r.output
    assert '"n": 4' in r.output


def test_one_cycle_warms_up_to_each_groups_rate_then_decays_and_stays_constant_for_a_smoke_test() -> None:
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [w], "lr": 1.0}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 0.1}])
    step, seen = one_cycle(opt, 100), []
    for _ in range(120):  # past the end: the schedule must stop at its last step, not raise
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        step()
    first, peak, last = seen[0], np.max(seen, axis=0), seen[-1]
    assert first[0] < 0.1 and peak == pytest.approx([1.0, 0.1]) and last[0] < 1e-3 and last[1] < 1e-4
    assert int(np.argmax([s[0] for s in seen])) in range(8, 12)  # 10% warm-up
    opt = torch.optim.SGD([w], lr=0.5)
    step = one_cycle(opt, 10)  # torch's OneCycleLR raises ZeroDivisionError at exactly 10 steps
    for _ in range(12):
        opt.step()
        step()
    assert opt.param_groups[0]["lr"] == 0.5
