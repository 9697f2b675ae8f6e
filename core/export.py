"""Study data out and in: unblinded frames, the summary, exports (the CLI's `export` and the app's download
buttons call the same `export_study`), their re-import, CSV import of ratings collected elsewhere, and the admin's
export-then-purge. Raters' access codes, hashes and salts are never read here, so they cannot leak into a file.
"""

from __future__ import annotations

import csv
import io
import json
import re
import secrets
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlite_utils

from core import db as dbmod
from core import human_eval, raters
from core.errors import InputError, NotFoundError, WorkbenchError
from core.stats import clean, item_aggregates, summary_from_ratings

EXPORT_FORMATS = ("csv", "json", "parquet")
RATING_COLUMNS = (
    "rating_id", "item_id", "position", "model", "neuron", "rater_id", "rater", "choice", "winner_arm", "left_arm",
    "right_arm", "is_gold", "gold_choice", "confidence", "seconds", "comment", "created_at", "updated_at",
    "revisions", "left_explanation_id", "right_explanation_id", "left_format", "left_explainer", "right_format",
    "right_explainer", "left_score", "right_score", "left_text", "right_text",
)  # fmt: skip
ITEM_COLUMNS = (
    "item_id", "position", "model", "neuron", "left_arm", "right_arm", "is_gold", "gold_choice",
    "left_explanation_id", "right_explanation_id", "left_format", "left_explainer", "right_format", "right_explainer",
    "left_score", "right_score", "left_text", "right_text",
)  # fmt: skip
# Text columns, read back as text: through CSV a rater called "007" would otherwise come back as the number 7.
_TEXT_COLUMNS = (
    "rater", "choice", "left_arm", "right_arm", "model", "neuron", "winner_arm", "gold_choice", "comment",
    "left_format", "left_explainer", "right_format", "right_explainer", "left_text", "right_text", "created_at",
    "updated_at",
)  # fmt: skip
_NEVER_EMPTY = ("rater", "choice", "left_arm", "right_arm", "model", "neuron")


@dataclass(frozen=True)
class StudyData:
    """A study's configuration with its ratings and items as frames, and the simulator whose scores they carry."""

    study: human_eval.Study
    ratings: pd.DataFrame
    items: pd.DataFrame
    simulator: str | None


def study_data(db: sqlite_utils.Database, study: str, simulator: str | None = None) -> StudyData:
    """The unblinded ratings (one row per rating) and items of a study, with the explanations' simulation scores
    under one simulator (default: the one that scored the most of them; see db.scores_for_explanations)."""
    record = human_eval.get_study(db, study)
    item_rows = dbmod.list_items(db, record.id)
    ids = [row[f"{side}_explanation_id"] for row in item_rows for side in ("left", "right")]
    simulator, scores = dbmod.scores_for_explanations(db, ids, simulator)
    rating_rows = dbmod.study_ratings(db, record.id)
    for row in (*item_rows, *rating_rows):
        row["neuron"] = f"{row['layer']}:{row['neuron']}"
        row["left_score"] = scores.get(row["left_explanation_id"])
        row["right_score"] = scores.get(row["right_explanation_id"])
    for row in item_rows:
        row["item_id"] = row["id"]
    ratings = pd.DataFrame(rating_rows, columns=list(RATING_COLUMNS))
    # Optional 1-5 answers stay integers next to missing ones (a float column would export "3.0").
    ratings["confidence"] = ratings["confidence"].astype("Int64")
    items = item_aggregates(pd.DataFrame(item_rows, columns=list(ITEM_COLUMNS)), ratings)
    return StudyData(record, ratings, items, simulator)


def summary_of(data: StudyData, min_gold_accuracy: float | None = None) -> dict[str, Any]:
    """The study summary: every statistic of core.stats, plus the study's configuration (seed included) and the
    options used, so that `summary_from_ratings` on the exported ratings reproduces it."""
    statistics = summary_from_ratings(data.ratings, data.study.arms, min_gold_accuracy)
    options = {"simulator": data.simulator, "min_gold_accuracy": min_gold_accuracy}
    return {**statistics, "study": data.study.to_json(), "options": options}


def study_summary(
    db: sqlite_utils.Database, study: str, simulator: str | None = None, min_gold_accuracy: float | None = None
) -> dict[str, Any]:
    return summary_of(study_data(db, study, simulator), min_gold_accuracy)


def file_stem(name: str) -> str:
    """A study name made safe as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return clean(frame.astype(object).to_dict(orient="records"))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(clean(value), ensure_ascii=False, indent=2, allow_nan=False).encode()


def export_study(
    db: sqlite_utils.Database,
    study: str,
    fmt: str,
    simulator: str | None = None,
    min_gold_accuracy: float | None = None,
) -> dict[str, bytes]:
    """The export files of a study as {file name: bytes}. csv and parquet: `<study>_ratings`, `<study>_items` and
    `<study>_summary.json`; json: one `<study>.json` holding summary, items and ratings."""
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    data = study_data(db, study, simulator)
    summary = summary_of(data, min_gold_accuracy)
    stem = file_stem(data.study.name)
    if fmt == "json":
        bundle = {"summary": summary, "items": _records(data.items), "ratings": _records(data.ratings)}
        return {f"{stem}.json": _json_bytes(bundle)}
    files = {f"{stem}_summary.json": _json_bytes(summary)}
    for part, frame in (("ratings", data.ratings), ("items", data.items)):
        if fmt == "csv":
            files[f"{stem}_{part}.csv"] = frame.to_csv(index=False).encode()
        else:
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            files[f"{stem}_{part}.parquet"] = buffer.getvalue()
    return files


def write_export(files: Mapping[str, bytes], out: str | Path, overwrite: bool = True) -> list[Path]:
    """Write export files: into a zip when `out` ends in .zip, to `out` itself when it ends in .json and there is
    one JSON file, else into the folder `out` (created if needed). Returns the paths written.

    Each file appears whole or not at all (written aside, then renamed). With `overwrite=False` an existing target
    is an InputError, so that an earlier export is never replaced."""
    out = Path(out)
    single_json = len(files) == 1 and next(iter(files)).endswith(".json")
    if out.suffix == ".json" and not single_json:
        raise InputError(f"{out}: a .json file holds only a --format json export; give a folder or a .zip")
    if out.suffix == ".zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        targets = {out: buffer.getvalue()}
    elif out.suffix == ".json":
        targets = {out: next(iter(files.values()))}
    else:
        targets = {out / name: data for name, data in files.items()}
    existing = [path for path in targets if path.exists()]
    if existing and not overwrite:
        raise InputError(f"{existing[0]} already exists and would be replaced; choose a new --out")
    try:
        for path, data in targets.items():
            _write_whole(path, data)
    except OSError as exc:
        raise InputError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    return list(targets)


def _write_whole(path: Path, data: bytes) -> None:
    # A full disk or a kill mid-write can leave only the .partial file, never a truncated export under the real name.
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    try:
        partial.write_bytes(data)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


@dataclass(frozen=True)
class LoadedExport:
    """An export read back: ratings and items frames and the summary."""

    ratings: pd.DataFrame
    items: pd.DataFrame
    summary: dict[str, Any]


def _read_files(source: str | Path | Mapping[str, bytes]) -> dict[str, bytes]:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    try:
        if path.is_dir():
            return {child.name: child.read_bytes() for child in sorted(path.iterdir()) if child.is_file()}
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                return {name: archive.read(name) for name in archive.namelist()}
        return {path.name: path.read_bytes()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise InputError(f"cannot read the export {path}: {exc}") from None


def _frame(files: dict[str, bytes], part: str) -> pd.DataFrame:
    for name, data in files.items():
        if name.endswith(f"_{part}.csv"):
            text = dict.fromkeys(_TEXT_COLUMNS, str)
            return pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""], dtype=text)
        if name.endswith(f"_{part}.parquet"):
            return pd.read_parquet(io.BytesIO(data))
    raise InputError(f"the export has no {part} file (*_{part}.csv or *_{part}.parquet)")


def _restore_types(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in _NEVER_EMPTY:
        if column in frame:
            frame[column] = frame[column].astype(str)
    if "is_gold" in frame:
        frame["is_gold"] = frame["is_gold"].astype(int)
    return frame


def load_export(source: str | Path | Mapping[str, bytes]) -> LoadedExport:
    """Read an export written by `export_study`/`write_export`: a folder, a zip, a JSON file, or the files dict."""
    files = _read_files(source)
    try:
        bundles = [name for name in files if name.endswith(".json") and not name.endswith("_summary.json")]
        if bundles and not any(name.endswith("_summary.json") for name in files):
            bundle = json.loads(files[bundles[0]])
            ratings = pd.DataFrame(bundle["ratings"], columns=list(RATING_COLUMNS))
            items = pd.DataFrame(bundle["items"])
            summary = bundle["summary"]
        else:
            summary_name = next((name for name in files if name.endswith("_summary.json")), None)
            if summary_name is None:
                raise InputError("the export has no summary (*_summary.json)")
            summary = json.loads(files[summary_name])
            ratings, items = _frame(files, "ratings"), _frame(files, "items")
    except (json.JSONDecodeError, KeyError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"the export is damaged or not one of ours: {exc}") from None
    return LoadedExport(_restore_types(ratings), _restore_types(items), summary)


def reproduce_summary(export: LoadedExport) -> dict[str, Any]:
    """The statistics recomputed from an export's ratings with the options it was made with."""
    options = export.summary.get("options", {})
    return summary_from_ratings(export.ratings, export.summary["arms"], options.get("min_gold_accuracy"))


def purge_study_ratings(
    db: sqlite_utils.Database, study: str, admin: raters.Rater, export_path: str | Path, fmt: str = "json"
) -> dict[str, Any]:
    """Export a study, check that the export reads back with every rating, then delete the study's ratings, all
    under one write lock so that no rating arrives in between. Only an admin may do it; nothing else deletes ratings.
    """
    row = dbmod.get_rater(db, admin.name)
    if row is None or row["id"] != admin.id or row["role"] != "admin":
        raise InputError("only an admin may purge ratings; sign in with an admin rater")
    record = human_eval.get_study(db, study)
    with dbmod.transaction(db):
        files = export_study(db, study, fmt)
        # Purged ratings live on only in this export: never let it replace an earlier one.
        paths = write_export(files, export_path, overwrite=False)
        expected = len(dbmod.study_ratings(db, record.id))
        written = _read_files(paths[0]) if len(paths) == 1 else {path.name: path.read_bytes() for path in paths}
        if len(load_export(written).ratings) != expected:
            raise WorkbenchError("the export did not read back with every rating; nothing was deleted")
        deleted = dbmod.delete_study_ratings(db, record.id)
    return {"study": record.name, "deleted": deleted, "files": [str(path) for path in paths]}


# --- import of ratings collected elsewhere -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImportReport:
    """Rows written (new and replacing), raters created, and the bad rows as (line number, error)."""

    written: int
    replaced: int
    created_raters: tuple[str, ...]
    errors: tuple[tuple[int, str], ...]

    def to_json(self) -> dict[str, Any]:
        errors = [{"line": line, "error": error} for line, error in self.errors]
        return {**asdict(self), "created_raters": list(self.created_raters), "errors": errors}


IMPORT_COLUMNS = ("item_id", "rater", "choice")


def import_ratings(
    db: sqlite_utils.Database, study: str, path: str | Path, create_raters: bool = False
) -> ImportReport:
    """Import ratings collected elsewhere from a CSV (item_id, rater, choice[, confidence, seconds, comment]).

    Each row is checked and written on its own; bad rows are reported with their line number and not written.
    Unknown raters are an error unless `create_raters`, which adds them with a random code nobody knows.
    """
    record = human_eval.get_study(db, study)
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path} as UTF-8 text: {exc}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [column for column in IMPORT_COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path} lacks the column(s) {', '.join(missing)}; its header must have item_id,rater,choice")
    written = replaced = 0
    created: list[str] = []
    errors: list[tuple[int, str]] = []
    line = 1
    for row in reader:
        start, line = line + 1, reader.line_num
        try:
            item_id = human_eval.parse_number(row.get("item_id"), "item_id", int)
            if item_id is None:
                raise InputError("item_id is empty")
            item = dbmod.get_item(db, item_id)
            if item is None or item["study_id"] != record.id:
                raise InputError(
                    f"item {item_id} is not part of study {record.name!r}; see `python -m core study items`"
                )
            values = human_eval.validate_rating(
                record, row.get("choice") or "", row.get("confidence"), row.get("comment"), row.get("seconds")
            )
            rater_id = _import_rater(db, (row.get("rater") or "").strip(), create_raters, created)
            _, was_replaced = dbmod.write_rating(db, record.id, item_id, rater_id, values, require_assignment=False)
        except WorkbenchError as exc:
            errors.append((start, str(exc)))
            continue
        written += 1
        replaced += was_replaced
    return ImportReport(written, replaced, tuple(created), tuple(errors))


def _import_rater(db: sqlite_utils.Database, name: str, create: bool, created: list[str]) -> int:
    if not name:
        raise InputError("rater is empty")
    row = dbmod.get_rater(db, name)
    if row is not None:
        return row["id"]
    if not create:
        raise NotFoundError(f"no rater named {name!r}; add them (`python -m core rater add`) or pass --create-raters")
    created.append(name)
    return raters.add_rater(db, name, secrets.token_urlsafe(24)).id
