"""Page elements every page uses: errors shown as one line, a row of metrics, and downloads."""

from __future__ import annotations

import io
import logging
import math
import traceback
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import streamlit as st

from core.errors import WorkbenchError
from core.llm import scrub_secrets
from core.render import escape_markdown
from ui.session import signed_in

log = logging.getLogger(__name__)

UNEXPECTED_ERROR = "Something went wrong; the details are in the server log."


@contextmanager
def errors_shown() -> Iterator[None]:
    """End the block on an error, shown as one st.error line: our own (WorkbenchError) with its message, any other
    with a short apology, and its traceback in an expander for admins only. Tracebacks always go to the log.
    st.stop and st.rerun are not errors (BaseException) and pass through."""
    try:
        yield
    except WorkbenchError as exc:
        log.info("shown to the user: %s", exc, exc_info=True)
        st.error(escape_markdown(str(exc)))
    except Exception:
        log.exception("unexpected error in the app")
        st.error(UNEXPECTED_ERROR)
        rater = signed_in()
        if rater is not None and rater.is_admin:
            with st.expander("Details"):
                st.code(scrub_secrets(traceback.format_exc()), language=None)


def metric_row(figures: Sequence[tuple[str, str] | tuple[str, str, str | None]]) -> None:
    """(label, value[, help]) figures side by side, each as wide as its text, wrapping onto a new row when the
    window is narrow (fixed columns would cut values such as "62% (31%–86%)" short)."""
    with st.container(horizontal=True, gap="medium"):
        for label, value, *help_text in figures:
            st.metric(escape_markdown(label), value, help=help_text[0] if help_text else None, width="content")


def zip_files(files: Mapping[str, bytes]) -> bytes:
    """Several export files as one zip archive (for one download button)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def download_of(files: Mapping[str, bytes], stem: str, fmt: str) -> tuple[str, bytes, str]:
    """(file name, bytes, MIME type) for one download button: the single file itself, or a zip of several."""
    if len(files) == 1:
        name, data = next(iter(files.items()))
        mime = {"json": "application/json", "csv": "text/csv"}.get(name.rsplit(".", 1)[-1], "application/octet-stream")
        return name, data, mime
    return f"{stem}_{fmt}.zip", zip_files(files), "application/zip"


def neuron_label(index: int, best_score: float | None) -> str:
    """A neuron in the picker: its index, and its best score when it has one."""
    if best_score is None or not math.isfinite(best_score):
        return str(index)
    return f"{index}  (best score {best_score:.2f})"
