"""A real app in a real browser: `streamlit run app.py` on a free localhost port, and Debian's chromium driven by
Playwright (never a downloaded browser). Used by tests/test_e2e_browser.py."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

REPO_ROOT = Path(__file__).resolve().parent.parent
STREAMLIT = Path(sys.executable).with_name("streamlit")
# The network is closed: without the background-networking flags chromium keeps trying (and failing) to reach
# Google's update, sync and field-trial servers.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def missing_browser() -> str | None:
    """Why the browser test cannot run here (no chromium, no Playwright, no streamlit), or None when it can."""
    if shutil.which("chromium") is None:
        return "chromium is not installed: `apt-get install chromium chromium-driver` (.ci/run does this as root)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python playwright is not installed: `pip install -r requirements-dev.txt`"
    if not STREAMLIT.exists():
        return f"streamlit is not installed next to {sys.executable}"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


# Generous: on a loaded 2-core machine a cold `streamlit run` takes a minute, and a rerun that computes a study's
# statistics several seconds. Every wait is on a condition, so a generous limit costs nothing when all goes well.
START_TIMEOUT_S = 180.0
LAUNCH_TIMEOUT_MS = 120_000


@contextmanager
def running_app(db_path: Path, log_path: Path, start_timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """Run the app on a free port with $EVAL_DB = db_path, its output going to log_path; yields its base URL and
    stops the server on exit (terminate, then kill after 10 s)."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("OPENAI_")}
    env.update({"EVAL_DB": str(db_path), "PYTHONUNBUFFERED": "1"})
    command = [
        str(STREAMLIT), "run", "app.py",
        "--server.headless", "true",
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + start_timeout
            while not _healthy(url):
                if server.poll() is not None:
                    raise RuntimeError(f"streamlit exited with code {server.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"streamlit did not answer on {url} within {start_timeout:.0f} s; see {log_path}"
                    )
                time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


@contextmanager
def chromium_context(profile_dir: Path, **options: object) -> Iterator[BrowserContext]:
    """A Playwright browser context of Debian's chromium with a fresh profile in profile_dir (headless, downloads
    accepted; `options` go to launch_persistent_context, e.g. viewport); closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile_dir),
            executable_path=shutil.which("chromium"),
            headless=True,
            args=list(CHROMIUM_ARGS),
            accept_downloads=True,
            **{"timeout": LAUNCH_TIMEOUT_MS, **options},
        )
        try:
            yield context
        finally:
            context.close()


def settled(page: Page) -> None:
    """Wait until the app's script run has finished and no element of an earlier run is left on screen (Streamlit
    keeps them, marked stale, until the run replaces them). Right after a click the new run may not have started
    yet, so first wait for something that only the new run shows."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state", "notRunning")
    expect(page.locator('[data-testid="stElementContainer"][data-stale="true"]')).to_have_count(0)


# Text in a web font stays invisible until the font has loaded, and tables draw on their canvas in the next frames.
_SETTLED = "document.fonts.ready.then(() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r))))"
_CONTENT_BOTTOM = "block => block.getBoundingClientRect().bottom"


def page_screenshot(page: Page, path: Path, min_height: int = 800) -> None:
    """A PNG of a Streamlit page down to the end of its content. Streamlit scrolls inside its own container, so a
    full-page screenshot stops at the viewport: give the page a viewport taller than its content instead, and the
    shot is cut where the content ends."""
    page.evaluate(_SETTLED)
    if page.viewport_size is None:  # the window's own size: nothing to cut
        page.screenshot(path=path)
        return
    bottom = page.get_by_test_id("stMainBlockContainer").evaluate(_CONTENT_BOTTOM)
    viewport = page.viewport_size
    height = min(viewport["height"], max(min_height, int(bottom) + 20))
    page.screenshot(path=path, clip={"x": 0, "y": 0, "width": viewport["width"], "height": height})
