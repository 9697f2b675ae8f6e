"""Explain (and optionally score) jobs that run in a background thread, so that a page can start one, let the
admin navigate away or refresh, and find it again by its id.

Each job has its own database connection (sqlite connections must not cross threads) and never touches the
app's widgets; the app holds one JobRegistry per server process (ui.resources.job_registry) and polls snapshots.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import sqlite_utils

from core import db as dbmod
from core import explain, llm, pipeline
from core.errors import InputError, WorkbenchError
from core.explain import ExplainOptions, ExplainReport
from core.pipeline import ScoreReport, ScorerReport
from core.records import NeuronId
from core.simulate import SimulatorOptions

log = logging.getLogger(__name__)

EXPLAINING, SCORING, DONE, FAILED = "explaining", "scoring", "done", "failed"
UNEXPECTED_ERROR = "Something went wrong; the details are in the server log."


@dataclass(frozen=True)
class ExplainJob:
    """What to run: explain `neurons` × `formats` with `explainer` (as `options` say) into the database at `db_path`,
    then score them with `simulator` (and `method`, run as `simulator_options` say) when one is given, under
    `scorer` (core.scorers.SCORERS: simulation by default; for detection and fuzzing `simulator` is the chat LLM, for
    embedding the embedder). Two equal jobs are the same job."""

    db_path: str
    model: str
    neurons: tuple[NeuronId, ...]
    formats: tuple[str, ...]
    explainer: str
    options: ExplainOptions = field(default_factory=ExplainOptions)
    simulator: str | None = None
    method: str | None = None
    scorer: str = "simulation"
    simulator_options: SimulatorOptions = field(default_factory=SimulatorOptions)


@dataclass(frozen=True)
class JobSnapshot:
    """Where a job stands: its phase, progress in that phase, and its reports once each phase ends."""

    job_id: str
    job: ExplainJob
    phase: str = EXPLAINING
    done: int = 0
    total: int = 0
    start_id: int = 0  # the last explanation id before the job: what it stores comes after
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    explained: ExplainReport | None = None
    scored: ScoreReport | ScorerReport | None = None
    error: str | None = None

    @property
    def running(self) -> bool:
        return self.phase in (EXPLAINING, SCORING)


class JobRegistry:
    """The jobs of this process by id, guarded by one lock; each job runs in a daemon thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, JobSnapshot] = {}

    def start(self, job: ExplainJob) -> str:
        """Start `job` in a thread and return its id. Refused (InputError) while an equal job runs."""
        if not job.db_path:
            raise InputError("a background job needs a database file, not an in-memory database")
        with self._lock:
            for snapshot in self._jobs.values():
                if snapshot.running and snapshot.job == job:
                    raise InputError(f"the same job is already running (job {snapshot.job_id}); wait for it to end")
            job_id = uuid.uuid4().hex[:12]
            self._jobs[job_id] = JobSnapshot(job_id, job)
        threading.Thread(target=self._run, args=(job_id, job), name=f"explain-job-{job_id}", daemon=True).start()
        return job_id

    def get(self, job_id: str) -> JobSnapshot | None:
        with self._lock:
            return self._jobs.get(job_id)

    def jobs(self, db_path: str | None = None) -> list[JobSnapshot]:
        """Every job (of the database at `db_path`, if given), newest first."""
        with self._lock:
            snapshots = list(self._jobs.values())
        return sorted(
            (s for s in snapshots if db_path is None or s.job.db_path == db_path), key=lambda s: -s.started_at
        )

    def wait(self, job_id: str, timeout: float) -> JobSnapshot | None:
        """The job's snapshot once it ends, or as it stands after `timeout` seconds (for the CLI and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.get(job_id)
            if snapshot is None or not snapshot.running or time.monotonic() > deadline:
                return snapshot
            time.sleep(0.05)

    def _update(self, job_id: str, **changes) -> None:
        with self._lock:
            self._jobs[job_id] = replace(self._jobs[job_id], **changes)

    def _progress(self, job_id: str, phase: str) -> Callable[[int, int], None]:
        return lambda done, total: self._update(job_id, phase=phase, done=done, total=total)

    def _run(self, job_id: str, job: ExplainJob) -> None:
        try:
            db = dbmod.connect(job.db_path)
        except Exception as exc:  # a thread has no one else to tell
            self._fail(job_id, exc)
            return
        try:
            self._update(
                job_id,
                start_id=dbmod.last_explanation_id(db),
                total=len(job.neurons) * len(job.formats) * job.options.samples,
            )
            explained = explain.explain_neurons(
                db,
                job.model,
                job.neurons,
                job.formats,
                job.explainer,
                job.options,
                progress=self._progress(job_id, EXPLAINING),
            )
            self._update(job_id, explained=explained)
            if job.simulator is not None:
                kind, name = llm.parse_backend_spec(job.explainer)
                self._update(job_id, phase=SCORING, done=0, total=0)
                scored = self._score(db, job, job.simulator, [f"{kind}:{name}"], self._progress(job_id, SCORING))
                self._update(job_id, scored=scored)
            self._update(job_id, phase=DONE, finished_at=time.time())
        except Exception as exc:  # recorded in the snapshot for the page to show
            self._fail(job_id, exc)
        finally:
            db.conn.close()

    @staticmethod
    def _score(
        db: sqlite_utils.Database,
        job: ExplainJob,
        simulator: str,
        explainers: list[str],
        progress: Callable[[int, int], None],
    ) -> ScoreReport | ScorerReport:
        """Score the job's explanations with `simulator` (the job's own) under its scorer: simulation through
        core.pipeline.score_explanations, the others through core.pipeline.score_with_scorer (docs/METHOD.md §10)."""
        if job.scorer == "simulation":
            return pipeline.score_explanations(
                db,
                job.model,
                simulator,
                method=job.method,
                neurons=job.neurons,
                formats=job.formats,
                explainers=explainers,
                progress=progress,
                simulator_options=job.simulator_options,
            )
        from core.scorers import get_scorer

        scorer = get_scorer(
            job.scorer,
            simulator or None,
            simulator_options=job.simulator_options,
            db=db,
            use_cache=job.options.use_cache,
        )
        return pipeline.score_with_scorer(
            db, job.model, scorer, neurons=job.neurons, formats=job.formats, explainers=explainers, progress=progress
        )

    def _fail(self, job_id: str, exc: Exception) -> None:
        if isinstance(exc, WorkbenchError):
            log.info("job %s failed: %s", job_id, exc, exc_info=True)
            message = str(exc)
        else:
            log.exception("job %s failed unexpectedly", job_id)
            message = UNEXPECTED_ERROR
        self._update(job_id, phase=FAILED, error=message, finished_at=time.time())
