"""Signing in: one rater per browser session (ui.session), shared by the Rate, Explain and Results pages."""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlite_utils
import streamlit as st

from core.render import escape_markdown
from ui.elements import errors_shown
from ui.session import RATER_KEY, signed_in

if TYPE_CHECKING:
    from core.raters import Rater


def sign_in(db: sqlite_utils.Database, purpose: str) -> Rater | None:
    """The signed-in rater; else a sign-in form (name and access code, checked by raters.authenticate) and
    None. A wrong name or code is shown as one error line and nothing else."""
    from core import raters

    rater = signed_in()
    if rater is not None:
        with st.sidebar:
            st.caption(f"Signed in as {escape_markdown(rater.name)}")
            if st.button("Sign out", key="sign_out"):
                st.session_state.pop(RATER_KEY, None)
                st.rerun()
        return rater
    if not raters.list_raters(db):
        st.info(
            "No one can sign in yet: this database has no raters. Create an admin from the command line with "
            "`python -m core rater add --name NAME --admin` (it asks for an access code), then sign in here."
        )
        return None
    st.markdown(purpose)
    # No key on the code field and a form that clears itself: the code does not linger in the session.
    with st.form("sign_in", clear_on_submit=True):
        name = st.text_input("Name", key="sign_in_name")
        code = st.text_input("Access code", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        # Failed sign-ins are throttled per name and per client: the connection's address, or on localhost (where
        # the server gives none) this browser session. A wait shows as the error line.
        address = st.context.ip_address
        client = address if isinstance(address, str) and address else _session_id()
        with errors_shown():
            st.session_state[RATER_KEY] = raters.authenticate(db, name, code, client=client)
            st.rerun()
    return None


def _session_id() -> str | None:
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return f"session:{ctx.session_id}" if ctx is not None else None
