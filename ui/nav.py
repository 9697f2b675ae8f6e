"""The sidebar's page list, drawn by every page, so that the entry page is called "Home".

Streamlit names the entry page after its file ("app") in its own sidebar list, and `st.navigation` only takes over
once some run has passed through the entry page, so a link that is a fresh server's first request would still show
"app". Hiding Streamlit's list (`client.showSidebarNavigation = false` in .streamlit/config.toml) and drawing this
one keeps the pages/ folder, its URL paths (/Neurons, /Explain, /Rate, /Results) and deep links exactly as they are.
"""

from __future__ import annotations

import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

# (script, label): the script path is relative to app.py, as st.page_link wants it.
PAGES = (
    ("app.py", "Home"),
    ("pages/1_Neurons.py", "Neurons"),
    ("pages/2_Explain.py", "Explain"),
    ("pages/3_Rate.py", "Rate"),
    ("pages/4_Results.py", "Results"),
)


def sidebar(title: str) -> None:
    """Page settings, then the page list at the top of the sidebar. Call first on every page."""
    st.set_page_config(page_title=title, page_icon="🔬", layout="wide")
    with st.sidebar:
        try:
            for script, label in PAGES:
                st.page_link(script, label=label)
        except StreamlitPageNotFoundError:
            # A page run as its own entry point (`streamlit run pages/…`, a test of one page) has no app.py to link
            # to; `streamlit run app.py` always does.
            return
        st.divider()
