"""What one server process holds for every session: the subject model for Try your own text, its runs, the
background jobs, and the offline demo (which writes on a connection of its own)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from core.records import ActivationRecord, NeuronId
from ui.queries import database


@st.cache_resource(show_spinner="Loading the model (once per server)…", max_entries=2)
def subject_model(model: str) -> Any:
    """The subject model, loaded once per server and shared by every session (st.cache_resource), on the default
    device ($EVAL_DEVICE, else cuda when available). The one model the pages load: for Try your own text."""
    from core.models import load_subject_model

    return load_subject_model(model)


@st.cache_data(show_spinner=False, max_entries=64)
def _own_text(model: str, layer: int, index: int, text: str) -> tuple[ActivationRecord, int]:
    from core.activations import activate_text

    result = activate_text(subject_model(model), layer, text)
    return result.record(index), result.dropped_tokens


def own_text(model: str, neuron_id: NeuronId, text: str) -> tuple[ActivationRecord, int]:
    """A neuron's activations on a text, processed as collection processes an excerpt (core.activations.activate_text),
    and how many tokens past the cap (512) were left out. Activations only: nothing an open study hides."""
    return _own_text(model, neuron_id.layer, neuron_id.index, text)


@st.cache_resource
def job_registry() -> Any:
    """The background jobs of this server process (a core.jobs.JobRegistry), shared by every session and rerun, so
    that a job outlives the page run that started it."""
    from core import jobs

    return jobs.JobRegistry()


def run_demo() -> Any:
    """The offline demo (core.demo.run_demo) on this app's database; its report."""
    from core import demo

    with database() as db:
        return demo.run_demo(db)
