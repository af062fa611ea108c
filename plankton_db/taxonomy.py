"""The taxonomy tree: importing it from CSV, subtree queries, and moving labels between taxa with history kept."""

from __future__ import annotations

import csv
import getpass
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.errors import InvalidArgument
from plankton_db.ingest import ensure_taxa

NAME_COLUMNS = ("name",)
PARENT_COLUMNS = ("parent",)
APHIA_COLUMNS = ("aphia_id", "aphiaid")
RANK_COLUMNS = ("rank",)
MOVE_SOURCE = "taxonomy-move"
MAX_PROBLEMS_SHOWN = 5


@dataclass(frozen=True)
class TaxonRow:
    """One line of a taxonomy CSV."""

    line: int
    name: str
    parent: str | None
    aphia_id: int | None
    rank: str | None


@dataclass
class TaxonomySummary:
    """What a taxonomy import did."""

    rows: int = 0
    added: int = 0
    updated: int = 0
    problems: list[str] = field(default_factory=list)


def _column(header: list[str], names: Sequence[str], required: bool, source: str) -> int | None:
    for i, h in enumerate(header):
        if h in names:
            return i
    if required:
        raise InvalidArgument(f"{source}: the header has no {names[0]!r} column (found: {', '.join(header) or 'none'})")
    return None


def _csv_lines(reader, source: str):
    """The reader's rows; a malformed file becomes InvalidArgument with its line, not a csv.Error."""
    try:
        yield from reader
    except csv.Error as exc:
        raise InvalidArgument(f"{source}: line {reader.line_num}: not readable as CSV ({exc})") from None


def parse_taxonomy_csv(text: str, source: str = "taxonomy.csv") -> list[TaxonRow]:
    """Read `name,parent,aphia_id,rank` rows (only name is required); raise InvalidArgument listing bad lines."""
    # The sniffer only decides between comma, semicolon and tab: spreadsheets in many locales write ';'.
    sample = text[:4096]
    delimiter = max(",;\t", key=sample.split("\n", 1)[0].count)
    # newline="": a bare \r (old Mac line ends) is a line end, not an error.
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff"), newline=""), delimiter=delimiter)
    lines = _csv_lines(reader, source)
    header = [h.strip().lower() for h in next(lines, [])]
    if not any(header):
        raise InvalidArgument(f"{source}: the file is empty; expected a header with at least a 'name' column")
    name_i = _column(header, NAME_COLUMNS, True, source)
    parent_i = _column(header, PARENT_COLUMNS, False, source)
    aphia_i = _column(header, APHIA_COLUMNS, False, source)
    rank_i = _column(header, RANK_COLUMNS, False, source)

    def cell(values: list[str], i: int | None) -> str | None:
        return (values[i].strip() or None) if i is not None and i < len(values) else None

    rows: list[TaxonRow] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for values in lines:
        line = reader.line_num
        if not any(v.strip() for v in values):
            continue
        name = cell(values, name_i)
        if name is None:
            problems.append(f"line {line}: empty name")
            continue
        if name in seen:
            problems.append(f"line {line}: {name!r} is already defined on line {seen[name]}")
            continue
        seen[name] = line
        aphia_text = cell(values, aphia_i)
        aphia = None
        if aphia_text is not None:
            if not aphia_text.isdigit() or int(aphia_text) == 0:
                problems.append(f"line {line}: AphiaID must be a positive integer, got {aphia_text!r}")
                continue
            aphia = int(aphia_text)
        parent = cell(values, parent_i)
        if parent == name:
            problems.append(f"line {line}: {name!r} cannot be its own parent")
            continue
        rows.append(TaxonRow(line, name, parent, aphia, cell(values, rank_i)))
    if problems:
        _raise(source, problems)
    return rows


def _raise(source: str, problems: list[str]) -> None:
    shown = "; ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = f" (and {len(problems) - MAX_PROBLEMS_SHOWN} more)" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    raise InvalidArgument(f"{source}: {shown}{more}; nothing was imported")


def import_taxonomy(session: Session, rows: Sequence[TaxonRow], source: str = "taxonomy.csv") -> TaxonomySummary:
    """Create or update taxa (parent, AphiaID, rank) from parsed rows, all or nothing; refuse unknown parents and cycles."""
    summary = TaxonomySummary(rows=len(rows))
    existing = {name: (tid, parent) for tid, name, parent in session.execute(
        sa.text("SELECT t.id, t.name, p.name FROM taxa t LEFT JOIN taxa p ON p.id = t.parent_id"))}
    parents = {name: parent for name, (_, parent) in existing.items()}
    problems = []
    for r in rows:
        if r.parent is not None and r.parent not in parents and r.parent not in {x.name for x in rows}:
            problems.append(f"line {r.line}: parent {r.parent!r} of {r.name!r} is neither in the file nor in the database")
        parents[r.name] = r.parent if r.parent is not None else (parents.get(r.name) if r.name in existing else None)
    for r in rows:
        seen, node = {r.name}, parents.get(r.name)
        while node is not None:
            if node in seen:
                problems.append(f"line {r.line}: {r.name!r} would be its own ancestor (cycle through {node!r})")
                break
            seen.add(node)
            node = parents.get(node)
    if problems:
        _raise(source, problems)
    ids = ensure_taxa(session, [r.name for r in rows] + [r.parent for r in rows if r.parent])
    summary.added = sum(1 for r in rows if r.name not in existing)
    changed = set(session.scalars(
        sa.text(
            """
            UPDATE taxa t
               SET parent_id = coalesce(CAST(u.parent_id AS int), t.parent_id),
                   aphia_id = coalesce(CAST(u.aphia_id AS int), t.aphia_id),
                   rank = coalesce(u.rank, t.rank)
              FROM unnest(CAST(:ids AS int[]), CAST(:parents AS int[]), CAST(:aphia AS int[]), CAST(:ranks AS text[]))
                   AS u(id, parent_id, aphia_id, rank)
             WHERE t.id = u.id
               AND (t.parent_id, t.aphia_id, t.rank) IS DISTINCT FROM
                   (coalesce(CAST(u.parent_id AS int), t.parent_id), coalesce(CAST(u.aphia_id AS int), t.aphia_id),
                    coalesce(u.rank, t.rank))
            RETURNING t.name
            """
        ),
        {"ids": [ids[r.name] for r in rows], "parents": [ids[r.parent] if r.parent else None for r in rows],
         "aphia": [r.aphia_id for r in rows], "ranks": [r.rank for r in rows]},
    ))
    summary.updated = len(changed & existing.keys())
    return summary


def link_lineage(session: Session, chain: Sequence[str]) -> None:
    """Give each taxon of a root-to-leaf chain its parent, where it has none yet and no cycle would result."""
    if len(chain) < 2:
        return
    ids = ensure_taxa(session, chain)
    for parent, child in zip(chain, chain[1:]):
        if parent == child:
            continue
        session.execute(
            sa.text("UPDATE taxa SET parent_id = :p WHERE id = :c AND parent_id IS NULL "
                    "AND :p NOT IN (SELECT taxon_subtree(:child))"),
            {"p": ids[parent], "c": ids[child], "child": child},
        )


def subtree_ids(session: Session, name: str) -> list[int]:
    """The ids of a taxon and of every taxon below it, or InvalidArgument when the name is unknown."""
    ids = list(session.scalars(sa.text("SELECT taxon_subtree(:n)"), {"n": name}))
    if not ids:
        raise InvalidArgument(f"unknown taxon {name!r}")
    return ids


def lineage(session: Session, name: str) -> list[str]:
    """The names from the root down to this taxon."""
    path = session.scalar(sa.text("SELECT path FROM taxon_paths WHERE name = :n"), {"n": name})
    if path is None:
        raise InvalidArgument(f"unknown taxon {name!r}")
    return path.split(">")


def move_labels(session: Session, source: str, target: str, *, annotator: str | None = None) -> int:
    """Relabel every image whose current label is `source` as `target`, by appending annotations; return how many.

    Each new annotation keeps the status and score of the label it replaces, so a validated label stays
    validated under its new name; the old annotations stay in the history.
    """
    if source == target:
        raise InvalidArgument(f"cannot move labels from {source!r} to itself")
    found = dict(session.execute(sa.text("SELECT name, id FROM taxa WHERE name IN (:a, :b)"), {"a": source, "b": target}).all())
    for name in (source, target):
        if name not in found:
            raise InvalidArgument(f"unknown taxon {name!r}")
    # clock_timestamp(), not now(): the new rows must be newer than labels written earlier in this transaction.
    return session.execute(
        sa.text(
            """
            INSERT INTO annotations (image_id, taxon_id, status, annotator, source, score, created_at)
            SELECT l.image_id, :target, l.status, :who, :src, a.score, greatest(clock_timestamp(), l.annotated_at)
              FROM image_labels l
              JOIN annotations a ON a.id = l.annotation_id
             WHERE l.taxon_id = :source
            """
        ),
        {"target": found[target], "source": found[source], "who": annotator or getpass.getuser(), "src": MOVE_SOURCE},
    ).rowcount
