"""Results: per prompt format, the automated scores and token costs; per study, the human preferences.

Study results name the arms and the exports hold every item unblinded, so the study part is for admins only: a
rater who could read them would no longer be blind.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import blinding, explain, export, human_eval, pricing, render, score_import, scoring
from core.simulate import IMPORTED_METHOD, method_note
from ui import charts, elements, nav, queries, signin, studies, tables

nav.sidebar("Results")
st.title("Results")


def _formats(src: queries.Source) -> None:
    if queries.hidden_count(src):
        st.caption(
            "Explanations of neurons in open studies are left out here while those studies run; admins who sign "
            "in on the Studies tab see everything."
        )
    costs = queries.explanation_costs(src)
    if costs.empty:
        st.info("No explanations yet: explain some neurons on the Explain page.")
        return
    model = st.selectbox("Model", sorted(costs["model"].unique()), key="results_model")
    costs = costs[costs["model"] == model]
    rows = all_rows = queries.score_rows(src, model)
    sets = tables.explanation_sets(costs)
    scorer = None
    st.caption(
        render.escape_markdown(
            f"{len(sets)} explanation set(s): one table per explainer and source, never pooled "
            "(`python -m core explanations` lists them)."
        )
    )
    scorers = tables.scorers(rows)
    st.subheader("Automated scores")
    if scorers:
        scorer = st.selectbox(
            "Scorer · method",
            scorers,
            key="results_simulator",
            format_func=tables.scorer_label,
            help="Scores of different scorers, simulators or methods never mix (docs/METHOD.md §10)",
        )
        published = score_import.published_means(rows)
        rows = tables.rows_of_scorer(rows, scorer)
        simulator, _, method = scorer.partition(" · ")
        if tables.scorer_kind(simulator) == "simulation":
            what = "Correlation of simulated and real activations on the valid split (docs/METHOD.md §4)"
        else:
            what = render.escape_markdown(f"{method_note(method)}, on the valid split (docs/METHOD.md §10)")
        st.caption(f"{what}; mean over neurons with a 95% bootstrap CI.")
        for explanation_set in sets:
            _scores_of_set(explanation_set, explanation_set.rows(rows), simulator, method)
        if not published.empty and method != IMPORTED_METHOD:
            st.markdown("**Published scores, imported** (not computed here)")
            st.caption(
                "Per-neuron scores published with the paper and imported with `python -m core import-scores`; means "
                "recomputed from the file over the neurons it holds. They compare with the table above only for the "
                "same neurons, explainer and the paper's all-at-once simulation (docs/METHOD.md §5)."
            )
            st.dataframe(published, hide_index=True, width="stretch", column_config=tables.FORMAT_SUMMARY_CONFIG)
    else:
        st.info("No explanation of this model has been scored yet (score them on the Explain page or the CLI).")
    st.subheader("Token cost")
    prices = pricing.load_prices()
    st.caption("Input and output tokens per explanation, counted separately (docs/METHOD.md §4).")
    for index, explanation_set in enumerate(sets):
        group = explanation_set.rows(costs)
        st.markdown(f"**{render.escape_markdown(explanation_set.label)}** · token cost")
        st.dataframe(
            explain.cost_table(group.to_dict("records")), width="stretch", column_config=tables.COST_TABLE_CONFIG
        )
        if scorer is not None:
            st.caption(
                render.escape_markdown(
                    f"With scoring by {tables.scorer_label(scorer)}: its tokens as recorded (server usage), dollars "
                    + ("from " + prices.source if prices.source else "once prices.toml lists the models")
                    + ", and the score per 1k tokens of explaining and scoring."
                )
            )
            st.dataframe(
                tables.cost_with_scoring(explanation_set.rows(all_rows), scorer, prices),
                hide_index=True,
                width="stretch",
                column_config=tables.SCORING_COST_CONFIG,
            )
        left, right = st.columns(2)
        for column, kind in ((left, "input"), (right, "output")):
            column.plotly_chart(
                charts.distribution_figure(group, f"{kind}_tokens", f"{kind} tokens"),
                width="stretch",
                key=f"results_cost_{kind}_{index}",
            )


def _scores_of_set(explanation_set: tables.ExplanationSet, rows: pd.DataFrame, simulator: str, method: str) -> None:
    """One explainer's explanations from one source, scored by one simulator and method: the per-format table,
    their distribution and the paired differences from original."""
    scored = rows[(rows["simulator"] == simulator) & rows["score"].notna()]
    scorer = render.escape_markdown(f"scores by {simulator} · {method_note(method)}")
    st.markdown(f"**{render.escape_markdown(explanation_set.label)}** · {scorer}")
    if not (rows["simulator"] == simulator).any():
        st.caption("None of these explanations has a score from this simulator and method.")
        return
    st.dataframe(
        tables.format_summary(rows, simulator),
        hide_index=True,
        width="stretch",
        column_config=tables.FORMAT_SUMMARY_CONFIG,
    )
    if not scored.empty:
        key = f"results_scores_{explanation_set.explainer}_{explanation_set.source}"
        st.plotly_chart(charts.distribution_figure(scored, "score", "score"), width="stretch", key=key)
    if "original" in set(scored["format"]) and scored["format"].nunique() > 1:
        st.markdown(
            "**Each format against original**, on the neurons both have (paired by neuron) · "
            + render.escape_markdown(f"{explanation_set.label} · {simulator} · {method}")
        )
        st.dataframe(
            tables.in_format_order(scoring.paired_format_differences(rows, "original", simulator=simulator)),
            hide_index=True,
            width="stretch",
            column_config=tables.DIFFERENCE_TABLE_CONFIG,
        )


def _state(db, study: human_eval.Study) -> None:
    """The study's state, who may rate it, and the admin's switch between open and closed."""
    left, right = st.columns([3, 1])
    state = "open: taking ratings; its neurons' explanations are hidden from everyone but admins"
    if not study.is_open:
        state = "closed: no more ratings; its neurons' explanations are visible to everyone"
    left.markdown(f"**State:** {state}")
    raters: list[str] = next((row["raters"] for row in human_eval.list_studies(db) if row["name"] == study.name), [])
    assigned = ", ".join(raters) or "nobody yet (`python -m core rater assign --name NAME --studies STUDY`)"
    left.caption(
        render.escape_markdown(f"Assigned raters: {assigned}")
        + (" · admins may rate it too" if study.allow_admin_ratings else "")
    )
    verb = "Close study" if study.is_open else "Open study again"
    if right.button(verb, key="results_study_state"):
        human_eval.set_state(db, study.name, "closed" if study.is_open else "open")
        st.rerun()


def _tells(items: list[dict]) -> None:
    tells = blinding.study_tells(items)
    if tells:
        st.warning(
            "**Text tells**: raters could tell the arms apart without reading the neuron:\n"
            + "\n".join(f"- {render.escape_markdown(tell.message)}" for tell in tells)
        )


def _study(db, src: queries.Source, name: str) -> None:
    _state(db, human_eval.get_study(db, name))
    _tells(human_eval.study_items(db, name))
    summary = queries.study_summary(src, name)
    status = queries.study_status(src, name)
    _plan(summary)
    if summary.get("arm_sources"):
        st.markdown("**Arms**: the one explainer and source each arm resolved to")
        st.dataframe(pd.DataFrame(summary["arm_sources"]), hide_index=True, width="stretch")
    arm_a, arm_b = summary["primary_pair"]
    bias = summary["position_bias"]
    gold = summary.get("n_gold_ratings") or 0
    primary = summary["primary"]
    p_value = "–" if primary["p_value"] is None else f"p = {primary['p_value']:.3g}"
    elements.metric_row(
        [
            (
                f"{arm_a} over {arm_b}, per neuron",
                f"{studies.rate_text(primary['estimate'], primary['ci'])} · {p_value}",
                primary["method"],
            ),
            (
                "per rating (descriptive)",
                studies.rate_text(summary["win_rate"], summary["wilson_ci"]),
                "Share of decisive ratings, Wilson interval: treats every rating as independent, which ratings of "
                "one neuron are not.",
            ),
            (
                "ratings",
                f"{summary['n_ratings']:,} of {status['wanted_ratings']:,}",
                "Ratings of the study's items" + (f"; {gold:,} attention-check ratings come on top." if gold else "."),
            ),
            ("neurons", f"{primary['n_units']}"),
            ("raters", f"{summary['n_raters']}"),
            ("ties · both bad", f"{summary['ties']} · {summary['both_bad']}"),
            ("left chosen (position bias)", studies.rate_text(bias["rate"], bias["ci"])),
        ]
    )
    st.caption(
        "The headline is the neuron-level test: each neuron's share of decisive ratings won, averaged over neurons, "
        "with a cluster-bootstrap 95% CI and a sign test over neurons. The per-rating figure beside it counts every "
        "rating as an independent trial; ratings of one neuron share its explanations, so that interval is too "
        "narrow and its p-value too small. Which side each rater saw is drawn per rater and item, so position bias "
        "cannot pass for preference." + (f" Note: {primary['note']}" if primary.get("note") else "")
    )
    secondary = summary.get("secondary") or {}
    if secondary.get("win_probability") is not None:
        st.caption(
            render.escape_markdown(
                f"Secondary: {secondary['method']}: win probability "
                f"{studies.rate_text(secondary['win_probability'], secondary['win_probability_ci'])}"
                + (f"; {secondary['note']}" if secondary.get("note") else "")
            )
        )
    pairs = summary["pairs"]
    if any(pair["win_rate"] is not None for pair in pairs):
        st.plotly_chart(charts.win_rate_figure(pairs), width="stretch")
    st.dataframe(studies.pairs_table(pairs), hide_index=True, width="stretch", column_config=studies.PAIRS_TABLE_CONFIG)
    if summary["bradley_terry"]:
        st.markdown("**Bradley–Terry strengths**")
        if summary["bradley_terry"].get("warning"):
            st.warning(render.escape_markdown(summary["bradley_terry"]["warning"]))
        st.plotly_chart(charts.bradley_terry_figure(summary["bradley_terry"]), width="stretch")
    # One block under the other: side by side, a narrow window cut the interval of the figure short.
    st.markdown("**Humans vs automated scores**")
    versus = summary["human_vs_automated"]
    if versus:
        elements.metric_row(
            [("humans chose the higher-scored explanation", studies.rate_text(versus["rate"], versus["ci"]))]
        )
        ties = versus.get("n_score_ties") or 0
        st.caption(
            f"{versus['n']} decisive ratings of items whose explanations both have scores, and they differ"
            + (f"; {ties} more of items whose two scores are equal: a tie of the scores, left out." if ties else ".")
        )
    else:
        st.caption("No rated item has scores for both explanations.")
    automated = studies.automated_table(summary.get("automated") or [])
    if not automated.empty:
        st.caption(
            "Chance-corrected, one score kind at a time: Cohen's κ between each item's human majority and the sign "
            "of the score difference; the slope of a logistic regression of the human choice on the score "
            "difference (standard errors clustered by neuron); Kendall's τ between arms' Bradley–Terry strengths "
            "and their mean score (three or more arms)."
        )
        st.dataframe(automated, hide_index=True, width="stretch")
    st.markdown("**Agreement between raters** (items rated by two or more)")
    st.dataframe(
        pd.DataFrame(list(summary["agreement"].items()), columns=["measure", "value"]),
        hide_index=True,
        width="content",
        column_config=studies.MEASURE_TABLE_CONFIG,
    )
    st.markdown("**Per rater**")
    st.dataframe(pd.DataFrame(status["raters"]), hide_index=True, width="stretch")
    st.dataframe(
        studies.pairs_table(summary["per_rater"]),
        hide_index=True,
        width="stretch",
        column_config=studies.PAIRS_TABLE_CONFIG,
    )
    if summary["gold"]["per_rater"]:
        st.markdown("**Attention checks**")
        st.dataframe(pd.DataFrame(summary["gold"]["per_rater"]), hide_index=True, width="stretch")
    _quality(summary)
    _power(src, name, arm_a, arm_b)
    st.markdown("**Downloads** (unblinded: arms, formats, explainers and every rating)")
    stem = export.file_stem(name)
    for column, fmt in zip(st.columns(len(export.EXPORT_FORMATS)), export.EXPORT_FORMATS, strict=True):
        file_name, data, mime = elements.download_of(queries.export_files(src, name, fmt), stem, fmt)
        column.download_button(fmt, data, file_name=file_name, mime=mime, key=f"results_download_{fmt}")


def _plan(summary: dict) -> None:
    """The frozen plan and, before its target, the interim banner."""
    stored, interim = summary.get("plan"), summary.get("interim")
    if stored is None:
        st.info(
            "This study has no analysis plan, so its results are exploratory. Fix one before the first rating "
            "with `python -m core study plan STUDY --target-neurons N` (see `study power` for N)."
        )
        return
    with st.expander(f"Analysis plan · fixed {stored['created_at'][:19]} · SHA-256 {stored['sha256'][:12]}…"):
        st.json(stored["plan"])
    if interim and not interim["reached"]:
        progress = f"{interim['n_neurons']} of the planned {interim['target']} neurons have decisive ratings."
        if interim["display"] == "hide":
            st.info(f"Interim: {progress} The primary test's p-value and CI stay hidden until the target.")
        else:
            st.warning(f"**Interim: do not stop on this.** {progress} The p-value and CI below are not final.")


def _quality(summary: dict) -> None:
    quality = summary.get("quality") or {}
    if not quality.get("raters"):
        return
    st.markdown("**Rater quality**")
    st.dataframe(pd.DataFrame(quality["raters"]), hide_index=True, width="stretch")
    excluded = quality["exclusions"]
    st.caption(
        render.escape_markdown(
            f"Excluded by the plan: {excluded['n_paused']} ratings of paused raters, {excluded['n_straight_lining']} "
            f"of straight-lining raters, {excluded['n_fast']} too fast, {excluded['n_over_cap']} beyond the cap. "
            f"Median seconds per rating: {quality['median_seconds'] or '–'}."
        )
    )
    if quality.get("by_confidence"):
        st.dataframe(pd.DataFrame(quality["by_confidence"]), hide_index=True, width="content")


def _power(src: queries.Source, name: str, arm_a: str, arm_b: str) -> None:
    with st.expander("Power: what this design can detect"):
        design = queries.study_power(src, name, arm_a, arm_b)
        effect = design.get("effect") or {}
        detectable = effect.get("win_rate")
        st.markdown(
            render.escape_markdown(
                f"With {design['n_neurons']} neurons, about {design['mean_ratings_per_neuron'] or 0:.1f} ratings "
                f"each, {design['tie_share'] or 0:.0%} ties and an intra-neuron correlation of "
                f"{design['icc'] if design['icc'] is not None else 0:.2f}, the smallest win rate of {arm_a} "
                f"detectable at α = .05 with 80% power is "
                + (f"{detectable:.0%}." if detectable is not None else "out of reach.")
            )
        )
        st.caption("For planning: `python -m core study power --win-rate 0.65 --icc 0.1 --ratings-per-item 3`.")


def _studies(db, src: queries.Source) -> None:
    studies = human_eval.list_studies(db)
    if not studies:
        st.info("No study yet: create one with `python -m core study create` (see the home page).")
        return
    rater = signin.sign_in(db, "Study results reveal which explanation came from which arm: sign in as an admin.")
    if rater is None:
        return
    if not rater.is_admin:
        st.error(f"{render.escape_markdown(rater.name)} is a rater, not an admin: study results are for admins.")
        return
    name = st.selectbox(
        "Study",
        [row["name"] for row in studies],
        key="results_study",
        format_func=lambda study: f"{study} ({next(row['state'] for row in studies if row['name'] == study)})",
    )
    _study(db, src, name)


with elements.errors_shown(), queries.database() as db:
    src = queries.source(db)
    formats_tab, studies_tab = st.tabs(["Prompt formats", "Studies"])
    with formats_tab, elements.errors_shown():
        _formats(src)
    with studies_tab, elements.errors_shown():
        _studies(db, src)
