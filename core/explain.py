"""Explain neurons: a neuron's train records → a prompt format → an LLM backend → a stored explanation (METHOD.md §2).

Every (neuron, format, sample) is one job with a deterministic `job_key`. A job's result is stored the moment it
arrives, so a crash loses nothing; a rerun of the same command skips jobs already ok and retries failed ones.
Token costs (docs/METHOD.md §4) are stored per explanation, input and output separately, and summarised by `cost_table`.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from core import db as dbmod
from core import prompts
from core import tokens as tokens_mod
from core.errors import InputError, LLMError, WorkbenchError
from core.llm import (
    ApiOptions,
    Backend,
    Completion,
    LocalModelOptions,
    Sampling,
    backend_options,
    get_backend,
    parse_backend_spec,
)
from core.prompts import DEFAULT_CUTOFF, Cutoff, FewShotExample
from core.records import NeuronId, NeuronRecord
from core.values import Progress

log = logging.getLogger(__name__)

# Jobs handed to the backend per call. Within a call, answers are stored as they arrive while the others are in
# flight; at a call's end the backend waits for its slowest request, so calls hold many times the usual
# concurrency: with 32 jobs per call at concurrency 32, storing and that wait capped explain at ~90 requests/s
# against a 200 ms server (bench/llm.py).
DEFAULT_BATCH_SIZE = 512
PROMPT_SPLIT = "train"  # docs/METHOD.md §1: the explanation prompt shows the 5 train records


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain: sampling, samples per neuron and format, the natural formats' cutoff (None: the paper's
    quantile 0.99; puzzles, which have no corpus statistics, use relative 0.5), few-shot examples (None: the bundled
    ones, "none", a JSON file, or examples), the rendering variant, whether cached answers may be reused, and the
    explainer's options: `api` for `openai:` explainers, `local` for `hf:` ones."""

    sampling: Sampling = field(default_factory=Sampling)
    samples: int = 1
    cutoff: Cutoff | None = None
    few_shot: str | Path | tuple[FewShotExample, ...] | None = None
    format_options: prompts.FormatOptions = prompts.PAPER_OPTIONS
    use_cache: bool = True
    api: ApiOptions = field(default_factory=ApiOptions)
    local: LocalModelOptions = field(default_factory=LocalModelOptions)

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise InputError(f"samples {self.samples} must be at least 1")

    def backend(self, explainer: str, db: Any) -> Backend:
        """The explainer named by `explainer` (`openai:MODEL`, `hf:PATH`), with the part of these options it takes."""
        return get_backend(explainer, backend_options(explainer, self.api, self.local), db=db, use_cache=self.use_cache)


@dataclass(frozen=True)
class ExplainJob:
    """One explanation to produce: a neuron under a format, sample number `sample`."""

    neuron: NeuronId
    format: str
    sample: int
    job_key: str
    params: dict[str, Any]
    messages: list[dict[str, str]] | None
    threshold: float | None
    error: str | None = None  # set when the prompt itself could not be built

    def built_messages(self) -> list[dict[str, str]]:
        """The messages to send: only a job without `error` is sent, and such a job has its prompt built."""
        if self.messages is None:
            raise InputError(self.error or f"the {self.format} prompt for neuron {self.neuron} was not built")
        return self.messages


@dataclass(frozen=True)
class ExplainReport:
    """What one `explain_neurons` call did. `job_keys` name every job of the call, in order."""

    total: int
    ok: int
    failed: int
    skipped: int
    job_keys: tuple[str, ...]
    errors: tuple[str, ...]

    def rows(self, db: Any) -> list[dict[str, Any]]:
        """The stored explanations of this call's jobs (ok and failed, including ones skipped as already done)."""
        return dbmod.explanations_by_job(db, self.job_keys)

    def to_json(self) -> dict[str, Any]:
        """The counts and the first 20 errors; the job keys stay out."""
        return {
            "total": self.total,
            "ok": self.ok,
            "failed": self.failed,
            "skipped": self.skipped,
            "errors": list(self.errors[:20]),
        }


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _few_shot(few_shot: str | Path | Sequence[FewShotExample] | None) -> tuple[tuple[FewShotExample, ...], str]:
    """The examples and a label for the params: `bundled`, `none`, the file path, or `custom` (given in code)."""
    if few_shot is None or isinstance(few_shot, str | Path):
        label = "bundled" if few_shot is None else str(few_shot)
        if isinstance(few_shot, str) and few_shot.strip().lower() == "none":
            label = "none"
        return prompts.load_few_shot(few_shot), label
    return tuple(few_shot), "custom"


def _few_shot_json(examples: Sequence[FewShotExample]) -> list[dict[str, Any]]:
    return [
        {
            "records": [r.to_json() for r in ex.records],
            "explanation": ex.explanation,
            "cutoff": ex.cutoff.to_json() if ex.cutoff else None,
        }
        for ex in examples
    ]


def job_key(model: str, neuron: NeuronId, format_name: str, explainer: str, params: dict[str, Any], sample: int) -> str:
    """The identity of an explanation job; equal keys mean a rerun may reuse the stored result."""
    return _digest(
        {
            "model": model,
            "neuron": str(neuron),
            "format": format_name,
            "explainer": explainer,
            "params": params,
            "sample": sample,
        }
    )


def sample_sampling(sampling: Sampling, sample: int) -> Sampling:
    """Sample k's sampling: a given seed becomes seed + k, so samples differ yet each one is reproducible."""
    return sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + sample)


def plan_jobs(
    model: str,
    neuron_records: Sequence[NeuronRecord],
    formats: Sequence[str],
    explainer: str,
    *,
    sampling: Sampling = Sampling(),
    samples: int = 1,
    cutoff: Cutoff = DEFAULT_CUTOFF,
    few_shot: Sequence[FewShotExample] = (),
    few_shot_label: str = "bundled",
    format_options: prompts.FormatOptions = prompts.PAPER_OPTIONS,
) -> list[ExplainJob]:
    """All jobs, neuron by neuron, format by format, sample by sample, with prompts built (pure). A rendering
    variant (`format_options`) other than the paper's is part of the job's identity."""
    few_shot_id = {"source": few_shot_label, "sha256": _digest(_few_shot_json(few_shot))[:16]}
    jobs = []
    for record in neuron_records:
        records = record.split(PROMPT_SPLIT)
        for format_name in formats:
            fmt = prompts.get_format(format_name)
            # A format that ignores the cutoff keeps its key (and its stored result) when the cutoff changes.
            params = {
                "sampling": sampling.to_json(),
                "few_shot": few_shot_id,
                "cutoff": cutoff.to_json() if fmt.uses_cutoff else None,
                "records": PROMPT_SPLIT,
            }
            if format_options != prompts.PAPER_OPTIONS:  # the paper's rendering keeps the keys it always had
                params["format_options"] = dataclasses.asdict(format_options)
            messages, threshold, error = None, None, None
            try:
                messages = prompts.build_messages(
                    format_name, records, few_shot=few_shot, cutoff=cutoff, stats=record.stats, options=format_options
                )
                threshold = prompts.resolve_threshold(format_name, records, cutoff, record.stats)
            except InputError as exc:
                error = f"cannot build the {format_name} prompt for neuron {record.neuron}: {exc}"
            for sample in range(samples):
                key = job_key(model, record.neuron, format_name, explainer, params, sample)
                jobs.append(ExplainJob(record.neuron, format_name, sample, key, params, messages, threshold, error))
    return jobs


def explain_neurons(
    db: Any,
    model: str,
    neurons: Sequence[NeuronId],
    formats: Sequence[str],
    explainer: str | Backend,
    options: ExplainOptions | None = None,
    *,
    progress: Progress | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> ExplainReport:
    """Explain each neuron × format × sample with `explainer` (`openai:MODEL`, `hf:PATH` or a Backend) and store it.

    Jobs already ok are skipped; a failed call is stored as failed and the others continue. `progress(done, total)`
    follows every stored job. `options.use_cache` and the backend options apply when `explainer` is a spec; a
    Backend brings its own settings. `batch_size` jobs at a time go to the backend.
    """
    options = options or ExplainOptions()
    if batch_size < 1:
        raise InputError(f"batch size {batch_size} must be at least 1")
    formats = list(dict.fromkeys(formats))
    if not formats:
        raise InputError(f"no prompt formats given; choose from {', '.join(prompts.FORMATS)}")
    for format_name in formats:
        prompts.get_format(format_name)
    neurons = list(dict.fromkeys(neurons))
    if not neurons:
        raise InputError("no neurons given: write them as layer:index, e.g. 3:17")
    if not isinstance(explainer, Backend):
        parse_backend_spec(explainer)  # a typo in the explainer fails before anything is loaded
    examples, few_shot_label = _few_shot(options.few_shot)
    neuron_records = [dbmod.get_neuron(db, model, neuron) for neuron in neurons]  # a missing neuron fails here
    backend = explainer if isinstance(explainer, Backend) else options.backend(explainer, db)
    sampling = options.sampling

    jobs = plan_jobs(
        model,
        neuron_records,
        formats,
        backend.name,
        sampling=sampling,
        samples=options.samples,
        cutoff=options.cutoff or DEFAULT_CUTOFF,
        few_shot=examples,
        few_shot_label=few_shot_label,
        format_options=options.format_options,
    )
    statuses = dbmod.explanation_statuses(db, [job.job_key for job in jobs])
    todo = [job for job in jobs if statuses.get(job.job_key) != "ok"]
    skipped = len(jobs) - len(todo)
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []

    def store(job: ExplainJob, result: Completion | LLMError | str) -> None:
        row = _explanation_row(model, backend, job, sampling, result)
        dbmod.insert_explanation(db, **row)
        if row["status"] == "failed" and isinstance(result, Completion):
            # An unusable answer must not be served from the cache again when the job is retried.
            backend.forget(job.built_messages(), sample_sampling(sampling, job.sample), job.sample)
        counts[row["status"]] += 1
        if row["status"] == "failed" and row["error"] not in errors:
            errors.append(row["error"])
        if progress is not None:
            progress(skipped + counts["ok"] + counts["failed"], len(jobs))

    def store_batch_result(batch: Sequence[ExplainJob], index: int, result: Completion | LLMError) -> None:
        store(batch[index], result)

    if progress is not None:
        progress(skipped, len(jobs))
    for job in todo:
        if job.error is not None:
            store(job, job.error)
    runnable = [job for job in todo if job.error is None]
    for sample in sorted({job.sample for job in runnable}):
        sample_jobs = [job for job in runnable if job.sample == sample]
        for start in range(0, len(sample_jobs), batch_size):
            batch = sample_jobs[start : start + batch_size]
            backend.complete(
                [job.built_messages() for job in batch],
                sample_sampling(sampling, sample),
                samples=[sample] * len(batch),
                on_result=functools.partial(store_batch_result, batch),
            )
    return ExplainReport(
        total=len(jobs),
        ok=counts["ok"],
        failed=counts["failed"],
        skipped=skipped,
        job_keys=tuple(job.job_key for job in jobs),
        errors=tuple(errors),
    )


def _count_locally(what: str, count: Callable[[], int]) -> int | None:
    try:
        return count()
    except WorkbenchError as exc:  # a tokenizer that cannot load must not cost the explanation itself
        log.warning("cannot count %s tokens: %s", what, exc)
        return None


def _explanation_row(
    model: str, backend: Backend, job: ExplainJob, sampling: Sampling, result: Completion | LLMError | str
) -> dict[str, Any]:
    """The `explanations` row for one finished job."""
    from core import tokens

    cutoff = job.params["cutoff"]
    row: dict[str, Any] = {
        "model": model,
        "layer": job.neuron.layer,
        "neuron": job.neuron.index,
        "format": job.format,
        "explainer": backend.name,
        "source": "generated",
        "prompt": job.messages,
        "cutoff_mode": cutoff["mode"] if cutoff else None,
        "cutoff": cutoff["value"] if cutoff else None,
        "sample": job.sample,
        "job_key": job.job_key,
        "tokenizer": backend.tokenizer,
    }
    params = {**job.params, "seed": sample_sampling(sampling, job.sample).seed, "threshold": job.threshold}
    if not isinstance(result, Completion):
        return {**row, "params": params, "status": "failed", "error": str(result)}
    input_tokens, output_tokens = result.input_tokens, result.output_tokens
    if input_tokens is not None and output_tokens is not None:
        row["tokenizer"] = backend.usage_tokenizer(result)
    if input_tokens is None:
        input_tokens = _count_locally(
            "input", lambda: tokens.count_chat_tokens(job.built_messages(), backend.tokenizer)
        )
    if output_tokens is None:
        output_tokens = _count_locally("output", lambda: tokens.count_text_tokens(result.text, backend.tokenizer))
    params.update(cached=result.cached, finish_reason=result.finish_reason, answered_by=result.model)
    row.update(
        params=params,
        completion=result.text,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency_s=result.latency_s,
    )
    try:
        row.update(explanation=prompts.clean_explanation(result.text), status="ok")
    except LLMError as exc:
        row.update(status="failed", error=f"{backend.name}: {exc}")
    return row


# ---------------------------------------------------------------------------------------------------------------
# Token cost (docs/METHOD.md §4, §5)
# ---------------------------------------------------------------------------------------------------------------

INPUT_COLUMNS = tuple(f"mean_input_tokens_{unit}" for unit in tokens_mod.TOKEN_UNITS)
COST_COLUMNS = (
    "n",
    *INPUT_COLUMNS,
    "mean_output_tokens",
    "mean_total_tokens",
    "original_over_format_input",
    "original_over_format_total",
)


def with_cl100k_counts(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Copies of explanation rows with `input_tokens_cl100k`: their stored prompt counted offline with cl100k_base
    (as `prompt` and the Explain page's preview count), beside whatever the API reported."""
    counted = []
    for row in rows:
        prompt = row.get("prompt")
        if isinstance(prompt, str):
            prompt = json.loads(prompt)
        extra = {}
        if isinstance(prompt, list) and prompt and tokens_mod.token_unit(row.get("tokenizer")) != "cl100k":
            extra["input_tokens_cl100k"] = _count_locally(
                "input", functools.partial(tokens_mod.count_chat_tokens, prompt, tokens_mod.CL100K)
            )
        counted.append({**row, **extra})
    return counted


def cost_table(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Per format (ok explanations only): n, mean input tokens per unit (core.tokens.TOKEN_UNITS: `cl100k` counted
    offline, `server` reported by the API…), mean output and total tokens, and Original ÷ format ratios.

    A row's `input_tokens` go under the unit of its `tokenizer`; an `input_tokens_cl100k` it carries (see
    `with_cl100k_counts`) is used as well, so both show when both exist. Units are never averaged together, and
    input columns no row has are left out. Totals and ratios use cl100k when every row has it, else the first
    unit with counts (docs/METHOD.md §5); a ratio of 2 means the format's prompts cost half of Original's; NaN
    without Original rows.
    """
    records = []
    for row in rows:
        if row.get("status", "ok") != "ok":
            continue
        record = {"format": row["format"], "output_tokens": row.get("output_tokens")}
        if row.get("input_tokens") is not None:
            record[tokens_mod.input_tokens_column(row.get("tokenizer"))] = row["input_tokens"]
        if row.get("input_tokens_cl100k") is not None:
            record["input_tokens_cl100k"] = row["input_tokens_cl100k"]
        records.append(record)
    units = [f"input_tokens_{unit}" for unit in tokens_mod.TOKEN_UNITS]
    frame = pd.DataFrame(records, columns=["format", *units, "output_tokens"])
    frame[[*units, "output_tokens"]] = frame[[*units, "output_tokens"]].astype(float)
    present = [column for column in units if frame[column].notna().any()]
    complete = [column for column in present if frame[column].notna().all()]
    basis = (complete or present or ["input_tokens_unknown"])[0]
    frame["total_tokens"] = frame[basis] + frame["output_tokens"]
    grouped = frame.groupby("format")
    table = pd.DataFrame({"n": grouped.size()})
    for column in present:
        table[f"mean_{column}"] = grouped[column].mean()
    table["mean_output_tokens"] = grouped["output_tokens"].mean()
    table["mean_total_tokens"] = grouped["total_tokens"].mean()
    order = [f for f in prompts.FORMATS if f in table.index] + sorted(set(table.index) - set(prompts.FORMATS))
    table = table.reindex(order)
    original = table.loc["original"] if "original" in table.index else None
    for kind, column in (("input", f"mean_{basis}"), ("total", "mean_total_tokens")):
        ratio = original[column] / table[column] if original is not None and column in table else math.nan
        table[f"original_over_format_{kind}"] = ratio
    table.index.name = "format"
    shown = [column for column in COST_COLUMNS if column not in INPUT_COLUMNS or column in table.columns]
    return table.reindex(columns=shown)


# ---------------------------------------------------------------------------------------------------------------
# Importing published explanations
# ---------------------------------------------------------------------------------------------------------------

# CSV header (compared without case, spaces or underscores) → our format name; the layout of Lee et al.'s results.
IMPORT_COLUMNS = {
    "original": "original",
    "summary": "summary",
    "highlight": "highlight",
    "highlightsummary": "highlight_summary",
    "avhs": "avhs",
}


def _header_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def _non_negative_int(value: str, what: str, where: str) -> int:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or not number.is_integer() or number < 0:
        shown = value if len(value) <= 40 else f"{value[:40]}…"
        raise InputError(f"{where}: {what} {shown!r} is not a non-negative integer")
    return int(number)


def _clean_imported(text: str) -> str:
    # Published cells carry stray spaces, line breaks and the final period; store them like our own explanations.
    text = " ".join(text.split())
    return text[:-1].rstrip() if text.endswith(".") else text


# Lee et al.'s score and token-count tables have the very columns of an explanation table (Original=0.21); a file
# whose format cells are at least this share numbers is one of those, not explanations.
NUMERIC_SHARE_LIMIT = 0.9
# An explanation is a sentence; a cell far longer is a broken quote or the wrong file, not something to show raters.
MAX_EXPLANATION_CHARS = 10_000


@dataclass(frozen=True)
class ImportReport:
    """What one CSV import did: explanations written, ones already stored (left as they were), and warnings."""

    path: str
    written: int
    unchanged: int
    warnings: tuple[str, ...] = ()

    @property
    def total(self) -> int:
        return self.written + self.unchanged


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _refuse_number_table(path: Path, cells: list[tuple[str, str, str]]) -> None:
    """`cells` are (neuron, column, text) of the format columns; mostly numbers means a score table."""
    filled = [(neuron, column, text.strip()) for neuron, column, text in cells if text.strip()]
    numbers = [cell for cell in filled if _is_number(cell[2])]
    if filled and len(numbers) >= NUMERIC_SHARE_LIMIT * len(filled):
        neuron, column, value = numbers[0]
        raise InputError(
            f"{path} looks like a table of scores or token counts, not explanations: {len(numbers)} of its"
            f" {len(filled)} format cells are numbers (e.g. {column} = {value} for neuron {neuron}); import the file"
            " that holds the explanation texts"
        )


def _origin(row: dict[str, Any]) -> str:
    stored = row.get("params")
    params = stored if isinstance(stored, dict) else {}
    if row["source"] == "imported":
        return str(params.get("path") or params.get("file") or "an earlier import")
    return f"{row['source']} explanations"


def _mixing_warning(path: Path, explainer: str, new_rows: list[dict[str, Any]], stored: list[dict[str, Any]]) -> str:
    """A warning when new rows join neurons × formats that already hold explanations by `explainer`, else ''."""
    slots = {(row["layer"], row["neuron"], row["format"]) for row in new_rows}
    others = [row for row in stored if (row["layer"], row["neuron"], row["format"]) in slots]
    if not others:
        return ""
    neurons = {(row["layer"], row["neuron"]) for row in others}
    formats = [name for name in prompts.FORMATS if name in {row["format"] for row in others}]
    origins = list(dict.fromkeys(_origin(row) for row in others))
    shown = ", ".join(origins[:3]) + (f" and {len(origins) - 3} more" if len(origins) > 3 else "")
    return (
        f"{len(neurons)} neuron(s) of {path} already had {'/'.join(formats)} explanations by {explainer} from"
        f" {shown}; arms naming {explainer} now mix explanations from several sources. To keep them apart, import"
        " under another --explainer label"
    )


def import_explanations_csv(db: Any, path: str | Path, explainer: str, model: str = "gpt2-xl") -> ImportReport:
    """Store the explanations of a CSV with columns Layer, Neuron and format columns (Original, Summary, Highlight,
    HighlightSummary, AVHS) as source='imported'. All or nothing. A stored explanation is never rewritten: a text
    already stored for the neuron, format and explainer is left as it is, and a different one is a new row that
    records the file's path and sha256. Empty cells are skipped."""
    from core.db.explanations import ok_explanations_of

    path = Path(path)
    expected = "Layer, Neuron and one or more of Original, Summary, Highlight, HighlightSummary, AVHS"
    if not explainer or not explainer.strip():
        raise InputError("name the explainer that wrote these explanations, e.g. --explainer gpt-4")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except OSError as exc:
        raise InputError(f"cannot read {path} ({exc.strerror or exc}); give the path of a CSV file") from None
    try:
        frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8")
    except (ValueError, OverflowError, csv.Error) as exc:  # pandas' parser errors and bad UTF-8 are ValueErrors
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path} is not a readable CSV ({message}); expected columns {expected}") from None
    columns = {_header_key(c): c for c in frame.columns}
    missing = [name for name in ("layer", "neuron") if name not in columns]
    format_columns = {fmt: columns[key] for key, fmt in IMPORT_COLUMNS.items() if key in columns}
    if missing or not format_columns:
        found = ", ".join(map(str, frame.columns)) or "none"
        raise InputError(f"{path} lacks the columns {expected} (found: {found})")

    cells = []
    for position, record in enumerate(frame.to_dict("records")):
        where = f"{path.name}, row {position + 1}"
        layer = _non_negative_int(record[columns["layer"]], "layer", where)
        neuron = _non_negative_int(record[columns["neuron"]], "neuron", where)
        for format_name, column in format_columns.items():
            cells.append((position, layer, neuron, format_name, column, record[column]))
    _refuse_number_table(path, [(f"{layer}:{neuron}", column, raw) for _, layer, neuron, _, column, raw in cells])

    source = {"file": path.name, "path": str(path.resolve()), "sha256": hashlib.sha256(data).hexdigest()}
    rows = []
    for position, layer, neuron, format_name, column, raw in cells:
        if len(raw) > MAX_EXPLANATION_CHARS:
            raise InputError(
                f"{path.name}, row {position + 1}: the {column} cell holds {len(raw):,} characters, more than an"
                f" explanation ({MAX_EXPLANATION_CHARS:,} at most); is a quote left open, or is it the wrong file?"
            )
        explanation = _clean_imported(raw)
        if not explanation:
            continue
        identity = {"model": model, "neuron": f"{layer}:{neuron}", "format": format_name, "explainer": explainer}
        rows.append(
            {
                "model": model,
                "layer": layer,
                "neuron": neuron,
                "format": format_name,
                "explainer": explainer,
                "source": "imported",
                "params": {**source, "row": position + 1, "column": column},
                "completion": raw,
                "explanation": explanation,
                "status": "ok",
                # The text is part of the key: a different text is a new explanation, never a rewrite of one that
                # study items and scores point at.
                "job_key": _digest({"source": "imported", **identity, "explanation": explanation}),
            }
        )
    stored = ok_explanations_of(db, model, explainer)
    # Rows imported before the key held the text are recognised by their text.
    known = {(r["layer"], r["neuron"], r["format"], r["explanation"]) for r in stored if r["source"] == "imported"}
    new_rows = [r for r in rows if (r["layer"], r["neuron"], r["format"], r["explanation"]) not in known]
    warning = _mixing_warning(path, explainer, new_rows, stored)
    report = dbmod.insert_explanations(db, new_rows)
    return ImportReport(str(path), report.written, len(rows) - report.written, (warning,) if warning else ())
