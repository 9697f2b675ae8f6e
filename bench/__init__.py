"""Benchmarks: each prints ratios measured side by side in one run. Run from the repository root as
`.venv/bin/python -m bench.NAME` (e.g. `-m bench.llm`), so that they can use the tests' fakes (tests/)."""
