# One command to run the app, one to run the tests; each sets up what it needs on a fresh machine.
#   make run    venv + install + collect the default neurons (once) + streamlit run app.py
#   make test   venv + install + mypy + ruff + pytest
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed before requirements.txt so that pip keeps it: this pin resolves to the local CPU build on our
# machines and CI, and to PyPI's CUDA build elsewhere. Override with `make run TORCH=torch` to let pip choose.
TORCH ?= torch==2.13.0
PORT ?= 8501

.PHONY: install data run test lint format bench clean mutation

$(BIN)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --editable .
	touch $@

install: $(BIN)/.installed

# Collect all 6 layers of the bundled all-MiniLM-L6-v2 over the bundled corpus, unless the database already holds
# its neurons (collected by an earlier `make run`, or by hand with other settings, which `collect` never replaces).
data: install
	@$(BIN)/python -m core neuron --model default --layer 5 --neuron 0 > /dev/null 2>&1 \
		|| $(BIN)/python -m core collect --model default --corpus default

run: data
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: install
	$(BIN)/mypy
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .

bench: data
	$(BIN)/python -m bench.collect
	$(BIN)/python -m bench.tokens
	$(BIN)/python -m bench.simulate
	$(BIN)/python -m bench.app

# --- Mutation testing (tests/README.md): `make mutation MODULE=<group>`, one group per run; not part of `make test`
# or CI. mutmut ([tool.mutmut] in pyproject.toml) mutates the group's modules and runs only the group's own test files
# on each mutant, with one worker, in a fresh mutants/<group>/ (so results never go stale and groups do not mix).
# MUTANTS='<glob> ...' narrows a run to some mutants, e.g. MUTANTS='core.stats.agreement.*'. Afterwards
# `cd mutants/<group> && ../../.venv/bin/mutmut show <mutant>` shows one mutant's diff.
MUTATION_GROUPS := stats stats-models power blinding assignment export export-files import quality collection prompts scoring \
	classifier migrations
# core/stats in two halves of about 1500 mutants each, so that a run fits in half an hour on two cores.
MUTATE_stats := core/stats/__init__.py core/stats/proportions.py core/stats/neuron_level.py core/stats/agreement.py
TESTS_stats = $(wildcard tests/test_stats.py tests/test_stats_properties.py tests/test_stats_models_properties.py)
MUTATE_stats-models := core/stats/bradley_terry.py core/stats/automated.py core/stats/summary.py
TESTS_stats-models = $(TESTS_stats)
MUTATE_power := core/power.py
TESTS_power = $(wildcard tests/test_power.py tests/test_power_properties.py)
# Blinding; and, apart, the parts of core/human_eval.py that draw the items, lay them out and hand them out. The app
# pages and the many-processes test are left out: they check what pages show and SQLite's locking.
MUTATE_blinding := core/blinding.py
TESTS_blinding = $(wildcard tests/test_blinding.py tests/test_blinding_properties.py) \
	$(addprefix --deselect=tests/test_blinding.py::,test_a_visitor_finds_no_explanation_of_an_open_study_by_link_or_search \
	test_an_admin_sees_everything_and_a_closed_study_hides_nothing test_the_rate_page_offers_only_the_raters_open_studies)
MUTATE_assignment := core/human_eval.py
TESTS_assignment = $(wildcard tests/test_human_eval.py tests/test_human_eval_properties.py) \
	--deselect=tests/test_human_eval.py::test_ratings_from_many_processes_at_once_are_all_kept
MUTANTS_assignment := $(addprefix core.human_eval.x_,$(addsuffix __mutmut_*,_balanced_sides _item _gold_items \
	plan_items as_seen item_targets _shuffle_key _open_items choose_item first_arm place_left _progress))
# core/export.py in three runs: a study's data and analysis; its files and their re-import (and the purge); the import
# of ratings collected elsewhere.
MUTATE_export := core/export.py
TESTS_export = $(wildcard tests/test_export.py tests/test_export_properties.py)
MUTANTS_export := $(foreach fn,x_study_data x__add_automated_scores xǁStudyAnalysisǁto_json xǁStudySummaryǁto_json \
	x_summary_of x_analyse x_study_summary,core.export.$(fn)__mutmut_*)
MUTATE_export-files := core/export.py
TESTS_export-files = $(TESTS_export)
MUTANTS_export-files := $(foreach fn,x__looks_like_formula x_csv_safe x_csv_raw x__csv_text x_csv_bytes x__read_csv \
	x_file_stem x__records x__json_bytes x_export_study x_write_export x__read_files x__frame x__restore_types \
	x_load_export x_reproduce_summary x_purge_study_ratings x__remove,core.export.$(fn)__mutmut_*)
MUTATE_import := core/export.py
TESTS_import = $(TESTS_export)
MUTANTS_import := $(foreach fn,xǁImportReportǁto_json xǁImportReportǁsummary_line xǁImportRatingsErrorǁ__init__ \
	x__csv_field_limit x_read_rating_rows x__csv_error x_import_ratings x__rater_id x__check_row,core.export.$(fn)__mutmut_*)
MUTATE_quality := core/quality.py core/plan.py
TESTS_quality = $(wildcard tests/test_quality.py tests/test_plan*.py tests/test_quality_properties.py)
# Collection's tracking state (core/activations.py's trackers) and the merge of ranks' states (core/distributed.py).
# The tests that start other processes (torchrun, a killed run, a full disk) are left out: they take a minute and a
# half per mutant, and the merge they check runs in process in test_distributed.py.
MUTATE_collection := core/activations.py core/distributed.py
TESTS_collection = $(wildcard tests/test_activations.py tests/test_distributed.py tests/test_collection_properties.py) \
	$(addprefix --deselect=tests/test_activations.py::,test_killed_process_then_rerun_completes \
	test_torchrun_two_processes_keep_the_same_scoring_excerpts test_full_disk_fails_cleanly_and_rerun_completes) \
	$(addprefix --deselect=tests/test_distributed.py::,test_torchrun_two_processes_equal_one_process \
	test_a_rank_that_dies_fails_the_run_cleanly_and_a_rerun_resumes)
MUTANTS_collection := core.activations.x_level_* core.activations.xǁ_LayerTrackerǁ* core.activations.x__fold_top__* \
	core.activations.xǁ_ScoringStateǁ* $(addprefix core.distributed.x_,$(addsuffix __mutmut_*,_mix sample_keys \
	select_sample local_rows interleave chan_merge _lexicographic select_top merge_top merge_layer _merge_levels)) \
	core.distributed.xǁKeyedSampleǁ*
MUTATE_prompts := core/prompts.py
TESTS_prompts = $(wildcard tests/test_prompts.py tests/test_prompts_properties.py)
MUTATE_scoring := core/scoring.py core/scorers/*.py
TESTS_scoring = $(wildcard tests/test_scoring.py tests/test_scorers.py tests/test_scoring_properties.py)
# The detection and fuzzing scorers (reading answers, probabilities, prompts, the score), apart from the scoring run:
# without the embedding tests, which load MiniLM (20 s a mutant) and do not reach this module.
MUTATE_classifier := core/scorers/classifier.py
TESTS_classifier = $(wildcard tests/test_scorers.py tests/test_classifier_properties.py tests/test_classifier_llm_properties.py) \
	$(addprefix --deselect=tests/test_scorers.py::,\
	test_embedding_scorer_scores_and_skips_layers_without_excerpts test_embedding_prefers_a_neurons_own_token)
MUTATE_migrations := core/db/base.py
TESTS_migrations = $(wildcard tests/test_migrations.py tests/test_migrations_properties.py)

# Runs mutmut with the group's modules and tests set on mutmut's configuration (its keys are in pyproject.toml).
define MUTATION_RUN
import os, sys
from mutmut import configuration
config = configuration.config()
config.only_mutate = os.environ["MUTATION_MUTATE"].split()
config.pytest_add_cli_args_test_selection = os.environ["MUTATION_TESTS"].split()
from mutmut.__main__ import cli
cli(sys.argv[1:], prog_name="mutmut")
endef
# Per module: killed, survived, timeout, no tests and the kill rate ((killed + timeout) / mutants), then survivors.
define MUTATION_REPORT
import fnmatch, json, os, pathlib, collections
from mutmut.stats import status_by_exit_code
globs = os.environ["MUTATION_MUTANTS"].split() or ["*"]
rows, survivors = {}, []
for meta in sorted(pathlib.Path("mutants/core").rglob("*.py.meta")):
    module = str(meta.relative_to("mutants"))[: -len(".meta")]
    for key, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if any(fnmatch.fnmatchcase(key, glob) for glob in globs):
            status = status_by_exit_code[code]
            rows.setdefault(module, collections.Counter())[status] += 1
            if status != "killed" and status != "timeout":
                survivors.append(f"{status:9} {key}")
print(f"{'module':32} {'killed':>7} {'survived':>8} {'timeout':>7} {'no tests':>8} {'other':>5} {'total':>5} {'rate':>6}")
for module, count in rows.items():
    total, caught = sum(count.values()), count["killed"] + count["timeout"]
    other = total - caught - count["survived"] - count["no tests"]
    print(f"{module:32} {count['killed']:7} {count['survived']:8} {count['timeout']:7} {count['no tests']:8} "
          f"{other:5} {total:5} {caught / total:6.1%}")
print(*survivors, sep="\n")
endef
export MUTATION_RUN MUTATION_REPORT
# Each mutant's tests run in a process forked from mutmut's: with torch's or the tokenizers' worker threads started
# before the fork, a child can wait forever on a lock one of them held (and count as a timeout). One thread each.
MUTATION_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

mutation: install
	@test -n "$(filter $(MODULE),$(MUTATION_GROUPS))" || \
		{ echo "usage: make mutation MODULE=<group> [MUTANTS='<glob> ...'], a group of: $(MUTATION_GROUPS)" >&2; exit 2; }
	$(BIN)/python -c "import mutmut" 2>/dev/null || $(BIN)/python -m pip install --quiet "mutmut==3.8.1"
	rm -rf mutants/$(MODULE) && mkdir -p mutants/$(MODULE)
	for path in core tests ui pages app.py .streamlit pyproject.toml; do ln -s ../../$$path mutants/$(MODULE)/$$path; done
	cd mutants/$(MODULE) && time $(MUTATION_ENV) MUTATION_MUTATE='$(MUTATE_$(MODULE))' MUTATION_TESTS='$(TESTS_$(MODULE))' \
		../../$(BIN)/python -c "$$MUTATION_RUN" run --max-children 1 $(foreach glob,$(or $(MUTANTS),$(MUTANTS_$(MODULE))),'$(glob)')
	cd mutants/$(MODULE) && MUTATION_MUTANTS='$(or $(MUTANTS),$(MUTANTS_$(MODULE)))' ../../$(BIN)/python -c "$$MUTATION_REPORT" \
		| tee report.txt

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache test-artifacts
