"""What the pages share, and the only Streamlit code outside pages/ (core/ has none).

- queries: the database of one script run and the cached queries of core, keyed by their real inputs
- session, signin: who this browser session is, and the sign-in form
- elements: errors shown as one line, a row of metrics, downloads
- tables, studies, prompt_preview, charts: the data frames, column formats and figures the pages show
- neuron_input: choosing neurons (typed or uploaded lists, the picker's labels)
- resources: what one server process holds for every session (the subject model, background jobs)
"""
