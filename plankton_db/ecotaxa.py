"""Reading EcoTaxa's TSV format: the header, the [t]/[f] type row, and one object image per data row.

Format as documented by EcoTaxa ("How to prepare data") and read by ecotaxa_back's TSVFile: line 1 names
the columns, each prefixed by its level (object_, sample_, acq_, process_, img_); line 2 gives each
column's type, [f] for numbers and [t] for text; every further line is one image of one object. Column
names are compared lower-cased and stripped. This module only parses; plankton_db/ecotaxa_import.py
stores what it returns, and plankton_db/exports.py writes the same format back.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from typing import Any

from plankton_db.errors import InvalidArgument

PREFIXES = ("object", "sample", "acq", "process", "img")
STATUSES = ("predicted", "validated", "dubious")
TYPES = {"[t]": "t", "[f]": "f"}
# Columns that become typed columns or annotation fields; everything else goes to images.metadata.
IMAGE_COLUMN = "img_file_name"
TYPED_COLUMNS = frozenset({"img_file_name", "object_lat", "object_lon", "object_date", "object_time",
                           "object_depth_min", "object_depth_max", "acq_instrument"})
ANNOTATION_COLUMNS = frozenset({"object_annotation_category", "object_annotation_status",
                                "object_annotation_person_name", "object_annotation_date",
                                "object_annotation_time", "object_annotation_hierarchy"})
# EcoTaxa's DOI exports name some columns by table; its import only knows the short prefixes.
PREFIX_ALIASES = {"obj_field_": "object_", "samples_": "sample_", "acquisitions_": "acq_", "processes_": "process_"}
NULL_NUMBERS = frozenset({"nan", "na"})  # EcoTaxa reads these as empty in numeric columns
_DMS = re.compile(r"^\s*(-?\d+)°(\d+) (\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Problem:
    """A row (or file) that could not be imported, and why."""

    source: str
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.source}, line {self.line}: {self.message}" if self.line else f"{self.source}: {self.message}"


@dataclass(frozen=True)
class Annotation:
    """The label a row carries."""

    category: str
    status: str
    person: str | None
    at: datetime | None
    hierarchy: tuple[str, ...]


@dataclass(frozen=True)
class Record:
    """One data row, parsed and typed."""

    line: int
    image: str
    sample: str | None
    instrument: str | None
    latitude: float | None
    longitude: float | None
    depth_min: float | None
    depth_max: float | None
    captured_at: datetime | None
    metadata: dict[str, Any]
    annotation: Annotation | None


@dataclass
class Table:
    """A parsed TSV: column types, good records, and the problems of the rows that were left out."""

    source: str
    types: dict[str, str]
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    ignored_columns: list[str] = field(default_factory=list)
    had_type_row: bool = True


def decode_text(data: bytes) -> str:
    """UTF-8 (with or without BOM); EcoTaxa's older files are Latin-1, so fall back to it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# ----------------------------------------------------------------------------- value parsers (raise ValueError)


def parse_number(text: str) -> float | None:
    """A float from an [f] cell; a decimal comma is accepted (EcoTaxa's French-locale exports write one)."""
    t = text.strip()
    if t.lower() in NULL_NUMBERS or not t:
        return None
    if "," in t and "." not in t:
        t = t.replace(",", ".")
    value = float(t)
    if math.isinf(value) or math.isnan(value):
        raise ValueError(f"{text!r} is not a finite number")
    return value


def parse_coordinate(text: str, limit: float) -> float | None:
    """Decimal degrees, or EcoTaxa's DDD°MM SSS form, within ±limit."""
    m = _DMS.match(text)
    if m:
        deg, minutes, seconds = (float(x) for x in m.groups())
        value = abs(deg) + (minutes + seconds / 60) / 60
        value = -value if m.group(1).startswith("-") else value
    else:
        value = parse_number(text)
    if value is not None and not -limit <= value <= limit:
        raise ValueError(f"{text.strip()} is outside -{limit:g}..{limit:g}")
    return value


def parse_date(text: str) -> date:
    """YYYYMMDD or YYYY-MM-DD."""
    t = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", t):
        t = t.replace("-", "")
    if not re.fullmatch(r"\d{8}", t):
        raise ValueError(f"date {text.strip()!r} is not YYYYMMDD")
    return date(int(t[:4]), int(t[4:6]), int(t[6:8]))


def parse_time(text: str) -> time:
    """HHMMSS, HHMM, or HH:MM:SS; spreadsheets drop leading zeros ("420" is 04:20), as EcoTaxa allows."""
    t = text.strip()
    if re.fullmatch(r"\d{2}:\d{2}:\d{2}", t):
        t = t.replace(":", "")
    if not re.fullmatch(r"\d{1,6}", t):
        raise ValueError(f"time {text.strip()!r} is not HHMMSS")
    t = t.zfill(4) if len(t) < 4 else t
    t = t.ljust(6, "0")
    return time(int(t[:2]), int(t[2:4]), int(t[4:6]))


def combine(d: str | None, t: str | None) -> datetime | None:
    """A UTC timestamp from EcoTaxa's separate date and time cells (time defaults to midnight)."""
    if not d:
        return None
    return datetime.combine(parse_date(d), parse_time(t) if t else time(0), tzinfo=timezone.utc)


# ----------------------------------------------------------------------------- the file


def _canonical(column: str) -> str:
    for alias, prefix in PREFIX_ALIASES.items():
        if column.startswith(alias):
            return prefix + column[len(alias):]
    return column


def _looks_like_type_row(cells: list[str]) -> bool:
    return any(c.strip().lower() in TYPES for c in cells)


def read_header(header: list[str], type_row: list[str] | None, source: str) -> tuple[list[str], dict[str, str], list[str]]:
    """Check the header and type rows; return the columns, their types, and the columns ignored.

    With `type_row` None (EcoTaxa's own exports omit it), every column is [t] until infer_types runs.
    """
    if not any(c.strip() for c in header):
        raise InvalidArgument(f"{source}: empty file; expected a header row, a type row and data rows")
    columns = [_canonical(c.strip().lower()) for c in header]
    dupes = sorted({c for c in columns if columns.count(c) > 1 and c})
    if dupes:
        raise InvalidArgument(f"{source}: column {dupes[0]!r} appears more than once in the header")
    if IMAGE_COLUMN not in columns:
        raise InvalidArgument(f"{source}: the header has no img_file_name column")
    type_cells = [c.strip().lower() for c in (type_row or [])]
    bad = [c for c in type_cells if c and c not in TYPES]
    if bad or len(type_cells) > len(columns):
        raise InvalidArgument(f"{source}: line 2 must be the type row ([t] or [f] for each column), "
                              f"found {(bad or type_cells)[0]!r}")
    types, ignored = {}, []
    for i, col in enumerate(columns):
        prefix = col.split("_", 1)[0] if "_" in col else ""
        if prefix not in PREFIXES:
            if col:  # EcoTaxa's own exports add internal columns (objid, classif_id, ...) that it ignores on import
                ignored.append(col)
            continue
        types[col] = TYPES.get(type_cells[i] if i < len(type_cells) else "", "t")
    return columns, types, ignored


def infer_types(columns: list[str], types: dict[str, str], rows: list[tuple[int, list[str]]]) -> None:
    """Without a type row, a column is [f] when every non-empty cell in it is a number."""
    for i, col in enumerate(columns):
        if col not in types or col in TYPED_COLUMNS or col in ANNOTATION_COLUMNS:
            continue
        cells = [r[i] for _, r in rows if i < len(r) and r[i].strip()]
        try:
            numeric = bool(cells) and all(parse_number(c) is not None or c.strip().lower() in NULL_NUMBERS
                                          for c in cells)
        except ValueError:
            numeric = False
        types[col] = "f" if numeric else "t"


def parse_tsv(data: bytes | str, source: str, *, sample_column: str = "sample_id") -> Table:
    """Parse an EcoTaxa TSV; bad rows become Problems with their line numbers, good rows Records."""
    text = decode_text(data) if isinstance(data, bytes) else data
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quotechar='"')
    rows: list[tuple[int, list[str]]] = []
    unreadable: Problem | None = None
    try:
        for cells in reader:
            rows.append((reader.line_num, cells))
    except csv.Error as exc:  # e.g. a quote opened and never closed: the rest of the file is unreadable
        unreadable = Problem(source, reader.line_num, f"unreadable from here on: {exc}")
    if not rows:
        raise InvalidArgument(f"{source}: empty file; expected a header row, a type row and data rows")
    has_types = len(rows) > 1 and _looks_like_type_row(rows[1][1])
    columns, types, ignored = read_header(rows[0][1], rows[1][1] if has_types else None, source)
    data_rows = rows[2:] if has_types else rows[1:]
    if not has_types:
        infer_types(columns, types, data_rows)
    table = Table(source, types, ignored_columns=ignored, had_type_row=has_types)
    for line, cells in data_rows:
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(columns):
            table.problems.append(Problem(source, line, f"{len(cells)} fields but the header has {len(columns)}"))
            continue
        values = {col: cells[i].strip() for i, col in enumerate(columns) if col in types and i < len(cells)}
        try:
            table.records.append(to_record(line, {k: v for k, v in values.items() if v}, types, sample_column))
        except ValueError as exc:
            table.problems.append(Problem(source, line, str(exc)))
    if unreadable:
        table.problems.append(unreadable)
    return table


def _field(values: dict[str, str], col: str, parse, *args):
    if col not in values:
        return None
    try:
        return parse(values[col], *args)
    except ValueError as exc:
        raise ValueError(f"{col}: {exc}") from None


def to_record(line: int, values: dict[str, str], types: dict[str, str], sample_column: str) -> Record:
    """Type one row's non-empty cells; raise ValueError naming the column at fault."""
    image = values.get(IMAGE_COLUMN)
    if not image:
        raise ValueError("img_file_name is empty")
    lat = _field(values, "object_lat", parse_coordinate, 90.0)
    lon = _field(values, "object_lon", parse_coordinate, 180.0)
    dmin = _field(values, "object_depth_min", parse_number)
    dmax = _field(values, "object_depth_max", parse_number)
    if dmin is not None and dmax is not None and dmin > dmax:
        raise ValueError(f"object_depth_min ({dmin:g}) is greater than object_depth_max ({dmax:g})")
    try:
        captured = combine(values.get("object_date"), values.get("object_time"))
        annotated = combine(values.get("object_annotation_date"), values.get("object_annotation_time"))
    except ValueError as exc:
        raise ValueError(f"object_date/time: {exc}") from None
    metadata: dict[str, Any] = {}
    for col, raw in values.items():
        if col in TYPED_COLUMNS or col in ANNOTATION_COLUMNS or (col == "sample_id" and sample_column == "sample_id"):
            continue
        if col == "object_time" and captured is None:
            metadata[col] = raw  # a time without a date has no typed home
            continue
        if types.get(col) == "f":
            number = _field(values, col, parse_number)
            if number is not None:
                metadata[col] = number
        else:
            metadata[col] = raw
    return Record(line=line, image=image, sample=values.get(sample_column), instrument=values.get("acq_instrument"),
                  latitude=lat, longitude=lon, depth_min=dmin, depth_max=dmax, captured_at=captured,
                  metadata=metadata, annotation=_annotation(values, annotated))


def _annotation(values: dict[str, str], at: datetime | None) -> Annotation | None:
    category = values.get("object_annotation_category")
    status = values.get("object_annotation_status", "").lower()
    if status in ("", "noid") and not category:
        return None
    if not category:
        raise ValueError(f"object_annotation_status is {status!r} but object_annotation_category is empty")
    if status in ("", "noid"):
        status = "predicted"  # a category with no status is a machine's guess until someone validates it
    if status not in STATUSES:
        raise ValueError(f"object_annotation_status {values['object_annotation_status']!r} is not one of "
                         f"{', '.join(STATUSES)}")
    hierarchy = tuple(p.strip() for p in values.get("object_annotation_hierarchy", "").split(">") if p.strip())
    return Annotation(category, status, values.get("object_annotation_person_name"), at, hierarchy)


def lineage_for(annotation: Annotation) -> list[str]:
    """Root-to-leaf taxon names: the hierarchy's ancestors, then the category as EcoTaxa displays it.

    EcoTaxa disambiguates equal names by their parent ("other<living"); the hierarchy holds the bare
    name ("living>other"), so its last element is replaced by the category.
    """
    return [*annotation.hierarchy[:-1], annotation.category] if annotation.hierarchy else [annotation.category]


def hierarchy_for(path: list[str]) -> str:
    """The object_annotation_hierarchy cell for a root-to-leaf path of taxon names (inverse of lineage_for)."""
    return ">".join(name.split("<", 1)[0] for name in path)
