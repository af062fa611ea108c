"""Thumbnails made once from the content store and cached on disk beside it, keyed by sha256."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from plankton_db.imageio import decode, to_rgb
from plankton_db.store import ContentStore

THUMB_SIZE = 160
THUMB_VERSION = "v1"  # bump when the recipe changes, so old cached files are not served


class ThumbnailCache:
    """JPEG thumbnails under root/<version>/ab/<sha256>.jpg, written atomically the first time they are asked for."""

    def __init__(self, store: ContentStore, root: Path, size: int = THUMB_SIZE) -> None:
        self.store = store
        self.root = Path(root) / THUMB_VERSION
        self.size = size

    def path_for(self, sha256: str) -> Path:
        """Where the thumbnail of this digest is cached (the digest is checked by the store)."""
        self.store.path_for(sha256)
        return self.root / sha256[:2] / f"{sha256}.jpg"

    def get(self, sha256: str) -> bytes:
        """The thumbnail bytes, made from the stored image on first use."""
        path = self.path_for(sha256)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = self.render(self.store.read(sha256))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Two requests may render the same thumbnail at once; the rename makes the last one win whole.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return data

    def render(self, data: bytes) -> bytes:
        """Decode stored bytes and shrink them to fit a size x size box, keeping the aspect ratio."""
        img = to_rgb(decode(data, max_pixels=2**62).image)
        # Small plankton crops are enlarged too, so every tile shows the organism at a usable size.
        scale = self.size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=85)
        return out.getvalue()
