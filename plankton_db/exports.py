"""Writing images and their current labels out: an EcoTaxa zip (TSV + type row + images), plain CSV, Darwin Core."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from plankton_db.ecotaxa import ANNOTATION_COLUMNS, STATUSES, hierarchy_for
from plankton_db.ecotaxa_import import SOURCE_PREFIX
from plankton_db.errors import InvalidArgument
from plankton_db.store import ContentStore
from plankton_db.taxonomy import subtree_ids

TSV_NAME = "ecotaxa_export.tsv"
# Formats EcoTaxa's import accepts (its docs: jpg, png, gif); others are exported as they are, with a warning.
ECOTAXA_FORMATS = frozenset({"JPEG", "PNG", "GIF"})
CORE_COLUMNS = ("img_file_name", "object_id", "object_lat", "object_lon", "object_date", "object_time",
                "object_depth_min", "object_depth_max", "object_annotation_category", "object_annotation_hierarchy",
                "object_annotation_status", "object_annotation_person_name", "object_annotation_date",
                "object_annotation_time", "sample_id", "acq_instrument")
NUMERIC_CORE = frozenset({"object_lat", "object_lon", "object_depth_min", "object_depth_max"})
PREFIX_ORDER = ("img", "object", "sample", "acq", "process")
DWC_COLUMNS = ("occurrenceID", "catalogNumber", "basisOfRecord", "eventID", "eventDate", "decimalLatitude",
               "decimalLongitude", "minimumDepthInMeters", "maximumDepthInMeters", "scientificName",
               "scientificNameID", "taxonRank", "higherClassification", "identifiedBy", "dateIdentified",
               "identificationVerificationStatus", "identificationRemarks", "occurrenceStatus", "organismQuantity",
               "organismQuantityType", "associatedMedia")
# identificationVerificationStatus has no controlled vocabulary in Darwin Core; EcoTaxa's own words are the
# clearest for plankton data users (as in akvaplan-niva/ecotaxa-darwin-core).
DWC_REMARKS = {"validated": "validated by a taxonomist", "predicted": "predicted by a classifier, not verified",
               "dubious": "flagged as dubious by a taxonomist"}


@dataclass
class ExportSummary:
    """What an export wrote."""

    path: Path
    images: int = 0
    warnings: list[str] = field(default_factory=list)


def check_status(status: str | None) -> None:
    """InvalidArgument unless status is None or one of predicted, validated, dubious."""
    if status is not None and status not in STATUSES:
        raise InvalidArgument(f"unknown status {status!r}; choose one of: {', '.join(STATUSES)}")


def selected(session: Session, *, status: str | None = None, taxon: str | None = None) -> Iterator[dict[str, Any]]:
    """Rows of images_with_labels (plus the taxon's path), filtered by label status and taxon subtree."""
    check_status(status)
    where, params = [], {}
    if status is not None:
        where.append("v.status = :status")
        params["status"] = status
    if taxon is not None:
        where.append("v.taxon_id = ANY(:taxa)")
        params["taxa"] = subtree_ids(session, taxon)
    sql = ("SELECT v.*, p.path AS taxon_path FROM images_with_labels v LEFT JOIN taxon_paths p ON p.id = v.taxon_id"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY v.image_id")
    for row in session.execute(sa.text(sql), params).mappings():
        yield dict(row)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(float(value))  # the shortest text that reads back as the same float
    return str(value)


def ecotaxa_row(row: dict[str, Any], file_name: str) -> dict[str, Any]:
    """One TSV row: typed columns, annotation columns from the current label, then the metadata."""
    meta = dict(row["metadata"] or {})
    label_from_import = (row["label_source"] or "").startswith(SOURCE_PREFIX)
    out: dict[str, Any] = {}
    for key, value in meta.items():
        # Extra annotation fields (person email, EcoTaxa category id) describe the imported label only.
        if key.startswith("object_annotation_") and not label_from_import:
            continue
        out[key] = value
    captured: datetime | None = row["captured_at"]
    out.update({
        "img_file_name": file_name,
        "object_id": meta.get("object_id") or f"plankton_{row['image_id']}",
        "object_lat": row["latitude"], "object_lon": row["longitude"],
        "object_depth_min": row["depth_min"], "object_depth_max": row["depth_max"],
        "sample_id": meta.get("sample_id") or row["sample"], "acq_instrument": row["instrument"],
    })
    if captured is not None:
        utc = captured.astimezone(timezone.utc)
        out["object_date"], out["object_time"] = utc.strftime("%Y%m%d"), utc.strftime("%H%M%S")
    if row["taxon"] is not None:
        at = row["annotated_at"].astimezone(timezone.utc)
        out.update({
            "object_annotation_category": row["taxon"],
            "object_annotation_hierarchy": hierarchy_for(row["taxon_path"].split(">")),
            "object_annotation_status": row["status"], "object_annotation_person_name": row["annotator"],
            "object_annotation_date": at.strftime("%Y%m%d"), "object_annotation_time": at.strftime("%H%M%S"),
        })
    return {k: v for k, v in out.items() if v is not None and v != ""}


def _columns(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, str]]:
    keys = {k for r in rows for k in r}
    extra = sorted(keys - set(CORE_COLUMNS), key=lambda k: (PREFIX_ORDER.index(k.split("_", 1)[0])
                                                            if k.split("_", 1)[0] in PREFIX_ORDER else 9, k))
    columns = [c for c in CORE_COLUMNS if c in keys or c in ("img_file_name", "object_id")] + extra
    types = {}
    for c in columns:
        numeric = c in NUMERIC_CORE or (c not in CORE_COLUMNS and c not in ANNOTATION_COLUMNS and all(
            isinstance(r[c], (int, float)) and not isinstance(r[c], bool) for r in rows if c in r))
        types[c] = "[f]" if numeric else "[t]"
    return columns, types


def _unique_name(name: str, image_id: int, used: set[str]) -> str:
    path = PurePosixPath(name.replace("\\", "/").lstrip("/"))
    clean = "/".join(p for p in path.parts if p not in ("..", ".")) or f"{image_id}"
    if clean in used:
        p = PurePosixPath(clean)
        clean = str(p.with_name(f"{p.stem}_{image_id}{p.suffix}"))
    used.add(clean)
    return clean


def export_ecotaxa(session: Session, store: ContentStore, out: Path, *, status: str | None = None,
                   taxon: str | None = None) -> ExportSummary:
    """Write a zip EcoTaxa can import: ecotaxa_export.tsv (header, type row, one row per image) and the images."""
    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise InvalidArgument(f"{out}: the EcoTaxa export is a .zip file")
    rows, files, used = [], [], set()
    for row in selected(session, status=status, taxon=taxon):
        name = _unique_name(row["original_name"], row["image_id"], used)
        rows.append(ecotaxa_row(row, name))
        files.append((name, row["sha256"], row["format"]))
    summary = ExportSummary(out, images=len(rows))
    odd = sorted({fmt for _, _, fmt in files if fmt not in ECOTAXA_FORMATS})
    if odd:
        summary.warnings.append(f"{sum(f in odd for _, _, f in files)} images are {', '.join(odd)}, which EcoTaxa "
                                "does not import; they are exported unchanged")
    columns, types = _columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    writer.writerow([types[c] for c in columns])
    for r in rows:
        writer.writerow([_cell(r.get(c)) for c in columns])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(TSV_NAME, buf.getvalue())
        for name, sha, _ in files:
            # Images are already compressed; deflating them again costs time for nothing.
            z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), store.read(sha),
                       compress_type=zipfile.ZIP_STORED)
    tmp.replace(out)
    return summary


def _write_csv(out: Path, header: list[str], rows: list[list[Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    tmp.replace(out)


def export_csv(session: Session, out: Path, *, status: str | None = None, taxon: str | None = None) -> ExportSummary:
    """One CSV row per image: typed columns, current label and lineage, then each metadata key as a column."""
    fixed = ["image_id", "sha256", "original_name", "sample", "instrument", "latitude", "longitude", "depth_min",
             "depth_max", "captured_at", "taxon", "taxon_path", "aphia_id", "status", "annotator", "annotated_at"]
    rows = list(selected(session, status=status, taxon=taxon))
    keys = sorted({k for r in rows for k in (r["metadata"] or {})})
    body = [[_iso(r[c]) if isinstance(r[c], datetime) else r[c] for c in fixed]
            + [_meta_cell((r["metadata"] or {}).get(k)) for k in keys] for r in rows]
    _write_csv(Path(out), fixed + keys, body)
    return ExportSummary(Path(out), images=len(rows))


def _meta_cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (dict, list)) else value


def _iso(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if value else ""


def export_dwc(session: Session, out: Path, *, status: str | None = None, taxon: str | None = None,
               dataset: str = "plankton-db") -> ExportSummary:
    """A Darwin Core occurrence table (CSV): one occurrence per labelled image, with its verification status."""
    body = []
    rows = [r for r in selected(session, status=status, taxon=taxon) if r["taxon"] is not None]
    for r in rows:
        path = r["taxon_path"].split(">")
        body.append([
            f"urn:{dataset}:image:{r['sha256']}", (r["metadata"] or {}).get("object_id") or r["image_id"],
            "MachineObservation", r["sample"] or "", _iso(r["captured_at"]), r["latitude"], r["longitude"],
            r["depth_min"], r["depth_max"], r["taxon"].split("<", 1)[0],
            f"urn:lsid:marinespecies.org:taxname:{r['aphia_id']}" if r["aphia_id"] else "", r["taxon_rank"] or "",
            " | ".join(p.split("<", 1)[0] for p in path[:-1]), r["annotator"], _iso(r["annotated_at"]),
            r["status"], DWC_REMARKS[r["status"]], "present", 1, "individuals", r["original_name"],
        ])
    _write_csv(Path(out), list(DWC_COLUMNS), body)
    return ExportSummary(Path(out), images=len(rows))
