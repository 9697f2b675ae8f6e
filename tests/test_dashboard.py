"""What the pages share (ui/: cached queries, tables, figures, neuron input) and the dashboard queries of core/db.py,
against a real SQLite file."""

from __future__ import annotations

import io
import math
import zipfile

import pytest

from core import db as dbmod
from core import human_eval, prompts, raters, render, scoring
from core.errors import InputError
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from ui import charts, elements, prompt_preview, queries, studies, tables

MODEL = "toy"


def _neuron(layer: int, index: int, top: int = 20, scale: float = 1.0) -> NeuronRecord:
    records = tuple(
        ActivationRecord((" a", " b", " c"), (scale * (top - rank), 0.0, -0.1 * rank)) for rank in range(top)
    )
    randoms = tuple(ActivationRecord((" x", " y"), (0.1 * rank, 0.0)) for rank in range(15))
    stats = NeuronStats(0.1, 0.2, records[0].max_activation if records else 0.0, {0.5: 0.5, 0.99: 2.0})
    return NeuronRecord(MODEL, NeuronId(layer, index), records, randoms, stats)


def _explain(db, neuron: NeuronId, text: str, format_name: str = "summary", model: str = MODEL, **fields) -> int:
    return dbmod.insert_explanation(
        db, model=model, layer=neuron.layer, neuron=neuron.index, format=format_name, explainer="openai:gpt-4",
        explanation=text, **fields,
    )  # fmt: skip


def _score(db, explanation_id: int, record: NeuronRecord, simulator: str, factor: float) -> float:
    records = record.split("valid")
    predictions = [[factor * max(0.0, a) + (i % 2) for i, a in enumerate(r.activations)] for r in records]
    scores = scoring.score_records(records, predictions)
    dbmod.save_score(db, explanation_id, simulator, "all_at_once", "valid", False, scores, predictions, "ok")
    return scores.score


# --- dashboard queries in core.db --------------------------------------------------------------------------------


def test_data_version_moves_with_every_write_and_only_then(db, db_path) -> None:
    dbmod.write_neurons(db, MODEL, [_neuron(0, 0)], source="test")
    db.conn.close()  # the last connection to close moves the log into the file: one more change, then none
    versions = []
    for _ in range(3):  # reopening and reading (SQLite creates the log and removes it again) is not a write
        again = dbmod.connect(db_path)
        versions.append(dbmod.data_version(again))
        again.conn.close()
    assert versions[0] == versions[1] == versions[2]
    first = versions[2]
    db = dbmod.connect(db_path)
    explanation_id = _explain(db, NeuronId(0, 0), "first")
    after_insert = dbmod.data_version(db)
    assert after_insert != first
    raters.add_rater(db, "r", "code-of-r")
    raters.add_rater(db, "a", "code-of-a", admin=True)
    _explain(db, NeuronId(0, 0), "second", format_name="original")
    human_eval.create_study(db, "s", "summary,original", ["0:0"], ratings_per_item=1, seed=0, model=MODEL)
    human_eval.assign_studies(db, "r", ["s"])
    item = human_eval.next_item(db, "s", "r")
    human_eval.submit_rating(db, "s", "r", item.item_id, "left")
    before_update = dbmod.data_version(db)
    records_before = dbmod.records_version(db)
    human_eval.submit_rating(db, "s", "r", item.item_id, "right")  # an update in place keeps every rowid
    assert dbmod.data_version(db) != before_update
    assert dbmod.records_version(db) == records_before  # ratings and explanations leave neuron records cached
    dbmod.write_neurons(db, MODEL, [_neuron(0, 1)], source="test")
    assert dbmod.records_version(db) != records_before
    assert explanation_id == dbmod.last_explanation_id(db) - 1
    db.conn.close()


def test_neuron_overview_best_score_per_simulator(db) -> None:
    records = [_neuron(0, index) for index in range(3)] + [_neuron(1, 0)]
    dbmod.write_neurons(db, MODEL, records, source="test")
    good = _explain(db, NeuronId(0, 1), "good")
    bad = _explain(db, NeuronId(0, 1), "bad", format_name="original")
    best = _score(db, good, records[1], "sim-a", 1.0)
    worse = _score(db, bad, records[1], "sim-a", -1.0)
    other = _score(db, bad, records[1], "sim-b", 2.0)
    rows = {(r["layer"], r["neuron"]): r for r in dbmod.neuron_overview(db, MODEL)}
    assert set(rows) == {(0, 0), (0, 1), (0, 2), (1, 0)}
    assert rows[(0, 1)]["best_score"] == pytest.approx(max(best, worse, other))
    assert rows[(0, 1)]["n_explanations"] == 2 and rows[(0, 0)]["best_score"] is None
    by_a = {r["neuron"]: r["best_score"] for r in dbmod.neuron_overview(db, MODEL, 0, "sim-a")}
    assert by_a == {0: None, 1: pytest.approx(max(best, worse)), 2: None}
    assert dbmod.score_simulators(db) == ["sim-a", "sim-b"]
    assert dbmod.neuron_indices(db, MODEL, 0) == [0, 1, 2]


def test_search_explanations_takes_the_text_literally(db) -> None:
    _explain(db, NeuronId(0, 0), "Numbers like 100% of cases")
    _explain(db, NeuronId(0, 1), "numbers in dates")
    _explain(db, NeuronId(0, 2), "snake_case names")
    _explain(db, NeuronId(0, 3), "numbers elsewhere", model="other")
    _explain(db, NeuronId(0, 4), "numbers that failed", status="failed")
    assert [r["neuron"] for r in dbmod.search_explanations(db, "NUMBERS", MODEL)] == [1, 0]
    assert len(dbmod.search_explanations(db, "numbers")) == 3
    assert [r["neuron"] for r in dbmod.search_explanations(db, "100%")] == [0]
    assert [r["neuron"] for r in dbmod.search_explanations(db, "e_c")] == [2]
    assert dbmod.search_explanations(db, "%") == dbmod.search_explanations(db, "100%")
    assert len(dbmod.search_explanations(db, "numbers", limit=1)) == 1


def test_explanations_after_costs_and_similarities(db) -> None:
    start = dbmod.last_explanation_id(db)
    first = _explain(db, NeuronId(0, 0), "one", input_tokens=100, output_tokens=7)
    _explain(db, NeuronId(0, 0), "", status="failed", error="boom")
    _explain(db, NeuronId(0, 0), "elsewhere", model="other")
    assert [r["status"] for r in dbmod.explanations_after(db, start, MODEL)] == ["ok", "failed"]
    assert [r["id"] for r in dbmod.explanations_after(db, first)] == [first + 1, first + 2]
    (cost,) = dbmod.explanation_costs(db, MODEL)
    assert {key: cost[key] for key in ("model", "format", "explainer", "input_tokens", "output_tokens")} == {
        "model": MODEL, "format": "summary", "explainer": "openai:gpt-4", "input_tokens": 100, "output_tokens": 7
    }  # fmt: skip
    assert {"tokenizer", "source", "sample", "params"} <= set(cost)
    dbmod.save_similarity(db, first, "openai", "reference text", "minilm", 0.75)
    assert dbmod.similarities_for_neuron(db, MODEL, NeuronId(0, 0)) == [
        {"explanation_id": first, "reference_kind": "openai", "embedder": "minilm", "cosine": 0.75}
    ]


# --- cached queries (ui/queries.py) ------------------------------------------------------------------------------


def test_cached_queries_are_keyed_by_their_real_inputs(db) -> None:
    dbmod.write_neurons(db, MODEL, [_neuron(0, 0), _neuron(0, 1), _neuron(1, 0)], source="test")
    src = queries.source(db)
    # Two queries with the same arguments never answer for each other: each has a cache of its own.
    assert queries.summary(src)["counts"]["neurons"] == 3
    assert queries.simulators(src) == []
    assert queries.neuron_indices(src, MODEL, 0) == [0, 1] and queries.neuron_indices(src, MODEL, 1) == [0]
    assert queries.layers(src, MODEL) == [(0, 2), (1, 1)]
    assert queries.neuron(src, MODEL, NeuronId(0, 1)) == dbmod.get_neuron(db, MODEL, NeuronId(0, 1))
    # A write moves the data version: the next run's source reads the new rows, the old one its cached answer.
    assert queries.explanations(src, MODEL, NeuronId(0, 0)) == []
    explanation_id = _explain(db, NeuronId(0, 0), "fresh")
    assert queries.explanations(src, MODEL, NeuronId(0, 0)) == []
    after = queries.source(db)
    assert after.version != src.version and after.records == src.records
    assert [row["id"] for row in queries.explanations(after, MODEL, NeuronId(0, 0))] == [explanation_id]
    assert queries.summary(after)["counts"]["explanations"] == 1
    # Each query can be cleared on its own, and documents itself with its core function's contract.
    queries.summary.clear()
    assert queries.summary(src)["counts"]["explanations"] == 1  # read again: an old version, the rows of now
    assert queries.summary.__doc__ == dbmod.summary.__doc__


# --- neuron input ------------------------------------------------------------------------------------------------


# --- tables ------------------------------------------------------------------------------------------------------


def test_explanation_table_keeps_simulators_apart() -> None:
    rows = [
        {"id": 1, "format": "summary", "explainer": "e", "input_tokens": 10, "output_tokens": 2, "explanation": "a"},
        {"id": 2, "format": "original", "explainer": "e", "reference_score": 0.4, "explanation": "b"},
    ]
    scores = [
        {"explanation_id": 1, "status": "ok", "score": 0.5, "simulator": "s1", "method": "m", "split": "valid"},
        {"explanation_id": 1, "status": "ok", "score": None, "simulator": "s2", "method": "m", "split": "valid"},
        {"explanation_id": 1, "status": "ok", "score": 0.9, "simulator": "embedding:minilm", "method": "auroc",
         "split": "valid"},
        {"explanation_id": 1, "status": "ok", "score": 0.3, "simulator": "s1", "method": "m", "split": "valid",
         "calibrated": 1},
        {"explanation_id": 2, "status": "failed", "score": None, "simulator": "s1", "method": "m", "split": "valid"},
    ]  # fmt: skip
    similarities = [{"explanation_id": 1, "cosine": 0.8}, {"explanation_id": 1, "cosine": 0.6}]
    table = tables.explanation_table(rows, scores, similarities)
    assert list(table["id"]) == [1, 2]  # one row per explanation, one column per scorer·method
    assert table["s1 · m"].iloc[0] == 0.5 and math.isnan(table["s1 · m"].iloc[1])
    assert table["s2 · m"].isna().all()
    assert table["embedding:minilm · auroc"].iloc[0] == 0.9
    assert table["s1 · m · calibrated"].iloc[0] == 0.3
    assert table["similarity"].iloc[0] == pytest.approx(0.7) and math.isnan(table["similarity"].iloc[1])
    assert table["reference_score"].iloc[1] == 0.4
    # Scores sit right after the text; a column no row fills (here: source) is left out.
    assert list(table.columns) == [
        "id", "format", "explainer", "explanation",
        "s1 · m", "s2 · m", "embedding:minilm · auroc", "s1 · m · calibrated",
        "similarity", "reference_score", "input_tokens_unknown", "output_tokens",
    ]  # fmt: skip
    config = tables.explanation_table_config(table)
    assert "embedding:minilm · auroc" in config and "s1 · m" in config
    bare = tables.explanation_table([{"id": 3, "format": "summary", "explainer": "e", "explanation": "c"}])
    assert list(bare.columns) == ["id", "format", "explainer", "explanation"]


def test_method_note_labels_scorer_metrics() -> None:
    from core.simulate import method_note

    assert "unknown" not in method_note("auroc") and "embedding" in method_note("auroc")
    assert "unknown" not in method_note("balanced_accuracy") and "chance" in method_note("balanced_accuracy")
    assert "unknown method" in method_note("nonsense")


def test_simulations_are_the_ok_scores_with_predictions() -> None:
    scores = [
        {"explanation_id": 1, "status": "ok", "predictions": [[1.0, 2.0]], "score": 0.25, "format": "summary",
         "explainer": "e", "simulator": "s", "method": "m", "split": "valid", "calibrated": False, "explanation": "x"},
        {"explanation_id": 2, "status": "failed", "predictions": None, "score": None},
        {"explanation_id": 3, "status": "ok", "predictions": [[None]], "score": None, "format": "original",
         "explainer": "e", "simulator": "s", "method": "m", "split": "test", "calibrated": True, "explanation": "y"},
    ]  # fmt: skip
    found = tables.simulations(scores)
    assert [s.explanation_id for s in found] == [1, 3]
    assert found[0].label == "#1 summary by e, simulated by s (m, valid): score 0.250"
    assert found[1].label.endswith("(m, test, calibrated): score undefined")
    assert found[0].predictions == ((1.0, 2.0),) and math.isnan(found[1].predictions[0][0])


def test_rating_excerpts_are_held_out_top_records() -> None:
    full = _neuron(0, 0, top=20)
    assert studies.rating_excerpts(full) == [full.top[i] for i in (3, 7, 11, 15, 19)]
    few = _neuron(0, 0, top=3)
    assert studies.rating_excerpts(few) == list(few.top)  # no test split yet: the first top ones


def test_job_table_and_stats_table() -> None:
    table = tables.job_table([{"id": 4, "layer": 1, "neuron": 2, "format": "summary", "status": "failed"}])
    assert table.to_dict("records")[0] == {
        "id": 4, "neuron": "1:2", "format": "summary", "sample": None, "status": "failed", "input_tokens_server": None,
        "input_tokens_cl100k": None, "output_tokens": None, "explanation": "", "error": "",
    }  # fmt: skip
    # Input tokens go under their unit: the API's count and an offline count are never one column.
    counted = tables.job_table([
        {"id": 5, "layer": 1, "neuron": 2, "format": "summary", "status": "ok", "input_tokens": 713,
         "tokenizer": "api:gpt-4o-mini"},
        {"id": 6, "layer": 1, "neuron": 2, "format": "original", "status": "ok", "input_tokens": 943,
         "tokenizer": "cl100k_base"},
    ])  # fmt: skip
    assert list(counted["input_tokens_server"].fillna(-1)) == [713, -1]
    assert list(counted["input_tokens_cl100k"].fillna(-1)) == [-1, 943]
    stats = dict(tables.stats_table(_neuron(0, 0)).itertuples(index=False))
    assert stats["q0.99 of excerpt max"] == 2.0 and stats["top excerpts"] == 20


def test_prompt_previews_count_and_report_problems() -> None:
    record = _neuron(0, 0)
    formats = ["original", "summary"]
    previews = prompt_preview.prompt_previews(record, formats, "openai:gpt-4", prompts.DEFAULT_CUTOFF, None)
    assert [p.format for p in previews] == ["original", "summary"] and all(p.error is None for p in previews)
    assert previews[0].input_tokens > 0 and previews[0].tokenizer == "cl100k_base"
    assert previews[0].text.startswith("=== system ===")
    # The 0.9 quantile is not among the neuron's stats: the natural format reports it, the original does not care.
    missing = prompts.Cutoff("quantile", 0.9)
    previews = prompt_preview.prompt_previews(record, ["original", "summary"], "openai:gpt-4", missing, "none")
    assert previews[0].error is None and "0.9 quantile" in previews[1].error and previews[1].input_tokens is None
    with pytest.raises(InputError):
        prompt_preview.prompt_previews(record, ["summary"], "gpt-4", prompts.DEFAULT_CUTOFF, None)


def test_preview_table_compares_the_formats() -> None:
    previews = [
        prompt_preview.PromptPreview("original", "a", 900, "cl100k_base"),
        prompt_preview.PromptPreview("summary", "b", 300, "cl100k_base"),
        prompt_preview.PromptPreview("highlight", "", None, "cl100k_base", "no cutoff"),
    ]
    table = prompt_preview.preview_table(previews)
    assert list(table["format"]) == ["original", "summary", "highlight"]
    assert table["original_over_format"].tolist()[:2] == [1.0, 3.0] and math.isnan(table["original_over_format"][2])
    assert list(table["problem"]) == ["", "", "no cutoff"]
    assert list(table["input_tokens_cl100k"][:2]) == [900, 300]  # the unit is in the name


def test_score_filter_and_its_message() -> None:
    import pandas as pd

    table = pd.DataFrame({"layer": [3, 3, 3], "neuron": [0, 1, 2], "best_score": [0.2, math.nan, -0.07]})
    assert list(tables.filter_by_score(table, -1.0)["neuron"]) == [0, 2]  # unscored neurons never pass
    assert list(tables.filter_by_score(table, 0.2)["neuron"]) == [0]
    assert tables.filter_by_score(table, 0.5).empty
    assert tables.filter_message(table, 0.5, 3) == (
        "No neuron of layer 3 has a best score of at least 0.50: 2 are scored, the best at 0.20. "
        "Lower the threshold in the sidebar."
    )
    assert "has a score from this simulator yet" in tables.filter_message(table.iloc[[1]], 0.5, 3)


def test_in_format_order() -> None:
    import pandas as pd

    frame = pd.DataFrame({"format": ["mine", "highlight", "original", "avhs"], "n": [1, 2, 3, 4]})
    assert list(tables.in_format_order(frame)["format"]) == ["original", "highlight", "avhs", "mine"]
    assert list(tables.in_format_order(frame)["n"]) == [3, 2, 4, 1]
    assert tables.in_format_order(frame.iloc[0:0]).empty


# --- small formatting helpers ------------------------------------------------------------------------------------


def test_texts() -> None:
    assert studies.progress_text(11, 29) == ("12 of 40", 11 / 40)
    assert studies.progress_text(0, 0) == ("nothing to rate", 1.0)
    assert studies.rate_text(0.625, [0.48, 0.74]) == "62% (48%–74%)"
    assert studies.rate_text(None) == "–" and studies.rate_text(0.5) == "50%"
    assert elements.neuron_label(7, math.nan) == "7"
    assert elements.neuron_label(7, 0.456) == "7  (best score 0.46)"
    assert render.escape_markdown("bad *x*\n  [y](z) $1") == "bad \\*x\\* \\[y\\]\\(z\\) \\$1"


def test_pairs_table_is_narrow_and_reads_the_interval() -> None:
    counts = {"n_ratings": 9, "wins_a": 5, "wins_b": 3, "ties": 0, "both_bad": 1, "decisive": 8}
    rows = [
        {"rater": "r", "arm_a": "a", "arm_b": "b", **counts, "win_rate": 0.625, "wilson_ci": [0.306, 0.863],
         "binomial_p": 0.73, "tie_share": 0.0, "both_bad_share": 0.11},
        {"rater": "r", "arm_a": "a", "arm_b": "c", **counts, "win_rate": None, "wilson_ci": [None, None],
         "binomial_p": None, "tie_share": 0.0, "both_bad_share": 0.0},
    ]  # fmt: skip
    table = studies.pairs_table(rows)
    assert list(table.columns) == studies.PAIR_COLUMNS
    assert table.iloc[0].to_dict() == {
        "rater": "r", "arm_a": "a", "arm_b": "b", **{k: v for k, v in counts.items() if k != "decisive"},
        "win_rate_a": "62% (31%–86%)", "binomial_p": 0.73,
    }  # fmt: skip
    assert table["win_rate_a"].iloc[1] == "–" and math.isnan(table["binomial_p"].iloc[1])
    overall = studies.pairs_table([{k: v for k, v in rows[0].items() if k != "rater"}])
    assert "rater" not in overall.columns
    assert studies.pairs_table([]).empty


def test_download_of_one_file_or_a_zip() -> None:
    assert elements.download_of({"s.json": b"{}"}, "s", "json") == ("s.json", b"{}", "application/json")
    name, data, mime = elements.download_of({"a.csv": b"1", "b.json": b"2"}, "s", "csv")
    assert (name, mime) == ("s_csv.zip", "application/zip")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {n: archive.read(n) for n in archive.namelist()} == {"a.csv": b"1", "b.json": b"2"}


# --- figures -----------------------------------------------------------------------------------------------------


def test_figures() -> None:
    record = _neuron(0, 0)
    histogram = charts.activation_histogram(record)
    assert [trace.name for trace in histogram.data] == ["random excerpts", "top excerpts"]
    assert sorted(shape.x0 for shape in histogram.layout.shapes) == [0.5, 2.0]
    # Overlaid bars share their bins, the two sets differ in colour, and the log axis is labelled by decades.
    assert {trace.bingroup for trace in histogram.data} == {"activations"}
    assert len({trace.marker.color for trace in histogram.data}) == 2
    assert histogram.layout.yaxis.type == "log" and histogram.layout.yaxis.dtick == 1
    pairs = [
        {"arm_a": "a", "arm_b": "b", "win_rate": 0.75, "wilson_ci": [0.5, 0.9]},
        {"arm_a": "a", "arm_b": "c", "win_rate": None, "wilson_ci": [None, None]},
    ]
    bars = charts.win_rate_figure(pairs).data[0]
    assert list(bars.y) == ["a over b"] and list(bars.error_x.arrayminus) == [0.25]
    assert list(bars.error_x.array) == pytest.approx([0.15])
    strengths = {
        "arms": [{"arm": "a", "strength": 0.5, "ci": [0.1, 0.9]}, {"arm": "b", "strength": -0.5, "ci": [-1, 0]}]
    }
    assert list(charts.bradley_terry_figure(strengths).data[0].y) == ["a", "b"]
    import pandas as pd

    frame = pd.DataFrame({"format": ["summary", "original", "summary", "mine"], "score": [0.1, 0.2, None, 0.3]})
    boxes = charts.distribution_figure(frame, "score", "score").data
    assert [box.name for box in boxes] == ["original", "summary", "mine"]  # registry order, then the rest
    assert list(boxes[1].y) == [0.1]
