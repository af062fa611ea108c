"""Importing EcoTaxa TSV files (alone, in a folder tree, or in a zip) with their images and annotations."""

from __future__ import annotations

import os
import posixpath
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session, sessionmaker

from plankton_db.config import Settings
from plankton_db.ecotaxa import Problem, Record, Table, lineage_for, parse_tsv
from plankton_db.errors import ImageRejected, InvalidArgument
from plankton_db.ingest import StoredImage, ensure_taxa, read_input_file, store_image
from plankton_db.models import Image
from plankton_db.queue import enqueue_new_images
from plankton_db.store import ContentStore
from plankton_db.taxonomy import link_lineage

# EcoTaxa's own rule for which files in a folder or zip are tables (ecotaxa_back InBundle.TSV_FILTERS).
TSV_PATTERNS = ("ecotaxa*.tsv", "ecotaxa*.txt")
BATCH_ROWS = 256
MAX_MEMBER_BYTES = 512 << 20  # one image inside a zip; larger members are refused before reading (zip bombs)
SOURCE_PREFIX = "ecotaxa:"


class Bundle:
    """Where TSV files and the images they name are read from: a folder tree or a zip."""

    label: str

    def tables(self) -> list[str]:
        """Relative names of the TSV files to import."""
        raise NotImplementedError

    def read(self, name: str) -> bytes:
        """The bytes of a member (raises OSError or KeyError when missing)."""
        raise NotImplementedError

    def origin(self, name: str) -> str:
        """What to record as the image's original_path."""
        raise NotImplementedError


class FolderBundle(Bundle):
    """A folder (searched recursively for ecotaxa*.tsv) or one TSV file and the folder it is in."""

    def __init__(self, root: Path, only: str | None = None) -> None:
        self.root, self.only, self.label = root, only, str(root / only if only else root)

    def tables(self) -> list[str]:
        if self.only:
            return [self.only]
        found = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = Path(dirpath).relative_to(self.root)
            found += [(rel / f).as_posix() for f in sorted(filenames) if any(fnmatch(f.lower(), p) for p in TSV_PATTERNS)]
        return found

    def read(self, name: str) -> bytes:
        return read_input_file(self.root / name)  # a FIFO named in a TSV must not hang the import

    def origin(self, name: str) -> str:
        return str((self.root / name).absolute())


class ZipBundle(Bundle):
    """A zip as EcoTaxa exports and imports it; members are read in memory, never extracted to disk."""

    def __init__(self, path: Path) -> None:
        try:
            self.zip = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise InvalidArgument(f"{path}: not a readable zip file ({exc})") from None
        self.path, self.label = path, str(path)

    def tables(self) -> list[str]:
        return sorted(n for n in self.zip.namelist()
                      if any(fnmatch(PurePosixPath(n).name.lower(), p) for p in TSV_PATTERNS))

    def read(self, name: str) -> bytes:
        info = self.zip.getinfo(name)
        if info.file_size > MAX_MEMBER_BYTES:
            raise OSError(f"{info.file_size} bytes is over the {MAX_MEMBER_BYTES >> 20} MiB limit for one member")
        return self.zip.read(info)

    def origin(self, name: str) -> str:
        return f"{self.path.absolute()}!{name}"


def open_bundle(path: Path) -> Bundle:
    """A TSV file, a folder, or a zip; InvalidArgument when it is none of these."""
    path = Path(path)
    if path.is_dir():
        return FolderBundle(path)
    if not path.exists():
        raise InvalidArgument(f"{path}: no such file or directory")
    if zipfile.is_zipfile(path):
        return ZipBundle(path)
    if path.suffix.lower() in (".tsv", ".txt"):
        return FolderBundle(path.parent, path.name)
    raise InvalidArgument(f"{path}: expected an EcoTaxa .tsv file, a folder or a .zip")


def image_member(table: str, image: str) -> str:
    """The bundle-relative name of an image named in a TSV: img_file_name is relative to the TSV's folder."""
    name = image.replace("\\", "/")
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(table), name))
    if name.startswith("/") or joined == ".." or joined.startswith("../"):
        raise ValueError(f"img_file_name {image!r} must be a path relative to the TSV, inside the bundle")
    return joined


@dataclass
class ImportSummary:
    """What an EcoTaxa import did."""

    tables: list[str] = field(default_factory=list)
    rows: int = 0
    images_added: int = 0
    already_present: int = 0
    annotations_added: int = 0
    problems: list[Problem] = field(default_factory=list)
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    inferred_types: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Ready:
    record: Record
    member: str
    stored: StoredImage


def _prepare(bundle: Bundle, table: str, record: Record, store: ContentStore, max_pixels: int) -> _Ready | Problem:
    try:
        member = image_member(table, record.image)
        data = bundle.read(member)
    except ValueError as exc:
        return Problem(table, record.line, str(exc))
    except (OSError, KeyError):
        return Problem(table, record.line, f"image {record.image!r} not found next to the TSV")
    try:
        # Outside the try above: a failing write to the store is an error, not a missing image.
        return _Ready(record, member, store_image(data, store, max_pixels))
    except ImageRejected as exc:
        return Problem(table, record.line, f"image {record.image!r}: {exc}")


def store_batch(session: Session, bundle: Bundle, table: str, batch: Sequence[_Ready],
                summary: ImportSummary) -> None:
    """Insert the batch's images (new ones only), link their taxa, and append their annotations."""
    rows = {}
    for r in batch:
        rec = r.record
        rows.setdefault(r.stored.sha256, {
            **r.stored.columns(), "original_name": rec.image, "original_path": bundle.origin(r.member),
            "sample": rec.sample, "instrument": rec.instrument, "latitude": rec.latitude, "longitude": rec.longitude,
            "depth_min": rec.depth_min, "depth_max": rec.depth_max, "captured_at": rec.captured_at,
            "meta": rec.metadata,
        })
    stmt = pg_insert(Image).values(list(rows.values())).on_conflict_do_nothing(index_elements=["sha256"])
    inserted = list(session.execute(stmt.returning(Image.id)).scalars())
    summary.images_added += len(inserted)
    summary.already_present += len(batch) - len(inserted)
    enqueue_new_images(session, inserted)
    ids = dict(session.execute(sa.select(Image.sha256, Image.id).where(Image.sha256.in_(list(rows)))).all())

    labelled = [r for r in batch if r.record.annotation]
    if not labelled:
        return
    chains = {tuple(lineage_for(r.record.annotation)) for r in labelled}
    taxa = ensure_taxa(session, {name for chain in chains for name in chain})
    for chain in sorted(chains):
        link_lineage(session, chain)
    anns = [r.record.annotation for r in labelled]
    # The TSV's annotation date becomes created_at, so history and "newest wins" follow EcoTaxa's timeline;
    # an identical annotation (same image, taxon, status, person and time) is not appended twice.
    summary.annotations_added += session.execute(
        sa.text(
            """
            INSERT INTO annotations (image_id, taxon_id, status, annotator, source, created_at)
            SELECT DISTINCT p.image_id, p.taxon_id, p.status, p.annotator, :source, coalesce(p.at, now())
              FROM unnest(CAST(:image_ids AS bigint[]), CAST(:taxon_ids AS int[]), CAST(:statuses AS text[]),
                          CAST(:annotators AS text[]), CAST(:ats AS timestamptz[]))
                   AS p(image_id, taxon_id, status, annotator, at)
             WHERE NOT EXISTS (
                   SELECT 1 FROM annotations a
                    WHERE a.image_id = p.image_id AND a.taxon_id = p.taxon_id AND a.status = p.status
                      AND a.annotator = p.annotator
                      AND (a.created_at = p.at OR (p.at IS NULL AND a.source = :source)))
            """
        ),
        {"image_ids": [ids[r.stored.sha256] for r in labelled], "taxon_ids": [taxa[a.category] for a in anns],
         "statuses": [a.status for a in anns], "annotators": [a.person or "ecotaxa" for a in anns],
         "ats": [a.at for a in anns], "source": SOURCE_PREFIX + table},
    ).rowcount


def import_ecotaxa(
    Session: sessionmaker[Session],
    settings: Settings,
    path: Path,
    *,
    sample_column: str = "sample_id",
    on_rows: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ImportSummary:
    """Import every EcoTaxa table in `path`; bad rows are reported with line numbers and the rest imported.

    One transaction per batch of rows, so an interrupted import keeps what it committed, and a second run
    adds only what is missing.
    """
    sample_column = sample_column.strip().lower()
    if not sample_column.startswith(("sample_", "acq_", "object_", "process_")):
        raise InvalidArgument(f"--sample-from-column must name an EcoTaxa column such as sample_id, got {sample_column!r}")
    bundle = open_bundle(path)
    names = bundle.tables()
    if not names:
        raise InvalidArgument(f"{bundle.label}: no EcoTaxa table found (files named ecotaxa*.tsv or ecotaxa*.txt)")
    summary = ImportSummary(tables=names)
    tables: list[Table] = [parse_tsv(bundle.read(n), n, sample_column=sample_column) for n in names]
    if on_rows:
        on_rows(sum(len(t.records) for t in tables))
    store = ContentStore(settings.store)
    with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 1)) as pool:
        for table in tables:
            summary.rows += len(table.records) + len(table.problems)
            summary.problems += table.problems
            if table.ignored_columns:
                summary.ignored_columns[table.source] = table.ignored_columns
            if not table.had_type_row:
                summary.inferred_types.append(table.source)
            for start in range(0, len(table.records), BATCH_ROWS):
                chunk = table.records[start : start + BATCH_ROWS]
                results = list(pool.map(
                    lambda rec: _prepare(bundle, table.source, rec, store, settings.max_pixels), chunk))
                ready = [r for r in results if isinstance(r, _Ready)]
                summary.problems += [r for r in results if isinstance(r, Problem)]
                if ready:
                    with Session.begin() as session:
                        store_batch(session, bundle, table.source, ready, summary)
                if on_progress:
                    on_progress(len(chunk))
    summary.problems.sort(key=lambda p: (p.source, p.line or 0))
    return summary
