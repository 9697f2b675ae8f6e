"""The app's entry point, and its Home page: what is in the database, how the workbench is configured, and how to
get started.

Run from the repository root: `.venv/bin/streamlit run app.py` (the database is $EVAL_DB, else evaluations.db).
The pages are the files in pages/, at /Neurons, /Explain, /Rate and /Results; a link such as
/Neurons?model=…&layer=…&neuron=… opens its page, even as a fresh server's first request. The sidebar's page list is
ui/nav.py's, which calls this page "Home".
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core import config, render
from ui import elements, nav, queries, resources

TITLE = "Neuron explanation workbench"


def home() -> None:
    """The Home page."""
    from core import demo, llm, models, simulate

    nav.sidebar("Home")
    st.title(TITLE)
    st.caption(
        "Collect MLP neuron activations, explain neurons with LLMs under several prompt formats, score the "
        "explanations by simulation, and compare them in blinded pairwise studies."
    )

    with elements.errors_shown(), queries.database() as db:
        src = queries.source(db)
        info = queries.summary(src)
        counts = info["counts"]

        st.subheader("In the database")
        figures = [
            ("Models", len(info["models"])),
            ("Layers", sum(len(layers) for layers in info["models"].values())),
            ("Neurons", counts["neurons"]),
            ("Explanations", counts["explanations"]),
            ("Scores", counts["scores"]),
            ("Studies", counts["studies"]),
            ("Ratings", counts["ratings"]),
        ]
        elements.metric_row([(label, f"{value:,}") for label, value in figures])
        layer_rows = [
            {"model": model, "layer": row["layer"], "neurons": row["neurons"]}
            for model, layers in info["models"].items()
            for row in layers
        ]
        if layer_rows:
            st.dataframe(pd.DataFrame(layer_rows), hide_index=True, width="content")
        else:
            st.info("The database holds no neurons yet. Start with step 1 below.")

        st.subheader("Configuration")
        api = config.api_settings()
        settings = pd.DataFrame(
            [
                ("database", str(config.db_path())),
                ("default subject model", models.DEFAULT_MODEL_NAME),
                ("supported model types", ", ".join(models.supported_model_types())),
                ("explainer backends", ", ".join(backend.spec for backend in llm.BACKENDS.values())),
                ("simulators", ", ".join(f"{kind.backend}: {kind.method}" for kind in simulate.SIMULATORS.values())),
                (f"API base URL (${config.ENV_API_BASE})", llm.public_url(api.base_url) or "OpenAI's default"),
                (f"API key (${config.ENV_API_KEY})", "set" if api.key_set else "not set"),
            ],
            columns=["setting", "value"],
        )
        # A static table: its cells wrap, where a data grid would cut long values short in a narrow window.
        st.table(settings, hide_index=True)

        st.subheader("Getting started")
        # The offline demo: on a database with neurons and no explanation yet, one click shows the whole loop.
        if demo.offer_demo(db) and st.button(
            "Run the offline demo (no LLM needed)",
            help="Baseline explanations of 20 neurons, embedding scores and a small blinded study with a demo rater; "
            "`python -m core demo --remove` deletes exactly what it made",
        ):
            with st.spinner("Making baseline explanations, scoring them and creating a study (under a minute)…"):
                st.session_state["demo_report"] = resources.run_demo().to_json()
        if "demo_report" in st.session_state:
            report = st.session_state["demo_report"]
            st.success(
                render.escape_markdown(
                    f"Demo ready: {report['explanations']} baseline explanations of {len(report['neurons'])} neurons, "
                    f"{report['scores']} embedding scores, study {report['study']} with {report['items']} items."
                )
            )
            st.markdown(
                "\n".join(f"{n}. {render.escape_markdown(step)}" for n, step in enumerate(report["next_steps"], 1))
            )
        st.markdown("**1. Collect activations** of the bundled model (a few minutes on a laptop CPU):")
        st.code(".venv/bin/python -m core collect", language="bash", wrap_lines=True)
        st.markdown(
            "**2. Explain neurons** on the *Explain* page (sign in as an admin rater), or from the command line:"
        )
        st.code(
            ".venv/bin/python -m core rater add --name admin --admin\n"
            ".venv/bin/python -m core explain --neurons 0:1,0:2 --explainer openai:gpt-4o-mini",
            language="bash",
            wrap_lines=True,
        )
        st.markdown(
            "**3. Browse and compare**: open a neuron on the *Neurons* page, create a blinded study, let raters "
            "work on the *Rate* page and read the *Results*:"
        )
        st.code(
            ".venv/bin/python -m core study create --name pilot --arms summary,original --neurons 0:1,0:2\n"
            ".venv/bin/python -m core rater add --name alice\n"
            ".venv/bin/python -m core rater assign --name alice --studies pilot",
            language="bash",
            wrap_lines=True,
        )


home()
