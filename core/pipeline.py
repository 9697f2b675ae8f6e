"""Orchestration of simulate → score (METHOD.md §3–§4) for the CLI and the app: one explanation, stored explanations
(`score`) and the whole collect → explain → simulate → score run (`run`). Neuron puzzles (`puzzles`) are run by
core.puzzles.

Everything stored is resumable: `score` skips explanations that already have an ok score under the same simulator,
method, split and calibration, and retries failed ones; similarities already computed are kept.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from core import db as dbmod
from core import scoring, similarity
from core.errors import InputError, NotFoundError
from core.explain import ExplainOptions, ExplainReport, explain_neurons
from core.records import MIN_RANDOM_RECORDS, MIN_TOP_RECORDS, SPLITS, ActivationRecord, NeuronId, NeuronRecord
from core.simulate import SimulationResult, Simulator, SimulatorOptions, check_alignment, get_simulator
from core.values import Progress, to_jsonable

if TYPE_CHECKING:
    from core.activations import CollectOptions  # imported where it runs: collection brings torch

log = logging.getLogger(__name__)

REFERENCE_KINDS = ("openai", "none")


# ---------------------------------------------------------------------------------------------------------------
# One explanation
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimulationOutcome:
    """A simulation and its scores. `predictions` are the ones R² and absdev measure (a·EV + b when calibrated);
    the correlation is always that of the simulator's EVs (docs/METHOD.md §3). A failed simulation has no scores
    and no predictions, and says why in `error`."""

    result: SimulationResult
    scores: scoring.Scores | None
    predictions: list[list[float]] | None
    calibration: tuple[float, float] | None = None

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def error(self) -> str | None:
        return self.result.error

    @property
    def score(self) -> float | None:
        """The correlation score; None when the simulation failed or the score is undefined."""
        return self.scores.score if self.scores else None

    def to_json(self) -> dict[str, Any]:
        scores = self.scores
        return {
            "predictions": self.predictions,
            "score": scores.score if scores else None,
            "rsquared": scores.rsquared if scores else None,
            "absdev": scores.absdev if scores else None,
            "per_excerpt": [dict(item) for item in scores.per_excerpt] if scores else None,
            "calibration": list(self.calibration) if self.calibration else None,
            "simulator": self.result.simulator,
            "method": self.result.method,
            "status": self.result.status,
            "error": self.result.error,
            "seconds": self.result.seconds,
        }


def _failed(result: SimulationResult, reason: str) -> SimulationOutcome:
    failed = SimulationResult.failed(result.simulator, result.method, reason, result.seconds)
    return SimulationOutcome(failed, None, None)


def _with_tokens_of(result: SimulationResult, other: SimulationResult) -> SimulationResult:
    """`result` counting the tokens of `other` too (the calibration split's requests); unknown if either is."""
    known = None not in (result.input_tokens, result.output_tokens, other.input_tokens, other.output_tokens)
    return dataclasses.replace(
        result,
        input_tokens=(result.input_tokens or 0) + (other.input_tokens or 0) if known else None,
        output_tokens=(result.output_tokens or 0) + (other.output_tokens or 0) if known else None,
    )


def simulate_and_score(
    simulator: Simulator,
    explanation: str,
    records: Sequence[ActivationRecord],
    calibration_records: Sequence[ActivationRecord] | None = None,
) -> SimulationOutcome:
    """Simulate `records` and score the predictions against their true activations (docs/METHOD.md §4).

    With `calibration_records`, `y ≈ a·EV + b` is fitted on them (docs/METHOD.md §3) and applied to the predictions of
    `records`: R² and absdev are of the calibrated values; the correlation is that of the EVs, sign-flipped when the
    fitted slope is negative, as OpenAI reports it, with the raw one kept as `raw_score` (scoring.score_calibrated).
    A failed or misaligned simulation gives a failed outcome with no scores: never zeros.
    """
    records = list(records)
    if not records:
        raise InputError("no records to simulate: give at least one record with tokens and activations")
    result = check_alignment(simulator.simulate(explanation, records), records)
    if not result.ok:
        return SimulationOutcome(result, None, None)
    predictions = [list(p) for p in result.predictions or ()]
    calibration = None
    if calibration_records is not None:
        if not calibration_records:
            return _failed(result, "calibration was asked for but the neuron has no calibration records")
        fitted = check_alignment(simulator.simulate(explanation, calibration_records), calibration_records)
        if not fitted.ok or fitted.predictions is None:  # an aligned ok result always has predictions
            return _failed(result, f"calibration split: {fitted.error or 'no predictions'}")
        result = _with_tokens_of(result, fitted)
        calibration = scoring.fit_calibration(calibration_records, fitted.predictions)
        calibrated = scoring.apply_calibration(predictions, *calibration)
        scores = scoring.score_calibrated(records, predictions, calibrated, slope=calibration[0])
        return SimulationOutcome(result, scores, calibrated, calibration)
    return SimulationOutcome(result, scoring.score_records(records, predictions), predictions)


def resolve_simulator(
    simulator: str | Simulator, method: str | None = None, options: SimulatorOptions | None = None
) -> Simulator:
    """A Simulator object as given, or built from its spec (`hf:PATH`, `openai:MODEL`) with `options`."""
    if isinstance(simulator, str):
        return get_simulator(simulator, method, options)
    if method is not None and method != simulator.method:
        raise InputError(f"simulator {simulator.name} runs method {simulator.method!r}, not {method!r}")
    return simulator


def simulate_text(
    explanation: str,
    records: Sequence[ActivationRecord],
    simulator: str | Simulator,
    method: str | None = None,
    options: SimulatorOptions | None = None,
) -> SimulationOutcome:
    """Simulate and score one explanation on the given records: the `simulate` command and the Explain page."""
    return simulate_and_score(resolve_simulator(simulator, method, options), explanation, records)


# ---------------------------------------------------------------------------------------------------------------
# Stored explanations: `score`
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreReport:
    """What one `score_explanations` call did."""

    simulator: str
    method: str
    split: str
    calibrated: bool
    total: int
    ok: int
    failed: int
    skipped: int
    similarities: int
    errors: tuple[str, ...] = ()
    explanation_ids: tuple[int, ...] = field(default=(), repr=False)
    warnings: tuple[str, ...] = ()  # neurons scored on short splits (see short_split_warning)

    def to_json(self) -> dict[str, Any]:
        """The report without the ids of the explanations it covers."""
        return to_jsonable({f.name: getattr(self, f.name) for f in fields(self) if f.name != "explanation_ids"})


def select_explanations(
    db: Any,
    model: str,
    *,
    neurons: Sequence[NeuronId] | None = None,
    formats: Sequence[str] | None = None,
    explainers: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Stored ok explanations of a model with text, optionally of some neurons, formats and explainers."""
    wanted_neurons = {(n.layer, n.index) for n in neurons} if neurons else None
    rows = []
    for row in dbmod.list_explanations(db, model):
        if not (row.get("explanation") or "").strip():
            continue
        if wanted_neurons is not None and (row["layer"], row["neuron"]) not in wanted_neurons:
            continue
        if formats and row["format"] not in formats:
            continue
        if explainers and row["explainer"] not in explainers:
            continue
        rows.append(row)
    return sorted(rows, key=lambda r: (r["layer"], r["neuron"], r["id"]))


def short_split_warning(record: NeuronRecord, split: str) -> str | None:
    """A warning when a split of the neuron lacks records because fewer than METHOD.md §1's 20 top and 15 random were
    collected (NeuronRecord.split skips them); None when the split is full."""
    missing_top, missing_random = record.split_shortfall(split)
    if not missing_top and not missing_random:
        return None
    held = len(record.split(split))
    return (
        f"neuron {record.neuron}: the {split} split holds {held} of {held + missing_top + missing_random} records "
        f"({len(record.top)} top and {len(record.random)} random collected, docs/METHOD.md §1 asks for at least "
        f"{MIN_TOP_RECORDS} and {MIN_RANDOM_RECORDS}); its scores are not comparable with those of full splits"
    )


def progress_bar(total: int, description: str, enabled: bool) -> Any:
    """A tqdm bar counting explanations; disabled unless `enabled`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="expl", disable=not enabled, leave=False)


class _NeuronRecords:
    """A neuron's stored records for the rows being scored, read once: rows come sorted by neuron, so only the
    current neuron is kept in memory. A neuron without records gives the reason as a string."""

    def __init__(self, db: Any, model: str) -> None:
        self.db, self.model = db, model
        self._current: tuple[NeuronId, NeuronRecord | str] | None = None

    def get(self, neuron: NeuronId) -> NeuronRecord | str:
        if self._current is None or self._current[0] != neuron:
            try:
                self._current = (neuron, dbmod.get_neuron(self.db, self.model, neuron))
            except NotFoundError as exc:
                self._current = (neuron, str(exc))
        return self._current[1]


Job = TypeVar("Job")
Result = TypeVar("Result")


@dataclass(frozen=True)
class _ScoringJob:
    """One explanation to score: its row and records, or why it cannot be simulated."""

    row: dict[str, Any]
    records: list[ActivationRecord] | None = None
    calibration: list[ActivationRecord] | None = None
    error: str | None = None


def _in_order(items: Iterable[Job], work: Callable[[Job], Result], workers: int) -> Iterator[tuple[Job, Result, float]]:
    """(item, work(item), seconds) for each item, in the items' order, with up to `workers` items worked on at once
    in threads (at most 2 × workers taken ahead); workers = 1 works inline. An exception of `work` is raised here,
    where its item's turn comes, and the items not yet started are dropped."""
    if workers <= 1:
        for item in items:
            started = time.perf_counter()
            yield item, work(item), time.perf_counter() - started
        return

    def timed(item: Job) -> tuple[Result, float]:
        started = time.perf_counter()
        return work(item), time.perf_counter() - started

    pending: collections.deque[tuple[Job, Future[tuple[Result, float]]]] = collections.deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="score")
    try:
        for item in items:
            pending.append((item, pool.submit(timed, item)))
            while len(pending) >= 2 * workers:
                done, future = pending.popleft()
                yield done, *future.result()
        while pending:
            done, future = pending.popleft()
            yield done, *future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def score_explanations(
    db: Any,
    model: str,
    simulator: str | Simulator,
    *,
    method: str | None = None,
    neurons: Sequence[NeuronId] | None = None,
    formats: Sequence[str] | None = None,
    explainers: Sequence[str] | None = None,
    split: str = "valid",
    calibrate: bool = False,
    reference: str = "openai",
    embedder: str = similarity.DEFAULT_EMBEDDER,
    progress: bool | Progress = False,
    simulator_options: SimulatorOptions | None = None,
) -> ScoreReport:
    """Simulate and score the stored ok explanations of `model` that lack an ok score under this simulator,
    method, split and calibration; store scores, per-excerpt scores and predictions (failures too, with reasons).

    With `reference="openai"`, also store each explanation's similarity to the neuron's imported reference
    explanation (source 'reference') under `embedder`, where there is one. A neuron whose split is short (fewer
    records collected than docs/METHOD.md §1 asks) is scored on the records there are and named in `warnings`; an empty
    split gives a failed score with the reason.
    """
    if reference not in REFERENCE_KINDS:
        raise InputError(f"reference {reference!r} is unknown; choose one of {', '.join(REFERENCE_KINDS)}")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    rows = select_explanations(db, model, neurons=neurons, formats=formats, explainers=explainers)
    if not rows:
        raise NotFoundError(
            f"no ok explanations of model {model!r} match; run `python -m core explain` first or widen the filters"
        )
    sim = resolve_simulator(simulator, method, simulator_options)
    done = dbmod.scored_explanation_ids(db, sim.name, sim.method, split, calibrate)
    todo = [row for row in rows if row["id"] not in done]
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    warnings: list[str] = []
    stored = _NeuronRecords(db, model)

    def prepare(row: dict[str, Any]) -> _ScoringJob:
        """The records to simulate for one explanation, read here, in the thread that owns the database."""
        neuron = NeuronId(row["layer"], row["neuron"])
        record = stored.get(neuron)
        if isinstance(record, str):
            return _ScoringJob(row, error=f"no activation records for neuron {neuron}: {record}")
        for name in (split, "calibration") if calibrate else (split,):
            # An empty split is a failure (below), not a warning.
            warning = short_split_warning(record, name) if record.split(name) else None
            if warning and warning not in warnings:
                log.warning(warning)
                warnings.append(warning)
        records = record.split(split)
        if not records:
            return _ScoringJob(row, error=f"neuron {neuron} has no records in the {split} split")
        return _ScoringJob(row, records, record.split("calibration") if calibrate else None)

    def simulate(job: _ScoringJob) -> SimulationOutcome | None:
        if job.records is None:
            return None
        return simulate_and_score(sim, job.row["explanation"], job.records, job.calibration)

    bar = progress_bar(len(todo), f"scoring with {sim.name}", progress is True)
    try:
        # API simulators take several explanations at once (their requests share one bounded pool); results are
        # stored in order, by this thread alone.
        jobs = (prepare(row) for row in todo)
        workers = int(getattr(sim, "parallel_explanations", 1))
        for number, (job, outcome, seconds) in enumerate(_in_order(jobs, simulate, workers), start=1):
            error = job.error if outcome is None else outcome.result.error
            status = "ok" if outcome is not None and outcome.result.ok else "failed"
            dbmod.save_score(
                db,
                job.row["id"],
                sim.name,
                sim.method,
                split,
                calibrate,
                outcome.scores if outcome else None,
                outcome.predictions if outcome else None,
                status,
                error,
                outcome.result.seconds if outcome else seconds,
                no_value_count=outcome.result.no_value_count if outcome else None,
                input_tokens=outcome.result.input_tokens if outcome else None,
                output_tokens=outcome.result.output_tokens if outcome else None,
            )
            counts[status] += 1
            if error and error not in errors:
                errors.append(error)
            bar.update(1)
            if callable(progress):
                progress(number, len(todo))
    finally:
        bar.close()
    n_similar = store_reference_similarities(db, model, rows, embedder) if reference == "openai" else 0
    return ScoreReport(
        simulator=sim.name,
        method=sim.method,
        split=split,
        calibrated=calibrate,
        total=len(rows),
        ok=counts["ok"],
        failed=counts["failed"],
        skipped=len(rows) - len(todo),
        similarities=n_similar,
        errors=tuple(errors[:20]),
        explanation_ids=tuple(row["id"] for row in rows),
        warnings=tuple(warnings[:20]),
    )


def store_reference_similarities(db: Any, model: str, rows: Iterable[dict[str, Any]], embedder: str) -> int:
    """Similarity of each explanation to its neuron's reference explanation (docs/METHOD.md §4: the cosine under our
    embedder, not the paper's AdaCS); returns how many were computed now (ones already stored are skipped)."""
    references = dbmod.reference_explanations(db, model)
    rows = [row for row in rows if row.get("source") != "reference"]
    stored = dbmod.stored_similarities(db, [row["id"] for row in rows], embedder)
    pending = []
    for row in rows:
        reference = references.get(NeuronId(row["layer"], row["neuron"]))
        if reference is not None and (row["id"], reference) not in stored:
            pending.append((row["id"], row["explanation"], reference))
    if not pending:
        return 0
    cosines = similarity.similarities([(text, ref) for _, text, ref in pending], embedder)
    for (explanation_id, _, reference), cosine in zip(pending, cosines, strict=True):
        dbmod.save_similarity(db, explanation_id, "openai", reference, embedder, cosine)
    return len(pending)


# ---------------------------------------------------------------------------------------------------------------
# The whole run: collect → explain → simulate → score
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunReport:
    """The per-format table and the paired differences between formats, with what each stage did."""

    model: str
    simulator: str
    method: str
    collected_layers: tuple[int, ...]
    explain: ExplainReport
    score: ScoreReport
    summary: pd.DataFrame
    differences: pd.DataFrame

    @property
    def failed(self) -> int:
        """Explanations and scores that failed; a rerun of the same command retries them."""
        return self.explain.failed + self.score.failed

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(
            {
                "model": self.model,
                "simulator": self.simulator,
                "method": self.method,
                "collected_layers": self.collected_layers,
                "explain": self.explain,
                "score": self.score,
                "summary": frame_rows(self.summary),
                "differences": frame_rows(self.differences),
            }
        )


def frame_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A frame as JSON-ready row dicts (core.values.to_jsonable), missing values as None."""
    if frame.empty:
        return []
    return to_jsonable(frame.astype(object).where(frame.notna(), None).to_dict("records"))


def missing_neurons(db: Any, model: str, neurons: Sequence[NeuronId]) -> list[NeuronId]:
    """The neurons with no stored records."""
    missing = []
    for neuron in neurons:
        try:
            dbmod.get_neuron(db, model, neuron)
        except NotFoundError:
            missing.append(neuron)
    return missing


def _tqdm_progress(description: str, enabled: bool) -> tuple[Callable[[int, int | None], None], Callable[[], None]]:
    from tqdm.auto import tqdm

    bar = tqdm(desc=description, disable=not enabled, leave=False)

    def update(done: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def run_pipeline(
    db: Any,
    model: str,
    neurons: Sequence[NeuronId],
    formats: Sequence[str],
    explainer: str,
    simulator: str | Simulator,
    *,
    method: str | None = None,
    corpus: str | None = None,
    collect_options: CollectOptions | None = None,
    explain_options: ExplainOptions | None = None,
    split: str = "valid",
    calibrate: bool = False,
    reference: str = "openai",
    embedder: str = similarity.DEFAULT_EMBEDDER,
    baseline: str = "original",
    simulator_options: SimulatorOptions | None = None,
    progress: bool = False,
) -> RunReport:
    """Collect the neurons' layers if they are not stored, explain every neuron under every format, simulate and
    score, then summarise per format (docs/METHOD.md §5). Every stage resumes where a previous run stopped.
    """
    from core import activations, llm, models

    model = models.resolve_model_name(model)
    neurons = list(dict.fromkeys(neurons))
    formats = list(dict.fromkeys(formats))
    if not neurons or not formats:
        raise InputError("give at least one neuron (--neurons 3:17) and one format (--formats original,summary)")
    kind, explainer_model = llm.parse_backend_spec(explainer)
    explainer_name = f"{kind}:{explainer_model}"
    sim = resolve_simulator(simulator, method, simulator_options)

    collected: tuple[int, ...] = ()
    missing = missing_neurons(db, model, neurons)
    if missing:
        layers = sorted({n.layer for n in missing})
        update, close = _tqdm_progress(f"collecting layers {layers}", progress)
        try:
            options = collect_options or activations.CollectOptions()
            activations.collect(db, model, layers, corpus, options, progress=update)
        finally:
            close()
        collected = tuple(layers)
        still = missing_neurons(db, model, neurons)
        if still:
            raise InputError(
                f"neurons {', '.join(map(str, still))} are not in model {model!r} after collecting their layers; "
                "check the neuron indices"
            )

    update, close = _tqdm_progress("explaining", progress)
    try:
        explained = explain_neurons(db, model, neurons, formats, explainer, explain_options, progress=update)
    finally:
        close()
    scored = score_explanations(
        db,
        model,
        sim,
        neurons=neurons,
        formats=formats,
        explainers=[explainer_name],
        split=split,
        calibrate=calibrate,
        reference=reference,
        embedder=embedder,
        progress=progress,
    )
    rows = run_rows(db, model, neurons, formats, explainer_name, sim, split=split, calibrated=calibrate)
    if not rows.empty:  # this run's explanations only: another run of the same explainer is another source
        rows = rows[rows["explanation_id"].isin({row["id"] for row in explained.rows(db)})].reset_index(drop=True)
    summary, differences = summarise(rows, sim.name, formats, baseline)
    return RunReport(
        model=model,
        simulator=sim.name,
        method=sim.method,
        collected_layers=collected,
        explain=explained,
        score=scored,
        summary=summary,
        differences=differences,
    )


def run_rows(
    db: Any,
    model: str,
    neurons: Sequence[NeuronId],
    formats: Sequence[str],
    explainer: str,
    simulator: Simulator,
    *,
    split: str = "valid",
    calibrated: bool = False,
) -> pd.DataFrame:
    """The stored rows of one run: its neurons, formats and explainer, scored by one simulator and method."""
    rows = dbmod.score_rows(
        db,
        model,
        simulator.name,
        method=simulator.method,
        split=split,
        calibrated=calibrated,
        reference_kind="openai",
    )
    wanted = {str(n) for n in neurons}
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    keep = frame["neuron"].isin(wanted) & frame["format"].isin(formats) & (frame["explainer"] == explainer)
    return frame[keep].reset_index(drop=True)


def summarise(
    rows: pd.DataFrame, simulator: str, formats: Sequence[str], baseline: str = "original"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-format table (mean score with 95% bootstrap CI, mean similarity, mean input tokens) and the paired
    differences from `baseline` (or the first format) on the same neurons."""
    if rows.empty:
        return pd.DataFrame(), pd.DataFrame()
    order = {name: i for i, name in enumerate(formats)}
    rows = rows.sort_values("format", key=lambda column: column.map(order), kind="stable")
    summary = scoring.format_summary(rows, simulator=simulator)
    present = list(rows["format"].drop_duplicates())
    if len(present) < 2:
        return summary, pd.DataFrame()
    base = baseline if baseline in present else present[0]
    return summary, scoring.paired_format_differences(rows, base, simulator=simulator)


@dataclass(frozen=True)
class SetTable:
    """The per-format table and paired differences of one explanation set (one explainer, one source; see
    core.provenance) under one simulator and method: the unit `score` and `run` report, never pooled."""

    explainer: str
    source: str
    origin: str
    simulator: str
    method: str
    summary: pd.DataFrame
    differences: pd.DataFrame

    def to_json(self) -> dict[str, Any]:
        return {
            "explainer": self.explainer,
            "source": self.source,
            "origin": self.origin,
            "simulator": self.simulator,
            "method": self.method,
            "summary": frame_rows(self.summary),
            "differences": frame_rows(self.differences),
        }


def score_tables(
    db: Any, model: str, report: ScoreReport, baseline: str = "original", embedder: str | None = None
) -> list[SetTable]:
    """Per explanation set among the explanations `report` covers, its per-format table and paired differences
    under the report's simulator, method, split and calibration; similarity to the reference under `embedder`."""
    from core import prompts, provenance
    from core.similarity import DEFAULT_EMBEDDER

    rows = pd.DataFrame(
        provenance.with_sources(
            dbmod.score_rows(
                db,
                model,
                report.simulator,
                method=report.method,
                split=report.split,
                calibrated=report.calibrated,
                reference_kind="openai",
                embedder=embedder or DEFAULT_EMBEDDER,
            )
        )
    )
    if rows.empty:
        return []
    rows = rows[rows["explanation_id"].isin(report.explanation_ids)]
    tables = []
    for (explainer, source), group in rows.groupby(["explainer", "source_key"], sort=True):
        present = set(group["format"])
        formats = [f for f in prompts.FORMATS if f in present] + sorted(present - set(prompts.FORMATS))
        summary, differences = summarise(group.reset_index(drop=True), report.simulator, formats, baseline)
        origin = str(group["origin"].iloc[0])
        tables.append(SetTable(explainer, source, origin, report.simulator, report.method, summary, differences))
    return tables


# ---------------------------------------------------------------------------------------------------------------
# The other scorers: detection, fuzzing, embedding (docs/METHOD.md §10)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScorerReport:
    """What one `score_with_scorer` call did, and the stored rows of the explanations it covers (`rows`)."""

    scorer: str
    model: str
    method: str
    simulator: str  # as stored: `<scorer>:<model>`
    total: int
    ok: int
    failed: int
    skipped: int  # already scored with the same settings
    replaced: int  # scored before with other settings, scored again
    no_excerpts: tuple[str, ...]  # neurons stored without the scorers' excerpts: not scored by this scorer
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    rows: tuple[dict[str, Any], ...] = field(default=(), repr=False)
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The report with every stored row it covers, `rows` last."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "rows"}
        return to_jsonable({**data, "rows": self.rows})


def _settings_text(settings: dict[str, Any] | str | None) -> str:
    """Settings as canonical JSON, without the notes a result adds to them (they say what happened, not how)."""
    import json

    parsed: dict[str, Any] = json.loads(settings) if isinstance(settings, str) else settings or {}
    return json.dumps({k: v for k, v in parsed.items() if k != "notes"}, sort_keys=True, ensure_ascii=False)


def score_with_scorer(
    db: Any,
    model: str,
    scorer: Any,
    *,
    neurons: Sequence[NeuronId] | None = None,
    formats: Sequence[str] | None = None,
    explainers: Sequence[str] | None = None,
    progress: bool | Progress = False,
) -> ScorerReport:
    """Score the stored ok explanations of `model` with a scorer other than simulation (core.scorers.get_scorer)
    that lack an ok score under the same scorer, model, metric and settings; store each with its per-excerpt
    predictions, tokens and time (failures too, with reasons). Neurons stored without the scorers' excerpts are
    left out and named in `no_excerpts` and `warnings`: only simulation can score them."""
    from core.db import neurons as neuron_queries
    from core.db import scores as score_queries
    from core.scorers import MissingExcerpts, stored_name

    rows = select_explanations(db, model, neurons=neurons, formats=formats, explainers=explainers)
    if not rows:
        raise NotFoundError(
            f"no ok explanations of model {model!r} match; run `python -m core explain` first or widen the filters"
        )
    simulator = stored_name(scorer)
    settings = scorer.settings()
    wanted = _settings_text(settings)
    stored = score_queries.scorer_settings_of(db, simulator, scorer.method)
    todo, replaced = [], 0
    for row in rows:
        status, text = stored.get(row["id"], (None, None))
        if status == "ok" and text is not None and _settings_text(text) == wanted:
            continue
        replaced += status == "ok"
        todo.append(row)
    counts = {"ok": 0, "failed": 0}
    errors: list[str] = []
    warnings: list[str] = []
    no_excerpts: list[str] = []
    tokens = {"input": 0, "output": 0}
    neuron_records = _NeuronRecords(db, model)
    started = time.perf_counter()
    bar = progress_bar(len(todo), f"scoring with {scorer.name} ({scorer.model})", progress is True)
    try:
        for number, row in enumerate(todo, start=1):
            neuron = NeuronId(row["layer"], row["neuron"])
            record = neuron_records.get(neuron)
            bar.update(1)
            if callable(progress):
                progress(number, len(todo))
            if isinstance(record, str):
                result = None
                error: str | None = f"no activation records for neuron {neuron}: {record}"
            elif record.scoring is None:
                if str(neuron) not in no_excerpts:
                    no_excerpts.append(str(neuron))
                continue
            else:
                try:
                    result = scorer.score(row["explanation"], record)
                except MissingExcerpts as exc:  # pragma: no cover - scorers return it as a failed result
                    result, error = None, str(exc)
                else:
                    error = result.error
            status = "ok" if result is not None and result.ok else "failed"
            score_queries.save_scorer_score(
                db,
                row["id"],
                scorer=scorer.name,
                simulator=simulator,
                method=scorer.method,
                status=status,
                score=result.score if result else None,
                auc=result.auc if result else None,
                per_excerpt=[p.to_json() for p in result.per_excerpt] if result else None,
                settings={**settings, "notes": list(result.notes)} if result and result.notes else settings,
                error=error,
                seconds=result.seconds if result else None,
                input_tokens=result.input_tokens if result else None,
                output_tokens=result.output_tokens if result else None,
            )
            if result is not None:
                tokens["input"] += result.input_tokens or 0
                tokens["output"] += result.output_tokens or 0
            counts[status] += 1
            if error and error not in errors:
                errors.append(error)
    finally:
        bar.close()
    if no_excerpts:
        layers = sorted({NeuronId.parse(n).layer for n in no_excerpts})
        missing_layers = set(neuron_queries.layers_without_scoring_records(db, model))
        for layer in layers:
            how = "was collected" if layer in missing_layers else "has neurons stored"
            warnings.append(
                f"layer {layer} of {model} {how} without the scorers' excerpts, so the {scorer.name} scorer skipped "
                f"its {sum(NeuronId.parse(n).layer == layer for n in no_excerpts)} neuron(s); only simulation scores "
                f"them. Recollect it with `python -m core collect --model {model} --layers {layer} --replace`"
            )
    ids = [row["id"] for row in rows]
    stored_rows = score_queries.scorer_score_rows(db, ids, simulator=simulator, method=scorer.method)
    return ScorerReport(
        scorer=scorer.name,
        model=scorer.model,
        method=scorer.method,
        simulator=simulator,
        total=len(rows),
        ok=counts["ok"],
        failed=counts["failed"],
        skipped=len(rows) - len(todo),
        replaced=replaced,
        no_excerpts=tuple(no_excerpts),
        errors=tuple(errors[:20]),
        warnings=tuple(warnings),
        rows=tuple(stored_rows),
        input_tokens=tokens["input"],
        output_tokens=tokens["output"],
        seconds=time.perf_counter() - started,
    )


def scorer_summary(report: ScorerReport) -> pd.DataFrame:
    """Per explainer and format: neurons scored, mean score with a 95% bootstrap CI over neurons, mean AUC, and the
    scorer's mean input and output tokens per explanation. One scorer, model and metric: never pooled with another."""
    frame = pd.DataFrame([row for row in report.rows if row.get("status") == "ok"])
    if frame.empty:
        return pd.DataFrame()
    table = []
    for (explainer, format_name), group in frame.groupby(["explainer", "format"], sort=True):
        per_neuron = group.groupby("neuron")[["score", "auc", "scorer_input_tokens", "scorer_output_tokens"]].mean()
        estimate = scoring.bootstrap_ci(per_neuron["score"].dropna().tolist())
        aucs = per_neuron["auc"].dropna()
        table.append(
            {
                "explainer": explainer,
                "format": format_name,
                "n": estimate.n,
                "mean_score": estimate.mean,
                "score_ci_lo": estimate.lo,
                "score_ci_hi": estimate.hi,
                "mean_auc": float(aucs.mean()) if len(aucs) else None,
                "scorer_input_tokens": float(per_neuron["scorer_input_tokens"].mean()),
                "scorer_output_tokens": float(per_neuron["scorer_output_tokens"].mean()),
            }
        )
    return pd.DataFrame(table)
