"""The whole app in a real browser: `streamlit run app.py` on a free localhost port, driven by Debian's chromium
through Playwright. A rater signs in and rates two items, the ratings are checked in the database, and an admin
downloads the study's CSV export from the Results page. In a 900 px window, no figure or button is cut short and a
rating can be given with the keyboard alone. A link to a neuron opens it even as a fresh server's first request, with
the sidebar calling the entry page Home. Screenshots of each step and the downloaded file are kept under
test-artifacts/e2e/ (gitignored; the narrow window's under narrow/, the links' under links/) for a person to look
at.
"""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest

from core import db as dbmod
from core import export, human_eval, raters
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from tests.browser import REPO_ROOT, chromium_context, missing_browser, page_screenshot, running_app, settled

if TYPE_CHECKING:
    from playwright.sync_api import Page

MISSING = missing_browser()
pytestmark = [pytest.mark.browser, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
MODEL = "e2e-model"
STUDY = "e2e pilot"
RATER, RATER_CODE = "rita", "rita-access-1"
ADMIN, ADMIN_CODE = "ada", "ada-access-1"
# Each wait is on a condition; the limit is generous because a loaded 2-core machine can take many seconds per rerun.
TIMEOUT_MS = 90_000
VIEWPORT = {"width": 1400, "height": 2400}
# One theme word per neuron: the neuron "fires" on it, and the two arms' explanations describe it differently. No page
# uses these words of its own (the legend says "blue"), so the word on screen names the neuron shown.
THEMES = ("river", "Monday", "seven", "violet")
FILLER = (
    "the", "old", "house", "stood", "by", "the", "road", "and", "we", "walked", "there", "on", "a", "quiet", "day",
    "with", "friends",
)  # fmt: skip


def _excerpt(theme: str, seed: int, strong: bool) -> ActivationRecord:
    words = [f" {FILLER[(seed * 5 + i) % len(FILLER)]}" for i in range(16)]
    spot = (seed * 3) % 16
    if strong:
        words[spot] = f" {theme}"
    activations = [round(0.05 * ((seed + i) % 4) - 0.05, 3) for i in range(16)]
    if strong:
        activations[spot] = round(4.0 - 0.1 * seed, 3)
    return ActivationRecord(tuple(words), tuple(activations))


def _neuron(index: int) -> NeuronRecord:
    theme = THEMES[index]
    top = tuple(_excerpt(theme, seed, strong=True) for seed in range(20))
    random = tuple(_excerpt(theme, 100 + seed, strong=False) for seed in range(20))
    stats = NeuronStats(mean=0.02, variance=0.3, max=top[0].max_activation, quantiles={0.5: 0.2, 0.9: 1.1, 0.99: 3.0})
    return NeuronRecord(MODEL, NeuronId(0, index), top, random, stats)


def prepare_database(path: Path) -> None:
    """Four neurons, each explained under two formats, a blinded study of them, a rater and an admin."""
    db = dbmod.connect(path)
    try:
        dbmod.write_neurons(db, MODEL, [_neuron(index) for index in range(len(THEMES))], source="test")
        rows = []
        for index, theme in enumerate(THEMES):
            for format_name, text in (
                ("summary", f"the word {theme!r}, wherever it appears"),
                ("original", f"nouns of everyday life such as {theme}"),
            ):
                rows.append(
                    {
                        "model": MODEL,
                        "layer": 0,
                        "neuron": index,
                        "format": format_name,
                        "explainer": "openai:gpt-4o-mini",
                        "explanation": text,
                        "input_tokens": 800,
                        "output_tokens": 12,
                    }
                )
        dbmod.insert_explanations(db, rows)
        neurons = [f"0:{index}" for index in range(len(THEMES))]
        human_eval.create_study(db, STUDY, "summary,original", neurons, ratings_per_item=1, seed=7, model=MODEL)
        raters.add_rater(db, RATER, RATER_CODE)
        raters.add_rater(db, ADMIN, ADMIN_CODE, admin=True)
        human_eval.assign_studies(db, RATER, [STUDY])
    finally:
        db.conn.close()


def stored_ratings(path: Path) -> list[dict]:
    db = dbmod.connect(path)
    try:
        return dbmod.study_ratings(db, human_eval.get_study(db, STUDY).id)
    finally:
        db.conn.close()


def exported_csv(path: Path) -> dict[str, bytes]:
    db = dbmod.connect(path)
    try:
        return export.export_study(db, STUDY, "csv")
    finally:
        db.conn.close()


def sign_out(page: Page) -> None:
    """Sign out through the sidebar and wait for the run that follows to show the signed-out page."""
    from playwright.sync_api import expect

    button = page.get_by_test_id("stSidebar").get_by_role("button", name="Sign out")
    button.click()
    expect(button).to_have_count(0)
    settled(page)


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.iterdir():
        if old.is_file():
            old.unlink()
    return ARTIFACTS


def walk_through(page: Page, url: str, db_path: Path, artifacts: Path) -> tuple[list[dict], Path]:
    """Home → Rate (sign in, rate two items) → Results (refused as a rater, then the admin downloads the CSV).
    Returns the ratings stored in the database and the downloaded file."""
    from playwright.sync_api import expect

    def shot(name: str) -> None:
        page_screenshot(page, artifacts / f"{name}.png")

    def main_text() -> str:
        # After a rerun starts, elements of the previous run stay on screen until replaced: read the page only
        # once the run has finished.
        settled(page)
        return page.get_by_test_id("stMain").inner_text()

    # Home: the database's contents are counted.
    page.goto(url)
    expect(page.get_by_role("heading", name="Neuron explanation workbench")).to_be_visible()
    expect(page.get_by_test_id("stMetric").filter(has_text="Neurons")).to_contain_text("4")
    expect(page.get_by_test_id("stMetric").filter(has_text="Studies")).to_contain_text("1")
    shot("1_home")

    # Rate: sign in as the rater (through the sidebar, as a person would go there).
    page.get_by_test_id("stSidebar").get_by_role("link", name="Rate", exact=True).click()
    expect(page.get_by_role("heading", name="Rate explanations")).to_be_visible()
    settled(page)
    page.get_by_label("Name", exact=True).fill(RATER)
    page.get_by_label("Access code", exact=True).fill(RATER_CODE)
    shot("2_rate_sign_in")
    page.get_by_role("button", name="Sign in", exact=True).click()

    # First item: choose explanation 1, with a confidence and a comment.
    expect(page.get_by_text("Item 1 of 4")).to_be_visible()
    expect(page.get_by_role("button", name="Explanation 1", exact=True)).to_be_enabled()
    shown = [main_text()]
    shot("3_rate_item_shown")
    page.get_by_text("3 · fairly sure").click()
    page.get_by_label("Comment (optional)").fill("the first one names the word")
    page.get_by_role("button", name="Explanation 1", exact=True).click()

    # Second item: choose explanation 2.
    expect(page.get_by_text("Item 2 of 4")).to_be_visible()
    expect(page.get_by_role("button", name="Explanation 2", exact=True)).to_be_enabled()
    shown.append(main_text())
    page.get_by_role("button", name="Explanation 2", exact=True).click()
    expect(page.get_by_text("Item 3 of 4")).to_be_visible()
    shot("4_rate_after_two_ratings")

    # The database holds exactly these two ratings, of the items that were on screen.
    ratings = stored_ratings(db_path)
    assert [(r["rater"], r["choice"]) for r in ratings] == [(RATER, "left"), (RATER, "right")]
    assert (ratings[0]["confidence"], ratings[0]["comment"]) == (3, "the first one names the word")
    assert ratings[1]["confidence"] is None and ratings[1]["comment"] is None
    assert len({r["item_id"] for r in ratings}) == 2
    for rating, text in zip(ratings, shown, strict=True):
        assert rating["seconds"] is not None and 0 <= rating["seconds"] < 120
        # Explanation 1 is the left one, and it is shown first.
        left_at, right_at = text.find(rating["left_text"]), text.find(rating["right_text"])
        assert 0 <= left_at < right_at, (rating["left_text"], rating["right_text"], text)
        # The neuron's excerpts are shown with the explanations: its theme word is on screen beyond the two texts.
        assert text.count(THEMES[rating["neuron"]]) > 2, text
        for arm_word in ("summary", "original", "gpt"):
            assert arm_word not in text.lower()

    # Results: a rater is refused the study results; the admin gets them and downloads the CSV export.
    page.get_by_test_id("stSidebar").get_by_role("link", name="Results", exact=True).click()
    expect(page.get_by_role("heading", name="Results", exact=True)).to_be_visible()
    settled(page)
    page.get_by_role("tab", name="Studies").click()
    expect(page.get_by_text(f"{RATER} is a rater, not an admin")).to_be_visible()
    sign_out(page)
    page.get_by_role("tab", name="Studies").click()
    page.get_by_label("Name", exact=True).fill(ADMIN)
    page.get_by_label("Access code", exact=True).fill(ADMIN_CODE)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_test_id("stMetric").filter(has_text="ratings")).to_contain_text("2 of")
    settled(page)
    download_button = page.get_by_role("button", name="csv", exact=True)
    expect(download_button).to_be_enabled()
    shot("5_results")
    with page.expect_download() as download_info:
        download_button.click()
    download = download_info.value
    saved = artifacts / download.suggested_filename
    download.save_as(saved)

    return ratings, saved


def test_rate_two_items_and_download_the_results(tmp_path: Path, artifacts: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    db_path = tmp_path / "e2e.db"
    prepare_database(db_path)

    with (
        running_app(db_path, artifacts / "streamlit.log") as url,
        chromium_context(tmp_path / "chromium-profile", viewport=VIEWPORT) as browser,
    ):
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        try:
            ratings, saved = walk_through(page, url, db_path, artifacts)
        except Exception:
            page.screenshot(path=artifacts / "failure.png")  # what the browser showed when a step failed
            raise

    # The download is the study's CSV export: its ratings file holds the two ratings, and it is byte for byte what
    # core.export writes.
    stem = export.file_stem(STUDY)
    assert saved.name == f"{stem}_csv.zip"
    with zipfile.ZipFile(saved) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    rows = list(csv.DictReader(io.StringIO(files[f"{stem}_ratings.csv"].decode())))
    assert [(row["rater"], row["choice"]) for row in rows] == [(RATER, "left"), (RATER, "right")]
    assert {int(row["item_id"]) for row in rows} == {r["item_id"] for r in ratings}
    assert files == exported_csv(db_path)
    assert len(export.load_export(files).ratings) == 2


NARROW = {"width": 900, "height": 1600}
# Text that Streamlit cuts with an ellipsis when it does not fit (metric values and labels, button labels): any such
# element of the main area whose content is wider than its box.
_CUT_TEXT = """() => [...document.querySelectorAll('[data-testid="stMain"] *')]
  .filter(e => getComputedStyle(e).textOverflow === 'ellipsis' && e.scrollWidth > e.clientWidth + 1)
  .map(e => e.innerText)"""


def test_a_narrow_window_cuts_no_figure_or_button_short(tmp_path: Path, artifacts: Path) -> None:
    """At 900 px wide, with the sidebar open: the neuron's statistics, the rating buttons and the study's figures
    are shown whole (fixed columns used to cut "-0.0678" to "-0…" and "Explanation 1" to "Explana…"); and a rating
    can be given with the keyboard alone."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    db_path = tmp_path / "narrow.db"
    prepare_database(db_path)
    narrow = artifacts / "narrow"
    narrow.mkdir(exist_ok=True)
    with (
        running_app(db_path, narrow / "streamlit.log") as url,
        chromium_context(tmp_path / "chromium-profile", viewport=NARROW) as browser,
    ):
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)

        def settled_and_whole(name: str) -> None:
            settled(page)
            page_screenshot(page, narrow / f"{name}.png")
            assert page.evaluate(_CUT_TEXT) == [], name

        page.goto(f"{url}/Neurons?model={MODEL}&layer=0&neuron=1")
        expect(page.get_by_test_id("stMetric").filter(has_text="q0.99")).to_be_visible()
        expect(page.get_by_test_id("stSidebar")).to_be_visible()
        settled_and_whole("1_neurons")

        page.get_by_test_id("stSidebar").get_by_role("link", name="Rate", exact=True).click()
        expect(page.get_by_role("heading", name="Rate explanations")).to_be_visible()
        settled(page)
        page.get_by_label("Name", exact=True).fill(RATER)
        page.get_by_label("Access code", exact=True).fill(RATER_CODE)
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_role("button", name="Both bad", exact=True)).to_be_visible()
        settled_and_whole("2_rate")
        page.get_by_role("button", name="Explanation 2", exact=True).click()
        expect(page.get_by_text("Item 2 of 4")).to_be_visible()
        expect(page.get_by_role("button", name="Explanation 1", exact=True)).to_be_enabled()
        # Keys go to whatever has the focus: give them only once the new item's form is the one on screen.
        settled(page)
        # The keyboard alone: a confidence, Tab to the comment, Tab to the first choice, Enter.
        page.get_by_role("radio", name="4", exact=True).focus()
        page.keyboard.press("Space")
        page.keyboard.press("Tab")
        page.keyboard.type("typed, not clicked")
        page.keyboard.press("Tab")
        page.keyboard.press("Enter")
        expect(page.get_by_text("Item 3 of 4")).to_be_visible()
        ratings = stored_ratings(db_path)
        assert [(r["choice"], r["confidence"], r["comment"]) for r in ratings] == [
            ("right", None, None),
            ("left", 4, "typed, not clicked"),
        ]

        page.get_by_test_id("stSidebar").get_by_role("link", name="Results", exact=True).click()
        # Until the Results page has run, the sidebar's "Sign out" may still be the Rate page's.
        expect(page.get_by_role("heading", name="Results", exact=True)).to_be_visible()
        settled(page)
        sign_out(page)
        page.get_by_role("tab", name="Studies").click()
        page.get_by_label("Name", exact=True).fill(ADMIN)
        page.get_by_label("Access code", exact=True).fill(ADMIN_CODE)
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_test_id("stMetric").filter(has_text="left chosen")).to_be_visible()
        settled_and_whole("3_results_study")


PAGE_NAMES = ["Home", "Neurons", "Explain", "Rate", "Results"]


def neuron_link(url: str, index: int) -> str:
    return f"{url}/Neurons?model={MODEL}&layer=0&neuron={index}"


def shows_neuron(page: Page, index: int) -> None:
    """The page is the neuron's own view: its heading, its theme word in the excerpts, and the link's address."""
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name=f"{MODEL} · neuron 0:{index}")).to_be_visible()
    settled(page)
    main = page.get_by_test_id("stMain")
    expect(main).to_contain_text(THEMES[index])
    text = main.inner_text()
    assert not [theme for theme in THEMES if theme != THEMES[index] and theme in text], text
    address = urlsplit(page.url)
    assert address.path == "/Neurons"
    assert {key: values[-1] for key, values in parse_qs(address.query).items()} == {
        "model": MODEL, "layer": "0", "neuron": str(index)
    }  # fmt: skip


def sidebar_pages(page: Page) -> list[str]:
    """The labels of the sidebar's page list (ui/nav.py), once it has as many entries as there are pages."""
    from playwright.sync_api import expect

    links = page.get_by_test_id("stSidebar").get_by_test_id("stPageLink")
    expect(links).to_have_count(len(PAGE_NAMES))
    return [text.strip() for text in links.all_inner_texts()]


def test_a_link_opens_its_page_even_as_a_fresh_servers_first_request(tmp_path: Path, artifacts: Path) -> None:
    """A neuron's link opens that neuron and keeps its address, also as the very first request to a fresh server,
    and the sidebar then already names the entry page "Home" (never its file name, "app"). Home is one click away,
    and a link opened in a new tab still shows its neuron."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    db_path = tmp_path / "links.db"
    prepare_database(db_path)
    links = artifacts / "links"
    links.mkdir(exist_ok=True)
    with (
        running_app(db_path, links / "streamlit.log") as url,
        chromium_context(tmp_path / "chromium-profile", viewport=VIEWPORT) as browser,
    ):
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(neuron_link(url, 2))
        shows_neuron(page, 2)
        assert sidebar_pages(page) == PAGE_NAMES
        assert "app" not in [text.strip().lower() for text in page.get_by_test_id("stSidebar").all_inner_texts()]
        page_screenshot(page, links / "1_link_as_first_request.png")

        page.get_by_test_id("stSidebar").get_by_role("link", name="Home", exact=True).click()
        expect(page.get_by_role("heading", name="Neuron explanation workbench")).to_be_visible()
        settled(page)
        expect(page.get_by_test_id("stMetric").filter(has_text="Neurons")).to_contain_text(str(len(THEMES)))
        assert urlsplit(page.url).path == "/"
        assert sidebar_pages(page) == PAGE_NAMES
        page_screenshot(page, links / "2_home.png")

        tab = browser.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(neuron_link(url, 1))
        shows_neuron(tab, 1)
        assert sidebar_pages(tab) == PAGE_NAMES
        page_screenshot(tab, links / "3_link_in_a_new_tab.png")
