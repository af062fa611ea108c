"""A content-addressed folder of image bytes: each file lives at its sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from PIL import Image

from plankton_db.errors import UnknownImage
from plankton_db.imageio import decode


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


class ContentStore:
    """Stores bytes under root/ab/cd/<sha256>; identical content is written once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, sha256: str) -> Path:
        """Where the bytes with this digest live (whether or not they exist)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise UnknownImage(f"not a sha256 digest: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def has(self, sha256: str) -> bool:
        """Whether the bytes are stored."""
        return self.path_for(sha256).is_file()

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store `data` atomically (temp file, fsync, rename) and return its sha256."""
        digest = sha256 or sha256_bytes(data)
        target = self.path_for(digest)
        if target.is_file():
            # Touched so `plankton db check --fix-orphans` sees the file as in use: its grace period counts
            # from the last ingest that relied on it, not from when the bytes were first written.
            os.utime(target)
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        # A crash leaves at most a stray temp file, never a partial file at the final path.
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest

    def read(self, sha256: str) -> bytes:
        """The stored bytes for a digest."""
        try:
            return self.path_for(sha256).read_bytes()
        except FileNotFoundError:
            raise UnknownImage(f"image {sha256} is missing from the store at {self.root}") from None

    def read_image(self, sha256: str) -> Image.Image:
        """The stored image, fully decoded; no pixel limit here, because ingest enforced it before storing."""
        return decode(self.read(sha256), max_pixels=2**62).image
