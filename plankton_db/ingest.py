"""Turning image files into `images` rows plus stored bytes; idempotent by sha256."""

from __future__ import annotations

import errno
import getpass
import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from plankton_db.config import Settings
from plankton_db.errors import ImageRejected
from plankton_db.imageio import decode
from plankton_db.models import Image
from plankton_db.queue import enqueue_new_images
from plankton_db.store import ContentStore, sha256_bytes

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
BATCH_SIZE = 256
FOLDER_LABEL_SOURCE = "folder"


@dataclass(frozen=True)
class Candidate:
    """A file to ingest and the label its folder gives it (if asked for)."""

    path: Path
    label: str | None = None


@dataclass(frozen=True)
class Rejection:
    """A file that was not ingested, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class StoredImage:
    """Bytes that decoded completely and now live in the content store, with the facts an images row needs."""

    sha256: str
    width: int
    height: int
    format: str
    mode: str
    n_bytes: int

    def columns(self) -> dict[str, object]:
        """The `images` columns these facts fill."""
        return {"sha256": self.sha256, "width": self.width, "height": self.height, "format": self.format,
                "mode": self.mode, "n_bytes": self.n_bytes}


def store_image(data: bytes, store: ContentStore, max_pixels: int) -> StoredImage:
    """Decode `data` fully (raising ImageRejected) and then write it to the store; the one path for every importer."""
    decoded = decode(data, max_pixels=max_pixels)
    digest = store.put(data, sha256_bytes(data))
    return StoredImage(digest, decoded.width, decoded.height, decoded.format, decoded.mode, len(data))


@dataclass(frozen=True)
class Prepared:
    """A decoded, stored file, ready to become a row."""

    candidate: Candidate
    stored: StoredImage


@dataclass
class IngestSummary:
    """What an ingest run did."""

    seen: int = 0
    added: int = 0
    already_present: int = 0
    labels_added: int = 0
    ignored: int = 0
    rejected: list[Rejection] = field(default_factory=list)

    def merge(self, other: IngestSummary) -> None:
        """Add another summary's counts into this one."""
        self.seen += other.seen
        self.added += other.added
        self.already_present += other.already_present
        self.labels_added += other.labels_added
        self.ignored += other.ignored
        self.rejected.extend(other.rejected)


def discover(paths: Iterable[Path], *, labels_from_folders: bool = False) -> tuple[list[Candidate], IngestSummary]:
    """List the image files under `paths`; missing paths are rejections, other files are ignored."""
    found: list[Candidate] = []
    summary = IngestSummary()

    def add(p: Path) -> None:
        found.append(Candidate(p, text_path(p.parent.name) if labels_from_folders else None))

    for root in paths:
        root = Path(root)
        if root.is_dir():
            # followlinks=False: a symlink loop must not hang ingest.
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if name.startswith("."):
                        continue
                    p = Path(dirpath) / name
                    if p.suffix.lower() in IMAGE_SUFFIXES:
                        add(p)
                    else:
                        summary.ignored += 1
        elif root.exists() or root.is_symlink():
            add(root)  # named explicitly, so it is tried whatever its suffix
        else:
            summary.rejected.append(Rejection(text_path(root), "no such file or directory"))
    return found, summary


def read_input_file(path: Path) -> bytes:
    """The bytes of a regular file; a FIFO, device or socket raises OSError instead of blocking or never ending."""
    # O_NONBLOCK: opening a FIFO with no writer would otherwise wait for ever; it changes nothing for regular files.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or socket)", str(path))
        return fh.read()


def text_path(path: Path | str) -> str:
    """The path as storable text: bytes that are not UTF-8 (older file systems) become \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def prepare(candidate: Candidate, store: ContentStore, max_pixels: int) -> Prepared | Rejection:
    """Read, validate and store one file; a bad file becomes a Rejection, never an exception."""
    try:
        data = read_input_file(candidate.path)
    except OSError as exc:
        return Rejection(text_path(candidate.path), f"cannot read: {exc.strerror or exc}")
    try:
        return Prepared(candidate, store_image(data, store, max_pixels))
    except ImageRejected as exc:
        return Rejection(str(candidate.path), str(exc))


def ensure_taxa(session: Session, names: Iterable[str]) -> dict[str, int]:
    """Create missing taxa by name and return name -> id for all of them."""
    wanted = sorted(set(names))
    if not wanted:
        return {}
    session.execute(
        sa.text("INSERT INTO taxa (name) SELECT unnest(CAST(:names AS text[])) ON CONFLICT (name) DO NOTHING"),
        {"names": wanted},
    )
    rows = session.execute(sa.text("SELECT name, id FROM taxa WHERE name = ANY(:names)"), {"names": wanted})
    return {name: tid for name, tid in rows}


def add_annotations(
    session: Session,
    pairs: Sequence[tuple[int, int]],
    *,
    status: str,
    annotator: str,
    source: str,
) -> int:
    """Append (image_id, taxon_id) annotations unless an identical one exists; return how many were added."""
    if not pairs:
        return 0
    result = session.execute(
        sa.text(
            """
            INSERT INTO annotations (image_id, taxon_id, status, annotator, source)
            SELECT DISTINCT p.image_id, p.taxon_id, :status, :annotator, :source
              FROM unnest(CAST(:image_ids AS bigint[]), CAST(:taxon_ids AS int[])) AS p(image_id, taxon_id)
             WHERE NOT EXISTS (
                   SELECT 1 FROM annotations a
                    WHERE a.image_id = p.image_id AND a.taxon_id = p.taxon_id
                      AND a.status = :status AND a.source = :source)
            """
        ),
        {
            "image_ids": [p[0] for p in pairs],
            "taxon_ids": [p[1] for p in pairs],
            "status": status,
            "annotator": annotator,
            "source": source,
        },
    )
    return result.rowcount


def ingest_batch(
    session: Session,
    batch: Sequence[Prepared],
    *,
    sample: str | None = None,
    instrument: str | None = None,
    annotator: str | None = None,
) -> IngestSummary:
    """Insert rows for already-stored files (one statement) plus their folder labels."""
    summary = IngestSummary(seen=len(batch))
    if not batch:
        return summary
    unique: dict[str, Prepared] = {}
    for p in batch:
        unique.setdefault(p.stored.sha256, p)
    rows = [
        {
            **p.stored.columns(),
            "original_name": text_path(p.candidate.path.name),
            "original_path": text_path(p.candidate.path.absolute()),
            "sample": sample,
            "instrument": instrument,
        }
        for p in unique.values()
    ]
    stmt = pg_insert(Image).values(rows).on_conflict_do_nothing(index_elements=["sha256"]).returning(Image.sha256)
    inserted = set(session.execute(stmt).scalars())
    summary.added = len(inserted)
    summary.already_present = len(batch) - len(inserted)
    ids = dict(session.execute(sa.select(Image.sha256, Image.id).where(Image.sha256.in_(list(unique)))).all())
    # Same transaction as the rows: no image is ever committed without the embedding jobs of the models
    # that workers serve (see plankton_db.queue.enqueue_new_images and docs/WORKER.md).
    enqueue_new_images(session, [ids[sha] for sha in inserted])

    labelled = [(ids[p.stored.sha256], p.candidate.label) for p in batch if p.candidate.label]
    if labelled:
        taxa = ensure_taxa(session, (label for _, label in labelled))
        summary.labels_added = add_annotations(
            session,
            [(image_id, taxa[label]) for image_id, label in labelled],
            status="validated",
            annotator=annotator or getpass.getuser(),
            source=FOLDER_LABEL_SOURCE,
        )
    return summary


def _chunks(items: Sequence[Candidate], size: int) -> Iterator[Sequence[Candidate]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def ingest_paths(
    Session: sessionmaker[Session],
    settings: Settings,
    paths: Iterable[Path],
    *,
    labels_from_folders: bool = False,
    sample: str | None = None,
    instrument: str | None = None,
    annotator: str | None = None,
    on_discovered: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> IngestSummary:
    """Ingest every image under `paths`, one transaction per batch so a crash loses at most a batch."""
    candidates, summary = discover(paths, labels_from_folders=labels_from_folders)
    summary.seen = len(summary.rejected)
    if on_discovered:
        on_discovered(len(candidates))
    store = ContentStore(settings.store)
    workers = min(8, (os.cpu_count() or 1) + 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk in _chunks(candidates, BATCH_SIZE):
            results = list(pool.map(lambda c: prepare(c, store, settings.max_pixels), chunk))
            good = [r for r in results if isinstance(r, Prepared)]
            bad = [r for r in results if isinstance(r, Rejection)]
            with Session.begin() as session:
                part = ingest_batch(session, good, sample=sample, instrument=instrument, annotator=annotator)
            part.seen += len(bad)
            part.rejected.extend(bad)
            summary.merge(part)
            if on_progress:
                on_progress(len(chunk))
    return summary
