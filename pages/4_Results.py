"""Results: per prompt format, the automated scores and token costs; per study, the human preferences.

Study results name the arms and the exports hold every item unblinded, so the study part is for admins only: a
rater who could read them would no longer be blind.
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import charts, dashboard, explain, export, human_eval, scoring, tables

st.set_page_config(page_title="Results", page_icon="🔬", layout="wide")
st.title("Results")


def _formats(src: dashboard.Source) -> None:
    costs = dashboard.explanation_costs(src)
    if costs.empty:
        st.info("No explanations yet: explain some neurons on the Explain page.")
        return
    model = st.selectbox("Model", sorted(costs["model"].unique()), key="results_model")
    costs = costs[costs["model"] == model]
    rows = dashboard.score_rows(src, model)
    scorers = tables.scorers(rows)
    st.subheader("Simulation scores")
    if scorers:
        scorer = st.selectbox(
            "Simulator", scorers, key="results_simulator", help="Scores of different simulators or methods never mix"
        )
        rows = tables.rows_of_scorer(rows, scorer)
        simulator = scorer.partition(" · ")[0]
        st.caption(
            "Correlation of simulated and real activations on the valid split (SPEC.md §4); mean over neurons "
            "with a 95% bootstrap CI."
        )
        st.dataframe(
            tables.format_summary(rows, simulator),
            hide_index=True,
            width="stretch",
            column_config=tables.FORMAT_SUMMARY_CONFIG,
        )
        scored = rows[(rows["simulator"] == simulator) & rows["score"].notna()]
        st.plotly_chart(charts.distribution_figure(scored, "score", "score"), width="stretch")
        if "original" in set(scored["format"]) and scored["format"].nunique() > 1:
            st.markdown("**Each format against original**, on the neurons both have (paired by neuron)")
            st.dataframe(
                tables.in_format_order(scoring.paired_format_differences(rows, "original", simulator=simulator)),
                hide_index=True,
                width="stretch",
                column_config=tables.DIFFERENCE_TABLE_CONFIG,
            )
    else:
        st.info("No explanation of this model has been scored yet (score them on the Explain page or the CLI).")
    st.subheader("Token cost")
    st.caption("Input and output tokens per explanation, counted separately (SPEC.md §4).")
    st.dataframe(explain.cost_table(costs.to_dict("records")), width="stretch", column_config=tables.COST_TABLE_CONFIG)
    left, right = st.columns(2)
    left.plotly_chart(charts.distribution_figure(costs, "input_tokens", "input tokens"), width="stretch")
    right.plotly_chart(charts.distribution_figure(costs, "output_tokens", "output tokens"), width="stretch")


def _study(src: dashboard.Source, name: str) -> None:
    summary = dashboard.study_summary(src, name)
    status = dashboard.study_status(src, name)
    arm_a, arm_b = summary["primary_pair"]
    bias = summary["position_bias"]
    gold = summary.get("n_gold_ratings") or 0
    dashboard.metric_row(
        [
            (
                "ratings",
                f"{summary['n_ratings']:,} of {status['wanted_ratings']:,}",
                "Ratings of the study's items" + (f"; {gold:,} attention-check ratings come on top." if gold else "."),
            ),
            ("raters", f"{summary['n_raters']}"),
            ("ties · both bad", f"{summary['ties']} · {summary['both_bad']}"),
            (f"{arm_a} over {arm_b}", tables.rate_text(summary["win_rate"], summary["wilson_ci"])),
            ("left chosen (position bias)", tables.rate_text(bias["rate"], bias["ci"])),
        ]
    )
    st.caption(
        "Win rates are over decisive ratings (1 or 2), with Wilson 95% intervals; ties and both-bad are counted "
        "beside them."
    )
    pairs = summary["pairs"]
    if any(pair["win_rate"] is not None for pair in pairs):
        st.plotly_chart(charts.win_rate_figure(pairs), width="stretch")
    st.dataframe(tables.pairs_table(pairs), hide_index=True, width="stretch", column_config=tables.PAIRS_TABLE_CONFIG)
    if summary["bradley_terry"]:
        st.markdown("**Bradley–Terry strengths**")
        st.plotly_chart(charts.bradley_terry_figure(summary["bradley_terry"]), width="stretch")
    # One block under the other: side by side, a narrow window cut the interval of the figure short.
    st.markdown("**Humans vs automated scores**")
    versus = summary["human_vs_automated"]
    if versus:
        dashboard.metric_row(
            [("humans chose the higher-scored explanation", tables.rate_text(versus["rate"], versus["ci"]))]
        )
        st.caption(f"{versus['n']} decisive ratings of items whose explanations both have scores.")
    else:
        st.caption("No rated item has scores for both explanations.")
    st.markdown("**Agreement between raters** (items rated by two or more)")
    st.dataframe(
        pd.DataFrame(list(summary["agreement"].items()), columns=["measure", "value"]),
        hide_index=True,
        width="content",
        column_config=tables.MEASURE_TABLE_CONFIG,
    )
    st.markdown("**Per rater**")
    st.dataframe(pd.DataFrame(status["raters"]), hide_index=True, width="stretch")
    st.dataframe(
        tables.pairs_table(summary["per_rater"]),
        hide_index=True,
        width="stretch",
        column_config=tables.PAIRS_TABLE_CONFIG,
    )
    if summary["gold"]["per_rater"]:
        st.markdown("**Attention checks**")
        st.dataframe(pd.DataFrame(summary["gold"]["per_rater"]), hide_index=True, width="stretch")
    st.markdown("**Downloads** (unblinded: arms, formats, explainers and every rating)")
    stem = export.file_stem(name)
    for column, fmt in zip(st.columns(len(export.EXPORT_FORMATS)), export.EXPORT_FORMATS, strict=True):
        file_name, data, mime = dashboard.download_of(dashboard.export_files(src, name, fmt), stem, fmt)
        column.download_button(fmt, data, file_name=file_name, mime=mime, key=f"results_download_{fmt}")


def _studies(db, src: dashboard.Source) -> None:
    studies = human_eval.list_studies(db)
    if not studies:
        st.info("No study yet: create one with `python -m core study create` (see the home page).")
        return
    rater = dashboard.sign_in(db, "Study results reveal which explanation came from which arm: sign in as an admin.")
    if rater is None:
        return
    if not rater.is_admin:
        st.error(f"{dashboard.markdown_escape(rater.name)} is a rater, not an admin: study results are for admins.")
        return
    name = st.selectbox("Study", [row["name"] for row in studies], key="results_study")
    _study(src, name)


with dashboard.errors_shown(), dashboard.database() as db:
    src = dashboard.source(db)
    formats_tab, studies_tab = st.tabs(["Prompt formats", "Studies"])
    with formats_tab, dashboard.errors_shown():
        _formats(src)
    with studies_tab, dashboard.errors_shown():
        _studies(db, src)
