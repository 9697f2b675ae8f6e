"""Study data out and in: unblinded frames, the summary, exports (the CLI's `export` and the app's download
buttons call the same `export_study`), their re-import, CSV import of ratings collected elsewhere, and the admin's
export-then-purge. Raters' access codes, hashes and salts are never read here, so they cannot leak into a file.

Every CSV cell we write goes through `csv_safe`, so that a spreadsheet never runs a rater's comment or an explanation
as a formula; our readers undo exactly that with `csv_raw`. JSON and Parquet keep the raw values.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
import secrets
import threading
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import sqlite_utils
from pydantic import ConfigDict

from core import db as dbmod
from core import human_eval, provenance, quality, raters
from core.datafiles import DataModel, parse
from core.errors import InputError, NotFoundError, WorkbenchError
from core.plan import StoredPlan
from core.stats import StudyStatistics, automated_column, item_aggregates, summary_from_ratings
from core.values import to_jsonable

EXPORT_FORMATS = ("csv", "json", "parquet")
RATING_COLUMNS = (
    "rating_id", "item_id", "position", "model", "neuron", "rater_id", "rater", "choice", "winner_arm", "left_arm",
    "right_arm", "shown_left", "is_gold", "gold_choice", "confidence", "seconds", "comment", "created_at", "updated_at",
    "revisions", "left_explanation_id", "right_explanation_id", "left_format", "left_explainer", "left_source",
    "right_format", "right_explainer", "right_source", "left_score", "right_score", "left_text", "right_text",
)  # fmt: skip
ITEM_COLUMNS = (
    "item_id", "position", "model", "neuron", "left_arm", "right_arm", "is_gold", "gold_choice",
    "left_explanation_id", "right_explanation_id", "left_format", "left_explainer", "left_source", "right_format",
    "right_explainer", "right_source", "left_score", "right_score", "left_text", "right_text",
)  # fmt: skip
# Text columns, read back as text: through CSV a rater called "007" would otherwise come back as the number 7.
# Exports made before `left_source`/`right_source` existed lack those columns and still load.
_TEXT_COLUMNS = (
    "rater", "choice", "left_arm", "right_arm", "model", "neuron", "winner_arm", "gold_choice", "comment",
    "left_format", "left_explainer", "left_source", "right_format", "right_explainer", "right_source", "left_text",
    "right_text", "created_at", "updated_at",
)  # fmt: skip
_NEVER_EMPTY = ("rater", "choice", "left_arm", "right_arm", "model", "neuron")

# A spreadsheet reads a cell starting with one of these as a formula (OWASP, "CSV Injection").
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# A plain number stays as it is: "-0.5" is a value, not a formula. ASCII digits only.
_PLAIN_NUMBER = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _looks_like_formula(text: str) -> bool:
    # Leading apostrophes are looked through, so that a value that really starts with "'=" gets one more and
    # `csv_raw` can always tell our apostrophe from the value's own.
    bare = text.lstrip("'")
    return bare[:1] in _FORMULA_STARTS and not _PLAIN_NUMBER.fullmatch(bare)


def csv_safe(text: str) -> str:
    """A CSV cell that no spreadsheet runs as a formula: a leading `'` before a cell starting with = + - @ a tab or
    a carriage return (after any apostrophes of its own), unless the whole cell is a plain number. `csv_raw` undoes
    it."""
    return f"'{text}" if _looks_like_formula(text) else text


def csv_raw(cell: str) -> str:
    """The value `csv_safe` was given: strips exactly the one apostrophe it added."""
    return cell[1:] if cell.startswith("'") and _looks_like_formula(cell) else cell


def _csv_text(value: Any) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, float):
        return repr(float(value))  # every digit, so that the number reads back exactly
    return str(value)


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """A frame as CSV, every cell (header included) through `csv_safe`. Rows end in CRLF (RFC 4180), so that the
    writer quotes a value holding a lone carriage return instead of letting it end the row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([csv_safe(str(column)) for column in frame.columns])
    for row in frame.astype(object).itertuples(index=False, name=None):
        writer.writerow([csv_safe(_csv_text(value)) for value in row])
    return buffer.getvalue().encode()


def _read_csv(data: bytes) -> pd.DataFrame:
    """A CSV written by `csv_bytes`, with `csv_raw` applied to every cell before any number is parsed."""
    frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    frame = frame.rename(columns=csv_raw).map(lambda cell: cell if pd.isna(cell) else csv_raw(cell))
    for column in frame.columns:
        if column not in _TEXT_COLUMNS:
            with contextlib.suppress(ValueError, TypeError):
                frame[column] = pd.to_numeric(frame[column])
    return frame


@dataclass(frozen=True)
class StudyData:
    """A study's configuration with its ratings and items as frames, and the simulator whose scores they carry."""

    study: human_eval.Study
    ratings: pd.DataFrame
    items: pd.DataFrame
    simulator: str | None
    plan: StoredPlan | None = None
    arm_sources: tuple[human_eval.ArmSource, ...] = ()


def study_data(db: sqlite_utils.Database, study: str, simulator: str | None = None) -> StudyData:
    """The unblinded ratings (one row per rating) and items of a study, with the explanations' simulation scores
    under one simulator as `left_score`/`right_score` (default: the one that scored the most of them; see
    db.scores_for_explanations), and every automated score kind the database holds for them, each in its own pair
    of columns `<kind>:<name>:left|right` (core.stats.automated_column)."""
    record = human_eval.get_study(db, study)
    item_rows = dbmod.list_items(db, record.id)
    ids = [row[f"{side}_explanation_id"] for row in item_rows for side in ("left", "right")]
    simulator, scores = dbmod.scores_for_explanations(db, ids, simulator)
    explanations = dbmod.explanations_by_ids(db, ids)
    sources = {explanation_id: provenance.source_key(row) for explanation_id, row in explanations.items()}
    rating_rows = dbmod.study_ratings(db, record.id)
    for row in (*item_rows, *rating_rows):
        row["neuron"] = f"{row['layer']}:{row['neuron']}"
        for side in ("left", "right"):
            row[f"{side}_score"] = scores.get(row[f"{side}_explanation_id"])
            row[f"{side}_source"] = sources.get(row[f"{side}_explanation_id"])
    for row in item_rows:
        row["item_id"] = row["id"]
    kinds = _add_automated_scores(db, ids, (*item_rows, *rating_rows))
    ratings = pd.DataFrame(rating_rows, columns=[*RATING_COLUMNS, *kinds]).astype({column: float for column in kinds})
    # Optional 1-5 answers stay integers next to missing ones (a float column would export "3.0").
    ratings["confidence"] = ratings["confidence"].astype("Int64")
    items = pd.DataFrame(item_rows, columns=[*ITEM_COLUMNS, *kinds]).astype({column: float for column in kinds})
    arm_sources = tuple(human_eval.arm_sources(record.arms, item_rows, explanations))
    plan = human_eval.get_plan(db, record.name)
    return StudyData(record, ratings, item_aggregates(items, ratings), simulator, plan, arm_sources)


def _add_automated_scores(
    db: sqlite_utils.Database, explanation_ids: list[int], rows: tuple[dict[str, Any], ...]
) -> list[str]:
    """Set every automated score kind's left and right column on each item or rating row; returns the columns."""
    columns = []
    for (kind, name), values in dbmod.automated_scores_for_explanations(db, explanation_ids).items():
        for side in ("left", "right"):
            column = automated_column(kind, name, side)
            columns.append(column)
            for row in rows:
                row[column] = values.get(row[f"{side}_explanation_id"])
    return columns


@dataclass(frozen=True)
class QualityReport:
    """The rater quality part of a summary: each rater's flags, what the plan's rules excluded, arm A's win rate by
    confidence, and the median seconds per rating (core.quality)."""

    raters: tuple[quality.RaterFlags, ...]
    exclusions: quality.Exclusions
    by_confidence: tuple[quality.ConfidenceWinRate, ...]
    median_seconds: float | None


@dataclass(frozen=True)
class Interim:
    """Where a study stands against its plan's target: `display` is final once reached, else the plan's `interim`
    (banner, or hide: the tests' p-values and CIs withheld)."""

    reached: bool
    n_neurons: int
    target: int
    display: str


@dataclass(frozen=True)
class StudyAnalysis:
    """Every statistic of a study as its plan says (`analyse`), with the plan, the rater quality and the interim
    status."""

    statistics: StudyStatistics
    plan: StoredPlan | None
    quality: QualityReport
    interim: Interim | None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.statistics.to_json(),
            "plan": to_jsonable(self.plan),
            "quality": to_jsonable(self.quality),
            "interim": to_jsonable(self.interim),
        }


@dataclass(frozen=True)
class SummaryOptions:
    """The options a summary was made with, so that `reproduce_summary` makes it again."""

    simulator: str | None
    min_gold_accuracy: float | None


@dataclass(frozen=True)
class StudySummary:
    """The study summary (`summary_of`): the analysis, the study's configuration, what each arm resolved to, and the
    options. `to_json()` is what `study summary` prints, exports carry and the Results page reads."""

    analysis: StudyAnalysis
    study: human_eval.Study
    arm_sources: tuple[human_eval.ArmSource, ...]
    options: SummaryOptions

    def to_json(self) -> dict[str, Any]:
        return {
            **self.analysis.to_json(),
            "study": self.study.to_json(),
            "arm_sources": [source.to_json() for source in self.arm_sources],
            "options": to_jsonable(self.options),
        }


def summary_of(data: StudyData, min_gold_accuracy: float | None = None) -> StudySummary:
    """The study summary: every statistic of core.stats after the plan's exclusions, the plan itself, the rater
    quality flags, plus the study's configuration (seed included) and the options used, so that `analyse` on the
    exported ratings reproduces it."""
    analysis = analyse(data.ratings, data.study.arms, data.plan, min_gold_accuracy)
    options = SummaryOptions(data.simulator, min_gold_accuracy)
    return StudySummary(analysis, data.study, data.arm_sources, options)


def analyse(
    ratings: pd.DataFrame, arms: Sequence[str], plan: StoredPlan | None, min_gold_accuracy: float | None = None
) -> StudyAnalysis:
    """Every statistic of a study as its plan (or None) says: the plan's exclusions first, its primary pair as the
    primary comparison, its gold threshold unless `min_gold_accuracy` is given, and, before its target is reached,
    the primary test marked interim (or every p-value and CI of the tests hidden, if the plan says so)."""
    study_plan = plan.plan if plan is not None else None
    kept, exclusions = quality.apply_plan(ratings, study_plan)
    if study_plan is not None:
        arms = [*study_plan.primary_pair, *(arm for arm in arms if arm not in study_plan.primary_pair)]
        if min_gold_accuracy is None:
            min_gold_accuracy = study_plan.min_gold_accuracy
    statistics = summary_from_ratings(kept, arms, min_gold_accuracy)
    interim = None
    if study_plan is not None:
        n_neurons = statistics.primary.n_units
        reached = n_neurons >= study_plan.target_neurons
        interim = Interim(reached, n_neurons, study_plan.target_neurons, "final" if reached else study_plan.interim)
        if interim.display == "hide":
            statistics = statistics.without_tests()
    report = QualityReport(
        raters=tuple(quality.rater_flags(ratings, study_plan)),
        exclusions=exclusions,
        by_confidence=tuple(quality.by_confidence(kept, arms[0], arms[1])),
        median_seconds=quality.median_seconds(kept),
    )
    return StudyAnalysis(statistics, plan, report, interim)


def study_summary(
    db: sqlite_utils.Database, study: str, simulator: str | None = None, min_gold_accuracy: float | None = None
) -> dict[str, Any]:
    """The study summary's JSON (`summary_of(...).to_json()`): what `study summary` prints and the Results page
    reads."""
    return summary_of(study_data(db, study, simulator), min_gold_accuracy).to_json()


def file_stem(name: str) -> str:
    """A study name made safe as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "study"


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return to_jsonable(frame.astype(object).to_dict(orient="records"))


def _json_bytes(value: Any) -> bytes:
    return json.dumps(to_jsonable(value), ensure_ascii=False, indent=2, allow_nan=False).encode()


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
            files[f"{stem}_{part}.csv"] = csv_bytes(frame)
        else:
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            files[f"{stem}_{part}.parquet"] = buffer.getvalue()
    return files


def write_export(files: Mapping[str, bytes], out: str | Path, overwrite: bool = True) -> list[Path]:
    """Write export files: into a zip when `out` ends in .zip, to `out` itself when it ends in .json and there is
    one JSON file, else into the folder `out` (created if needed). Returns the paths written.

    The export appears whole or not at all: every file is written aside first and renamed into place only once all
    of them are written, so that a full disk leaves no partial export. With `overwrite=False` an existing target
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
    # A full disk or a kill mid-write can leave only .partial files, never a truncated export under the real name.
    partials = {path: path.with_name(f".{path.name}.partial") for path in targets}
    try:
        for path, data in targets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            partials[path].write_bytes(data)
        for path, partial in partials.items():
            partial.replace(path)
    except OSError as exc:
        raise InputError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    finally:
        for partial in partials.values():
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
    return list(targets)


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
            return _read_csv(data)
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
            # Our columns first, in order, then any the export carries beside them (per-scorer score columns).
            extra = [column for column in (bundle["ratings"] or [{}])[0] if column not in RATING_COLUMNS]
            ratings = pd.DataFrame(bundle["ratings"], columns=[*RATING_COLUMNS, *extra])
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


class _ExportedOptions(DataModel):
    model_config = ConfigDict(extra="ignore")

    min_gold_accuracy: float | None = None


class ExportedSummary(DataModel):
    """What `reproduce_summary` reads of an export's summary file: the arms, the plan and the options it was made
    with (exports from before plans or options lack them). The rest of the summary is not read."""

    model_config = ConfigDict(extra="ignore")

    arms: list[str]
    plan: dict[str, Any] | None = None
    options: _ExportedOptions = _ExportedOptions()


def reproduce_summary(export: LoadedExport) -> StudyAnalysis:
    """The statistics recomputed from an export's ratings with the options it was made with."""
    where = "the export's summary"
    summary = parse(ExportedSummary, export.summary, where)
    plan = StoredPlan.from_json(summary.plan, f"{where}: plan") if summary.plan is not None else None
    return analyse(export.ratings, summary.arms, plan, summary.options.min_gold_accuracy)


def purge_study_ratings(
    db: sqlite_utils.Database, study: str, admin: raters.Rater, export_path: str | Path, fmt: str = "json"
) -> dict[str, Any]:
    """Export a study, check that the export reads back with every rating, then delete the study's ratings, all
    under one write lock so that no rating arrives in between. Only an admin may do it; nothing else deletes ratings.

    A purge that fails at any step deletes nothing, removes the export files it wrote, and says why."""
    row = dbmod.get_rater(db, admin.name)
    if row is None or row["id"] != admin.id or row["role"] != "admin":
        raise InputError("only an admin may purge ratings; sign in with an admin rater")
    record = human_eval.get_study(db, study)
    paths: list[Path] = []
    try:
        with dbmod.transaction(db):
            files = export_study(db, study, fmt)
            # Purged ratings live on only in this export: never let it replace an earlier one.
            paths = write_export(files, export_path, overwrite=False)
            expected = len(dbmod.study_ratings(db, record.id))
            written = _read_files(paths[0]) if len(paths) == 1 else {path.name: path.read_bytes() for path in paths}
            read_back = len(load_export(written).ratings)
            if read_back != expected:
                raise WorkbenchError(f"the export read back {read_back} of the study's {expected} ratings")
            deleted = dbmod.delete_study_ratings(db, record.id)
    except WorkbenchError as exc:
        _remove(paths)
        removed = f"; the export written to {export_path} was removed" if paths else ""
        error = InputError if isinstance(exc, InputError) else WorkbenchError
        raise error(f"purge of study {record.name!r} stopped, no rating deleted{removed}: {exc}") from None
    except BaseException:
        _remove(paths)
        raise
    return {"study": record.name, "deleted": deleted, "files": [str(path) for path in paths]}


def _remove(paths: list[Path]) -> None:
    # Only files this purge wrote: with overwrite=False none of them existed before.
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


# --- import of ratings collected elsewhere -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImportReport:
    """What an import did. `read`: data rows in the file; `written`: ratings stored, new or replacing a different
    one (`replaced` of them); `unchanged`: rows equal to the stored rating, left as they were; `rejected`: always 0
    after a successful import, because one bad row stops the whole import (ImportRatingsError)."""

    read: int
    written: int
    replaced: int
    unchanged: int
    created_raters: tuple[str, ...]
    rejected: int = 0
    default_layout: bool = False  # no shown_left column: each item's default layout was assumed

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "created_raters": list(self.created_raters)}

    def summary_line(self, study: str) -> str:
        created = f"; new raters: {', '.join(map(repr, self.created_raters))}" if self.created_raters else ""
        layout = "; no shown_left column, so each item's default layout was assumed" if self.default_layout else ""
        return (
            f"study {study!r}: {self.read} rows read, {self.written} written ({self.replaced} replacing a different "
            f"rating), {self.unchanged} unchanged, {self.rejected} rejected{created}{layout}"
        )


class ImportRatingsError(InputError):
    """An import that wrote nothing: every bad row as (line number, error), for people and for tests."""

    def __init__(self, path: str | Path, read: int, errors: list[tuple[int, str]]) -> None:
        shown = "; ".join(f"line {line}: {error}" for line, error in errors[:_ERRORS_SHOWN])
        more = f"; and {len(errors) - _ERRORS_SHOWN} more" if len(errors) > _ERRORS_SHOWN else ""
        super().__init__(
            f"{path}: nothing imported, {len(errors)} bad row(s) of {read} read (fix them and import the file again): "
            f"{shown}{more}"
        )
        self.errors = tuple(errors)


IMPORT_COLUMNS = ("item_id", "rater", "choice")
# The longest field an imported CSV may hold (Python's csv.field_size_limit, set only while we parse); a comment
# is far shorter (human_eval.MAX_COMMENT_CHARS), so a longer field means a broken quote or the wrong file.
MAX_FIELD_CHARS = 1_000_000
_ERRORS_SHOWN = 10
# Digits 0-9 only: int() and float() also take other scripts' digits ("١"), "nan", "inf", "1_0" and exponents.
_ITEM_ID = re.compile(r"[0-9]{1,18}", re.ASCII)
_NUMBERS = {
    "confidence": re.compile(r"-?[0-9]{1,6}(?:\.0*)?", re.ASCII),  # whole, in any width a spreadsheet writes it
    "seconds": re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?", re.ASCII),  # as we export it
}
_FIELD_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    # csv.field_size_limit is one setting for the whole process: hold it only while parsing, one parse at a time.
    with _FIELD_LIMIT_LOCK:
        previous = csv.field_size_limit(limit)
        try:
            yield
        finally:
            csv.field_size_limit(previous)


def read_rating_rows(text: str) -> tuple[list[str], list[tuple[int, dict[str, str]]], tuple[int, str] | None]:
    """Parse an import CSV strictly: (header, [(line where the row starts, row)], the syntax error that stopped
    the parse as (line, message), or None). Every cell goes through `csv_raw`, so that our own CSV exports import
    with the values they hold."""
    rows: list[tuple[int, dict[str, str]]] = []
    with _csv_field_limit(MAX_FIELD_CHARS):
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header: list[str] = []
        line = 0
        while True:
            start = line + 1
            try:
                cells = next(reader, None)
            except csv.Error as exc:
                return header, rows, (start, _csv_error(exc))
            line = reader.line_num
            if cells is None:
                return header, rows, None
            if not cells:
                continue
            cells = [csv_raw(cell) for cell in cells]
            if not header:
                header = [cell.strip() for cell in cells]
            else:
                rows.append((start, dict(zip(header, cells, strict=False))))


def _csv_error(exc: csv.Error) -> str:
    message = str(exc)
    if "field larger than field limit" in message:
        return f"a field is longer than {MAX_FIELD_CHARS:,} characters (the limit); is a quote left open?"
    if "unexpected end of data" in message:
        return 'a quoted field is never closed (a " without its closing ")'
    return f"the CSV is malformed here: {message}"


def import_ratings(
    db: sqlite_utils.Database, study: str, path: str | Path, create_raters: bool = False
) -> ImportReport:
    """Import ratings collected elsewhere from a CSV (item_id, rater, choice[, shown_left, confidence, seconds,
    comment]), e.g. a ratings CSV we exported. `shown_left` is the arm the rater saw on the left; without that
    column each item's default layout (`study items`) is assumed, and the report says so.

    All or nothing: every row is checked first, and any bad row (reported by line number in ImportRatingsError)
    means nothing is written. The rows are then written in one transaction. A row equal to the rating already
    stored is left alone, so importing the same file twice changes nothing. Unknown raters are an error unless
    `create_raters`, which adds them (just before the ratings) with a random code nobody knows.
    """
    record = human_eval.get_study(db, study)
    try:
        # Bytes, then decode: reading as text would turn a comment's lone carriage return into a line feed.
        text = Path(path).read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {path} as UTF-8 text: {exc}") from None
    header, rows, syntax_error = read_rating_rows(text)
    missing = [column for column in IMPORT_COLUMNS if column not in header]
    if missing and syntax_error is None:
        raise InputError(f"{path} lacks the column(s) {', '.join(missing)}; its header must have item_id,rater,choice")
    has_layout = "shown_left" in header
    errors: list[tuple[int, str]] = []
    checked: list[tuple[int, str, dict[str, Any]]] = []
    seen: dict[tuple[int, str], int] = {}
    to_create: list[str] = []
    for line, row in rows:
        try:
            item_id, name, values = _check_row(db, record, row, create_raters, to_create)
        except WorkbenchError as exc:
            errors.append((line, str(exc).replace("\n", " ")))
            continue
        if (item_id, name) in seen:
            errors.append((line, f"item {item_id} by {name!r} is already on line {seen[item_id, name]}; keep one row"))
            continue
        seen[item_id, name] = line
        checked.append((item_id, name, values))
    if syntax_error is not None:
        errors.append(syntax_error)
    if errors:
        raise ImportRatingsError(path, len(rows), errors)
    created = [raters.add_rater(db, name, secrets.token_urlsafe(24)).name for name in to_create]
    ids = {name: _rater_id(db, name) for name in {name for _, name, _ in checked}}
    counts = dbmod.write_ratings(db, record.id, [(item_id, ids[name], values) for item_id, name, values in checked])
    written = counts["new"] + counts["replaced"]
    return ImportReport(
        len(rows), written, counts["replaced"], counts["unchanged"], tuple(created), default_layout=not has_layout
    )


def _rater_id(db: sqlite_utils.Database, name: str) -> int:
    row = dbmod.get_rater(db, name)
    if row is None:  # checked by _check_row or created just before
        raise NotFoundError(f"no rater named {name!r}")
    return row["id"]


def _check_row(
    db: sqlite_utils.Database, record: human_eval.Study, row: dict[str, str], create: bool, to_create: list[str]
) -> tuple[int, str, dict[str, Any]]:
    """(item id, rater name, rating values) of one import row, checked without writing anything."""
    raw_id = (row.get("item_id") or "").strip()
    if not raw_id:
        raise InputError("item_id is empty")
    if not _ITEM_ID.fullmatch(raw_id):
        raise InputError(f"item_id {raw_id!r} is not a whole number written with the digits 0-9")
    item_id = int(raw_id)
    item = dbmod.get_item(db, item_id)
    if item is None or item["study_id"] != record.id:
        raise InputError(f"item {item_id} is not part of study {record.name!r}; see `python -m core study items`")
    numbers = {}
    for column in ("confidence", "seconds"):
        value = (row.get(column) or "").strip()
        if value and (len(value) > 40 or not _NUMBERS[column].fullmatch(value)):
            kind = "a whole number" if column == "confidence" else "a decimal number"
            raise InputError(f"{column} {value!r} is not {kind} written with the digits 0-9")
        numbers[column] = value or None
    values = human_eval.validate_rating(
        record, row.get("choice") or "", numbers["confidence"], row.get("comment"), numbers["seconds"]
    )
    shown_left = (row.get("shown_left") or "").strip()
    if shown_left and shown_left not in (item["left_arm"], item["right_arm"]):
        raise InputError(
            f"shown_left {shown_left!r} is neither arm of item {item_id} ({item['left_arm']}, {item['right_arm']})"
        )
    values["shown_left"] = shown_left or None
    name = (row.get("rater") or "").strip()
    if not name or len(name) > raters.MAX_NAME_CHARS:
        raise InputError(f"rater {name!r} is not a name of 1 to {raters.MAX_NAME_CHARS} characters")
    if dbmod.get_rater(db, name) is None:
        if not create:
            raise NotFoundError(
                f"no rater named {name!r}; add them (`python -m core rater add`) or pass --create-raters"
            )
        if name not in to_create:
            to_create.append(name)
    return item_id, name, values
