"""core.jobs: explain jobs in a background thread, with their own database connection, followed by snapshots."""

from __future__ import annotations

import threading

import pytest

from core import db as dbmod
from core import jobs
from core.errors import InputError
from core.records import NeuronId
from tests.test_app import MODEL, write_default_data


def _job(app_db, formats: tuple[str, ...] = ("summary", "original")) -> jobs.ExplainJob:
    return jobs.ExplainJob(
        dbmod.database_file(app_db), MODEL, (NeuronId(0, 0), NeuronId(1, 2)), formats, "openai:fake-model"
    )


def test_a_job_runs_to_completion_in_its_own_thread_with_its_own_connection(app_db, openai_env) -> None:
    write_default_data(app_db)
    registry = jobs.JobRegistry()
    job_id = registry.start(_job(app_db))
    # The job holds only the database path: the thread opens (and closes) its own connection.
    snapshot = registry.wait(job_id, timeout=60)
    assert snapshot is not None and snapshot.phase == jobs.DONE, snapshot
    assert snapshot.done == snapshot.total == 4 and not snapshot.running and snapshot.error is None
    assert snapshot.explained is not None and snapshot.explained.ok == 4
    assert {row["id"] for row in snapshot.explained.rows(app_db)} == {
        row["id"] for row in dbmod.explanations_after(app_db, snapshot.start_id, MODEL)
    }
    assert [s.job_id for s in registry.jobs(dbmod.database_file(app_db))] == [job_id]
    assert registry.jobs("/elsewhere.db") == []


def test_an_identical_job_is_refused_while_one_runs_and_a_failure_is_recorded(app_db, openai_env) -> None:
    write_default_data(app_db)
    release = threading.Event()
    openai_env.chat_handler = lambda request: (release.wait(30), "cats")[1]
    registry = jobs.JobRegistry()
    job_id = registry.start(_job(app_db))
    try:
        with pytest.raises(InputError, match="already running"):
            registry.start(_job(app_db))
        assert registry.get(job_id).running
    finally:
        release.set()
    assert registry.wait(job_id, timeout=60).phase == jobs.DONE
    failed = registry.start(_job(app_db, formats=("no-such-format",)))
    snapshot = registry.wait(failed, timeout=60)
    assert snapshot.phase == jobs.FAILED and "no-such-format" in snapshot.error


def test_a_job_scores_with_the_scorer_it_names(app_db, openai_env) -> None:
    from dataclasses import replace

    from core.pipeline import ScorerReport

    write_default_data(app_db)
    registry = jobs.JobRegistry()
    job = replace(_job(app_db, formats=("summary",)), simulator="openai:fake-model", scorer="detection")
    snapshot = registry.wait(registry.start(job), timeout=60)
    assert snapshot is not None and snapshot.phase == jobs.DONE, snapshot
    # Routed to core.pipeline.score_with_scorer: the test neurons lack the scorers' excerpts, so none is scored.
    assert isinstance(snapshot.scored, ScorerReport)
    assert snapshot.scored.simulator == "detection:openai:fake-model" and snapshot.scored.method == "balanced_accuracy"
    assert snapshot.scored.ok == 0 and set(snapshot.scored.no_excerpts) == {"0:0", "1:2"}
