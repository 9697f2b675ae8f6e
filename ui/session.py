"""Who this browser session is: one signed-in rater (a core.raters.Rater) shared by the Rate, Explain and Results
pages, so that one sign-in serves them all. Session state holds only this and other UI state."""

from __future__ import annotations

from typing import TYPE_CHECKING

import streamlit as st

if TYPE_CHECKING:
    from core.raters import Rater

RATER_KEY = "signed_in_rater"


def signed_in() -> Rater | None:
    """The signed-in rater of this session, or None."""
    return st.session_state.get(RATER_KEY)


def sees_unblinded() -> bool:
    """Whether this session may see what open studies hide (explanations, formats and scores of their neurons):
    only a signed-in admin may. Everyone else, raters included, is a visitor."""
    rater = signed_in()
    return rater is not None and rater.is_admin
