"""`plankton db check`: the content store and the `images` table agree, file by file.

Every row must have its file, every file its row, and each file's bytes must hash to its name. The
store is walked in sha256 order and merged with the rows read in the same order, so memory stays
flat at any archive size. Ingest writes a file before it commits the row, so a file whose row is
still being committed looks like an orphan for a moment: orphans are checked against the database
once more at the end, and `--fix-orphans` only removes files older than a grace period. Checkpoints of
fine-tuned models (`embedding_models.weights_sha256`) live in the same store and are never orphans.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.store import ContentStore

DEFAULT_GRACE_SECONDS = 3600
_HEX = re.compile(r"[0-9a-f]+")
_SHA = re.compile(r"[0-9a-f]{64}")
_CHUNK = 1 << 20
_HASH_BATCH = 256


@dataclass(frozen=True)
class StoreEntry:
    """One file in the store folder: its digest when it sits where a digest belongs, else None."""

    relpath: str
    sha256: str | None


@dataclass(frozen=True)
class RowProblem:
    """An image row whose file is missing or does not hold the bytes its sha256 names."""

    image_id: int
    sha256: str
    reason: str


@dataclass
class CheckReport:
    """What `check_store` found (and, with fix_orphans, removed)."""

    store: str
    rows: int = 0
    files: int = 0
    verified: int = 0
    missing: list[RowProblem] = field(default_factory=list)
    corrupt: list[RowProblem] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)  # files named by a digest that no row has
    strays: list[str] = field(default_factory=list)  # anything else: crash leftovers, foreign files
    removed: list[str] = field(default_factory=list)
    kept_recent: list[str] = field(default_factory=list)  # orphans and strays inside the grace period

    @property
    def ok(self) -> bool:
        """True when nothing is missing or corrupt and no orphan or stray file is left."""
        return not (self.missing or self.corrupt or self.remaining)

    @property
    def remaining(self) -> list[str]:
        """Orphan and stray files still in the store."""
        gone = set(self.removed)
        return [p for p in self.orphans + self.strays if p not in gone]

    def to_json(self) -> dict:
        """A JSON-ready dict with every list in full."""
        return {
            "store": self.store, "ok": self.ok, "rows": self.rows, "files": self.files, "verified": self.verified,
            "missing": [p.__dict__ for p in self.missing], "corrupt": [p.__dict__ for p in self.corrupt],
            "orphans": self.orphans, "strays": self.strays, "removed": self.removed,
            "kept_recent": self.kept_recent,
        }


def _sorted_dir(path: Path) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def walk_store(root: Path) -> Iterator[StoreEntry]:
    """Every file under the store root in digest order; misplaced or foreign files come with sha256=None."""
    if not root.is_dir():
        return
    for top in _sorted_dir(root):
        if not (top.is_dir(follow_symlinks=False) and len(top.name) == 2 and _HEX.fullmatch(top.name)):
            yield StoreEntry(top.name, None)
            continue
        for mid in _sorted_dir(Path(top.path)):
            rel = f"{top.name}/{mid.name}"
            if not (mid.is_dir(follow_symlinks=False) and len(mid.name) == 2 and _HEX.fullmatch(mid.name)):
                yield StoreEntry(rel, None)
                continue
            for leaf in _sorted_dir(Path(mid.path)):
                placed = (_SHA.fullmatch(leaf.name) and leaf.name[:2] == top.name and leaf.name[2:4] == mid.name
                          and leaf.is_file(follow_symlinks=False))
                yield StoreEntry(f"{rel}/{leaf.name}", leaf.name if placed else None)


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _rows(session: Session) -> Iterator[tuple[int, str, int]]:
    # COLLATE "C" sorts hex digests byte-wise, the order the store walk yields them in.
    result = session.execute(
        sa.text('SELECT id, sha256, n_bytes FROM images ORDER BY sha256 COLLATE "C"'),
        execution_options={"yield_per": 5000},
    )
    for image_id, sha, n_bytes in result:
        yield image_id, sha, n_bytes


def _merge(rows: Iterator[tuple[int, str, int]], files: Iterator[StoreEntry], report: CheckReport,
           matched: list[tuple[int, str, int]]) -> None:
    """Walk both sorted streams once: rows without files, files without rows, and the pairs."""
    sentinel = "\uffff"
    row = next(rows, None)
    entry = next(files, None)
    while row is not None or entry is not None:
        if entry is not None and entry.sha256 is None:
            report.files += 1
            report.strays.append(entry.relpath)
            entry = next(files, None)
            continue
        row_sha = row[1] if row is not None else sentinel
        file_sha = entry.sha256 if entry is not None else sentinel
        if row is not None and row_sha < file_sha:
            report.rows += 1
            report.missing.append(RowProblem(row[0], row_sha, "file missing from the store"))
            row = next(rows, None)
        elif entry is not None and file_sha < row_sha:
            report.files += 1
            report.orphans.append(entry.relpath)
            entry = next(files, None)
        else:
            report.rows += 1
            report.files += 1
            matched.append(row)
            row = next(rows, None)
            entry = next(files, None)


def _verify(store: ContentStore, item: tuple[int, str, int], hashes: bool) -> RowProblem | None:
    image_id, sha, n_bytes = item
    path = store.path_for(sha)
    try:
        size = path.stat().st_size
        if size != n_bytes:
            return RowProblem(image_id, sha, f"size {size} bytes, the row says {n_bytes}")
        if hashes and (actual := file_sha256(path)) != sha:
            return RowProblem(image_id, sha, f"content hashes to {actual}")
    except OSError as exc:
        return RowProblem(image_id, sha, f"cannot read: {exc.strerror or exc}")
    return None


def _still_orphans(session: Session, orphans: list[str]) -> list[str]:
    """The orphans that still have no row (rows committed during the walk are not orphans)."""
    if not orphans:
        return orphans
    known: set[str] = set()
    names = [Path(p).name for p in orphans]
    for start in range(0, len(names), 10_000):
        chunk = names[start:start + 10_000]
        known.update(session.execute(sa.text("SELECT sha256 FROM images WHERE sha256 = ANY(:s)"), {"s": chunk}).scalars())
        # Fine-tuned models keep their checkpoint in the store too (plankton train): not orphans.
        known.update(session.execute(sa.text(
            "SELECT weights_sha256 FROM embedding_models WHERE weights_sha256 = ANY(:s) "
            "UNION SELECT params->>'checkpoint_sha256' FROM embedding_models WHERE params->>'checkpoint_sha256' = ANY(:s)"),
            {"s": chunk}).scalars())
    return [p for p in orphans if Path(p).name not in known]


def check_store(
    session: Session,
    store: ContentStore,
    *,
    hashes: bool = True,
    fix_orphans: bool = False,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    workers: int = 4,
    on_total: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> CheckReport:
    """Compare the store with the images table; with fix_orphans, delete orphan and stray files past the grace."""
    report = CheckReport(store=str(store.root))
    if on_total:
        on_total(session.execute(sa.text("SELECT count(*) FROM images")).scalar_one())
    matched: list[tuple[int, str, int]] = []
    _merge(_rows(session), walk_store(store.root), report, matched)
    # Hashing is I/O and hashlib releases the GIL, so a few threads keep the disk busy.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        it = iter(matched)
        while batch := list(islice(it, _HASH_BATCH)):
            for problem in pool.map(lambda item: _verify(store, item, hashes), batch):
                if problem is not None:
                    report.corrupt.append(problem)
            report.verified += len(batch) if hashes else 0
            if on_progress:
                on_progress(len(batch))
    if on_progress and report.missing:
        on_progress(len(report.missing))
    report.orphans = _still_orphans(session, report.orphans)
    if fix_orphans:
        _remove_old(store.root, report, grace_seconds)
    return report


def _remove_old(root: Path, report: CheckReport, grace_seconds: float) -> None:
    """Delete orphan and stray regular files last modified before the grace period; keep the rest."""
    cutoff = time.time() - grace_seconds
    for rel in report.orphans + report.strays:
        path = root / rel
        try:
            st = path.lstat()
        except FileNotFoundError:
            report.removed.append(rel)  # gone already (another check, or a finished temp file)
            continue
        if not (os.path.isfile(path) or os.path.islink(path)):
            continue  # directories and special files are reported, never deleted
        if st.st_mtime > cutoff:
            report.kept_recent.append(rel)
            continue
        path.unlink()
        report.removed.append(rel)
