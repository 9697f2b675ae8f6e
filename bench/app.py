"""Server-side speed of the app on a realistic database: the neuron view, the Rate page and a rating write, each next
to the bare query it stands on, measured side by side in one run.

    .venv/bin/python -m bench.app                     # 7 layers × 1536 neurons (10,752), N = 30 runs each
    .venv/bin/python -m bench.app --runs 50 --rebuild

The database holds neurons of MiniLM's width (1536 per layer) with 20 top and 20 random records of 64 tokens each,
excerpts drawn from a shared pool as a real corpus would give them; 300 neurons explained under two formats with
scored simulations; a study of them with an admin, five raters and some ratings already in. It is built once into
.cache/ and reused; every run works on a fresh copy, so the ratings written here never pile up.

Pages run with streamlit.testing.v1.AppTest, which executes the page script in this process as the server does
for a browser session (widgets, cached queries, HTML rendering, figures), without the websocket. The page figures
are script reruns within one session, as when a person picks another neuron or clicks a choice: that is the
server-side render time. Opening a new AppTest session costs the harness about 100 ms more (it scans every installed
package for components, which a server does once at start); a new session is shown last, next to an empty page, for
scale. Every figure is measured after a warm-up; medians and p95 are printed next to the targets, and the plain
queries the pages stand on (db.get_neuron, …) are measured in the same run as baselines.

Caches: the app keys its query caches on the database's data version, so any write (a rating!) invalidates all of
them. The neuron view is therefore measured with warm caches (the model's summary, layers and neuron list already
cached, as between two writes) and cold (every cache cleared before each run, as for the first view after a write).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent

import streamlit as st  # noqa: E402
import streamlit.logger  # noqa: E402
from streamlit.testing.v1 import AppTest  # noqa: E402

# Outside a server, cached functions (defined on import of ui.queries) and cache clears warn that there is no
# runtime or script context: expected here, and noise in the report.
for _name in ("runtime.scriptrunner_utils.script_run_context", "runtime.caching.cache_data_api"):
    streamlit.logger.get_logger(f"streamlit.{_name}").disabled = True

from core import config, human_eval, raters, scoring  # noqa: E402
from core import db as dbmod  # noqa: E402
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats  # noqa: E402
from ui.session import RATER_KEY  # noqa: E402

MODEL = "bench-minilm-shaped"
PAGES = REPO_ROOT / "pages"
# Change when the recipe below changes, so that an old cached database is not reused.
RECIPE = 1
EXCERPT_TOKENS = 64
TOP_K = RANDOM_K = 20
POOL_EXCERPTS = 40_000
EXPLAINED = 300
RATERS = ("rater-1", "rater-2", "rater-3", "rater-4", "rater-5")
RATER_CODE_SUFFIX = "-access-code"
ADMIN = "bench-admin"
STUDY = "bench study"
PREFILLED_RATINGS = 200
WRITE_BATCH = 256
TARGETS_MS = {"neuron view": 300.0, "rating write": 50.0}
SYLLABLES = (
    "ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pra", "el", "an", "or", "is", "um", "ex", "ter", "ing", "ed",
)  # fmt: skip
COMMON = ("the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "was", "on", "with", "as", "by", "at")


# ---------------------------------------------------------------------------------------------------------------
# The database
# ---------------------------------------------------------------------------------------------------------------


def _vocabulary(rng: random.Random, size: int = 3000) -> list[str]:
    words = {"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(size * 2)}
    tokens = sorted(words)[:size]
    # Mostly word-initial tokens with a space, some continuations, punctuation and new lines, as a BPE gives.
    return [f" {w}" for w in tokens] + tokens[: size // 4] + [" " + c for c in COMMON] * 20 + [".", ",", "\n", "'s"]


def _excerpt_pool(seed: int) -> list[tuple[str, ...]]:
    rng = random.Random(seed)
    vocabulary = _vocabulary(rng)
    return [tuple(rng.choices(vocabulary, k=EXCERPT_TOKENS)) for _ in range(POOL_EXCERPTS)]


def _neuron(pool: list[tuple[str, ...]], layer: int, index: int, rng: np.random.Generator) -> NeuronRecord:
    """A GELU-like neuron: small activations everywhere, one or two strong tokens in each top excerpt."""
    picks = rng.choice(len(pool), size=TOP_K + RANDOM_K, replace=False)
    values = np.maximum(rng.normal(0.0, 0.25, size=(TOP_K + RANDOM_K, EXCERPT_TOKENS)), -0.17)
    peak = float(rng.uniform(2.0, 8.0))
    for row in range(TOP_K):
        spots = rng.choice(EXCERPT_TOKENS, size=2, replace=False)
        values[row, spots[0]] = peak * (1 - 0.02 * row)
        values[row, spots[1]] = peak * rng.uniform(0.1, 0.6)
    values = np.round(values, 4)
    records = [ActivationRecord(pool[p], tuple(v.tolist())) for p, v in zip(picks, values, strict=True)]
    top = tuple(sorted(records[:TOP_K], key=lambda r: -r.max_activation))
    random_records = tuple(records[TOP_K:])
    excerpt_max = np.sort(values.max(axis=1))
    quantiles = {q: float(np.quantile(excerpt_max, q)) for q in config.QUANTILES}
    stats = NeuronStats(float(values.mean()), float(values.var()), float(values.max()), quantiles)
    return NeuronRecord(MODEL, NeuronId(layer, index), top, random_records, stats)


def _explain_and_score(db, neurons: list[NeuronId], seed: int) -> None:
    """Two formats per neuron, each with a stored valid-split simulation and its score."""
    rng = np.random.default_rng(seed)
    for neuron_id in neurons:
        record = dbmod.get_neuron(db, MODEL, neuron_id)
        valid = record.split("valid")
        for variant, (format_name, text) in enumerate(
            (
                ("summary", f"the token family number {neuron_id.index % 97}, mostly at the start of a phrase"),
                ("original", f"words ending in -{SYLLABLES[neuron_id.index % len(SYLLABLES)]} and nearby names"),
            )
        ):
            explanation_id = dbmod.insert_explanation(
                db,
                model=MODEL,
                layer=neuron_id.layer,
                neuron=neuron_id.index,
                format=format_name,
                explainer="openai:gpt-4o-mini",
                explanation=text,
                input_tokens=int(rng.integers(900, 2600)),
                output_tokens=int(rng.integers(8, 30)),
            )
            noise = 1.5 + variant
            predictions = [
                np.clip(np.maximum(np.array(r.activations), 0) + rng.normal(0, noise, len(r.activations)), 0, 10)
                .round(2)
                .tolist()
                for r in valid
            ]
            scores = scoring.score_records(valid, predictions)
            dbmod.save_score(
                db, explanation_id, "hf:bench-sim", "all_at_once", "valid", False, scores, predictions, "ok"
            )


def build_database(path: Path, layers: int, per_layer: int, seed: int) -> None:
    """Write the whole benchmark database to `path` (a new file)."""
    started = time.perf_counter()
    pool = _excerpt_pool(seed)
    rng = np.random.default_rng(seed)
    db = dbmod.connect(path)
    try:
        ids = [NeuronId(layer, index) for layer in range(layers) for index in range(per_layer)]
        for start in range(0, len(ids), WRITE_BATCH):
            batch = [_neuron(pool, n.layer, n.index, rng) for n in ids[start : start + WRITE_BATCH]]
            dbmod.write_neurons(db, MODEL, batch, source="bench")
            done = start + len(batch)
            if done % (8 * WRITE_BATCH) == 0 or done == len(ids):
                print(f"  neurons written: {done:,} of {len(ids):,}", flush=True)
        explained = sorted(random.Random(seed).sample(ids, EXPLAINED), key=lambda n: (n.layer, n.index))
        _explain_and_score(db, explained, seed)
        raters.add_rater(db, ADMIN, f"{ADMIN}{RATER_CODE_SUFFIX}", admin=True)
        for name in RATERS:
            raters.add_rater(db, name, f"{name}{RATER_CODE_SUFFIX}")
        human_eval.create_study(
            db, STUDY, "summary,original", [str(n) for n in explained], ratings_per_item=2, seed=seed, model=MODEL
        )
        for name in RATERS:
            human_eval.assign_studies(db, name, [STUDY])
        choices = random.Random(seed + 1)
        for number in range(PREFILLED_RATINGS):
            rater = RATERS[number % len(RATERS)]
            item = human_eval.next_item(db, STUDY, rater)
            human_eval.submit_rating(
                db, STUDY, rater, item.item_id, choices.choice(item.choices), seconds=choices.uniform(5, 60)
            )
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.conn.close()
    size = path.stat().st_size / 2**20
    print(f"  built in {time.perf_counter() - started:.0f} s: {len(ids):,} neurons, {size:.0f} MiB")


def cached_database(layers: int, per_layer: int, seed: int, rebuild: bool) -> Path:
    """The benchmark database under .cache/, built (into a temporary file, renamed when complete) if missing."""
    path = config.cache_dir() / f"bench_app_r{RECIPE}_{layers}x{per_layer}_s{seed}.db"
    if path.exists() and not rebuild:
        print(f"database: {path} (reused; --rebuild to build it again)")
        return path
    print(f"database: building {path}")
    partial = path.with_suffix(".partial")
    for stale in (partial, Path(f"{partial}-wal"), Path(f"{partial}-shm")):
        stale.unlink(missing_ok=True)
    build_database(partial, layers, per_layer, seed)
    partial.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One line of the report: milliseconds per run of one measure, and the target it is held to (if any)."""

    name: str
    times: tuple[float, ...]
    target: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p95(self) -> float:
        return float(np.percentile(self.times, 95))


def timed(run: Callable[[int], object], runs: int, warmup: int) -> tuple[float, ...]:
    """Milliseconds of run(i) for i in range(runs), after `warmup` unmeasured calls run(runs), run(runs + 1), …"""
    for i in range(warmup):
        run(runs + i)
    times = []
    for i in range(runs):
        started = time.perf_counter()
        run(i)
        times.append((time.perf_counter() - started) * 1000)
    return tuple(times)


def _check(at: AppTest) -> AppTest:
    if at.exception:
        raise RuntimeError(f"the page raised: {[e.message for e in at.exception]}")
    if at.error:
        raise RuntimeError(f"the page showed an error: {[e.value for e in at.error]}")
    return at


# Widget keys of pages/1_Neurons.py: setting them between runs is what choosing in the sidebar pickers does.
NEURON_LAYER_KEY, NEURON_INDEX_KEY = "neurons_layer", "neurons_neuron"


def neuron_session(neuron_id: NeuronId, timeout: float) -> AppTest:
    """A session of the neuron view opened by deep link (?model=…&layer=…&neuron=…), not yet run."""
    at = AppTest.from_file(str(PAGES / "1_Neurons.py"), default_timeout=timeout)
    at.query_params.update({"model": MODEL, "layer": str(neuron_id.layer), "neuron": str(neuron_id.index)})
    return at


def show_neuron(at: AppTest, neuron_id: NeuronId) -> None:
    """Rerun the neuron view with another neuron picked, and check that it is the one shown."""
    at.session_state[NEURON_LAYER_KEY] = neuron_id.layer
    at.session_state[NEURON_INDEX_KEY] = neuron_id.index
    _check(at.run())
    shown = (at.query_params.get("layer"), at.query_params.get("neuron"))
    if shown != (str(neuron_id.layer), str(neuron_id.index)):
        raise RuntimeError(f"asked for neuron {neuron_id}, the page shows {shown}")


def rate_session(db, rater: str, timeout: float) -> AppTest:
    """A session of the Rate page with `rater` signed in (signing in, a scrypt hash, is not measured), not yet run."""
    at = AppTest.from_file(str(PAGES / "3_Rate.py"), default_timeout=timeout)
    at.session_state[RATER_KEY] = raters.authenticate(db, rater, f"{rater}{RATER_CODE_SUFFIX}")
    return at


def measure(db_path: Path, runs: int, warmup: int, seed: int) -> list[Figure]:
    """Every figure of the report, baselines first."""
    os.environ[config.ENV_DB] = str(db_path)
    db = dbmod.connect(db_path)
    rng = random.Random(seed)
    layers = dbmod.list_layers(db, MODEL)
    # Half the neurons shown are explained ones (explanations, scores and simulations: the fullest view).
    explained = sorted({NeuronId(row["layer"], row["neuron"]) for row in dbmod.list_explanations(db, MODEL)})
    total, timeout = runs + warmup, 120.0

    def pick() -> list[NeuronId]:
        chosen = rng.sample(explained, total // 2)
        while len(chosen) < total:
            layer, size = rng.choice(layers)
            chosen.append(NeuronId(layer, rng.randrange(size)))
        rng.shuffle(chosen)
        return chosen

    figures = []
    neurons = pick()
    figures.append(Figure("db.get_neuron", timed(lambda i: dbmod.get_neuron(db, MODEL, neurons[i]), runs, warmup)))
    figures.append(Figure("db.summary", timed(lambda i: dbmod.summary(db), runs, warmup)))
    first_layer = layers[0][0]
    overview = timed(lambda i: dbmod.neuron_overview(db, MODEL, first_layer), runs, warmup)
    figures.append(Figure(f"db.neuron_overview (one layer, {layers[0][1]:,} neurons)", overview))

    # The neuron view: one session, another neuron picked before each run. Warm: the model's summary, layers and
    # neuron list are cached, as between two writes; cold: every cache cleared first, as after any write.
    session = _check(neuron_session(explained[0], timeout).run())
    st.cache_data.clear()
    neurons = pick()
    warm = timed(lambda i: show_neuron(session, neurons[i]), runs, warmup)
    figures.append(Figure("neuron view, warm caches", warm, "neuron view"))
    neurons = pick()

    def cold(i: int) -> None:
        st.cache_data.clear()
        show_neuron(session, neurons[i])

    figures.append(Figure("neuron view, cold caches (after any write)", timed(cold, runs, warmup), "neuron view"))

    # The Rate page of a signed-in rater: a rerun showing their current item, then a click on a choice (the rating
    # is written and the next item shown).
    rate = _check(rate_session(db, RATERS[0], timeout).run())
    figures.append(Figure("Rate page, current item", timed(lambda i: _check(rate.run()), runs, warmup)))
    click = timed(lambda i: _check(rate.button(key="rate_left").click().run()), runs, warmup)
    figures.append(Figure("Rate page, rate and show the next item", click))

    # The write alone. next_item (which reserves the item to rate) is timed apart, as the write's companion.
    writer, next_times, write_times = RATERS[2], [], []
    for _ in range(total):
        started = time.perf_counter()
        item = human_eval.next_item(db, STUDY, writer)
        next_times.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        human_eval.submit_rating(db, STUDY, writer, item.item_id, "left", confidence=3, comment="bench", seconds=12.5)
        write_times.append((time.perf_counter() - started) * 1000)
    figures.append(Figure("human_eval.next_item", tuple(next_times[warmup:])))
    figures.append(Figure("rating write (human_eval.submit_rating)", tuple(write_times[warmup:]), "rating write"))

    # For scale: what AppTest costs to open a new session of a page that only writes a title (it scans every
    # installed package for components, which a server does once at start), and a new neuron-view session.
    empty = "import streamlit as st\nst.title('empty')\n"
    fresh = timed(lambda i: _check(AppTest.from_string(empty, default_timeout=timeout).run()), runs, warmup)
    figures.append(Figure("new AppTest session, empty page", fresh))
    neurons = pick()
    deep_link = timed(lambda i: _check(neuron_session(neurons[i], timeout).run()), runs, warmup)
    figures.append(Figure("new AppTest session, neuron view by link", deep_link))
    db.conn.close()
    return figures


def report(figures: list[Figure]) -> str:
    """The table of medians and p95 against the targets, and the page ÷ query ratios."""
    lines = [f"{'measure':<52}{'n':>4}{'median ms':>11}{'p95 ms':>9}{'target ms':>11}  verdict"]
    for figure in figures:
        goal = TARGETS_MS.get(figure.target) if figure.target else None
        verdict = "" if goal is None else ("ok" if figure.median < goal else "OVER TARGET")
        goal_text = "" if goal is None else f"< {goal:.0f}"
        lines.append(
            f"{figure.name:<52}{len(figure.times):>4}{figure.median:>11.1f}{figure.p95:>9.1f}{goal_text:>11}  {verdict}"
        )
    by_name = {figure.name: figure.median for figure in figures}
    query = by_name["db.get_neuron"]
    lines.append("")
    for name in ("neuron view, warm caches", "neuron view, cold caches (after any write)"):
        lines.append(f"{name} ÷ db.get_neuron: {by_name[name] / query:.0f}× (render overhead over the query)")
    return "\n".join(lines)


# Try your own text (Neurons page): the bundled model on CPU, about 100 tokens a run (docs/METHOD.md §10).
TARGETS_MS["own text"] = 1000.0


def measure_own_text(runs: int, warmup: int) -> list[Figure]:
    """core.activations.activate_text with the bundled model on CPU, loaded once as the server's st.cache_resource
    keeps it (not timed), on a different text of about 100 tokens each run: the work behind Try your own text."""
    from core.activations import activate_text
    from core.corpus import load_corpus
    from core.models import load_subject_model

    subject = load_subject_model("default", "cpu")
    texts, ids = [], []
    for document in load_corpus("default").documents():
        ids += subject.tokenizer(document, add_special_tokens=False)["input_ids"]
        while len(ids) >= 100 and len(texts) < runs + warmup:
            texts.append(subject.tokenizer.decode(ids[:100]))
            del ids[:100]
        if len(texts) == runs + warmup:
            break
    times = timed(lambda i: activate_text(subject, 3, texts[i]), runs, warmup)
    return [Figure("own text: default model on CPU, ~100 tokens, layer 3", times, "own text")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=7)
    parser.add_argument("--per-layer", type=int, default=1536)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rebuild", action="store_true", help="build the cached database again")
    args = parser.parse_args(argv)
    if args.layers * args.per_layer < 10_000:
        print(f"note: {args.layers * args.per_layer:,} neurons; the targets are for at least 10,000")
    cached = cached_database(args.layers, args.per_layer, args.seed, args.rebuild)
    with tempfile.TemporaryDirectory(prefix="bench_app_") as folder:
        db_path = Path(folder) / "bench.db"
        shutil.copyfile(cached, db_path)
        figures = measure(db_path, args.runs, args.warmup, args.seed)
    figures += measure_own_text(args.runs, args.warmup)
    print(f"{args.runs} runs each after {args.warmup} warm-up runs; pages run with AppTest in this process")
    print(report(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
