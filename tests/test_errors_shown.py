"""How the app shows errors (ui/elements.py `errors_shown`), driven by streamlit.testing.v1.AppTest: our own errors
as their one-line message; anything unexpected as a short line for everyone, its traceback in the server log and,
for admins only, in a "Details" expander. Never Streamlit's own traceback page."""

from __future__ import annotations

import logging

import pytest
from streamlit.testing.v1 import AppTest

from core import render
from core.raters import Rater
from ui import elements, session

TIMEOUT = 60


def _failing_page() -> None:
    import streamlit as st

    from ui import elements

    with elements.errors_shown():
        st.write("before the failure")
        raise ValueError("internal detail /srv/workbench/core/x.py")
    st.write("after the block")


def _page_text(at: AppTest) -> str:
    return "\n".join(str(getattr(node, "proto", "")) for root in (at.main, at.sidebar) for node in root)


def _run(rater: Rater | None) -> AppTest:
    at = AppTest.from_function(_failing_page, default_timeout=TIMEOUT)
    if rater is not None:
        at.session_state[session.RATER_KEY] = rater
    return at.run()


@pytest.mark.parametrize("rater", [None, Rater(id=2, name="r", role="rater")], ids=["signed out", "rater"])
def test_an_unexpected_error_is_one_short_line_for_raters(rater: Rater | None, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="ui.elements"):
        at = _run(rater)
    assert not at.exception, [e.message for e in at.exception]
    assert [e.value for e in at.error] == [elements.UNEXPECTED_ERROR]
    assert not at.expander
    text = _page_text(at)
    assert "Traceback" not in text and "ValueError" not in text and "/srv/workbench" not in text
    assert "after the block" in text  # the failed block ends; the page goes on
    # The traceback is in the server log.
    assert "Traceback" in caplog.text and "ValueError: internal detail /srv/workbench/core/x.py" in caplog.text


def test_an_admin_can_expand_the_details() -> None:
    at = _run(Rater(id=1, name="a", role="admin"))
    assert not at.exception, [e.message for e in at.exception]
    assert [e.value for e in at.error] == [elements.UNEXPECTED_ERROR]
    [details] = at.expander
    assert details.label == "Details"
    [trace] = details.code
    assert trace.value.startswith("Traceback") and "ValueError: internal detail /srv/workbench/core/x.py" in trace.value


def test_a_message_can_neither_hide_nor_reverse_text() -> None:
    message = "the reply 'cat\u202etac' holds\u200b no\nexplanation"
    assert render.escape_markdown(message) == r"the reply 'cat⟨U\+202E⟩tac' holds⟨U\+200B⟩ no explanation"
