"""Explanation generation end to end: stored neurons → prompts → the fake OpenAI server or a tiny model → the DB."""

from __future__ import annotations

import math

import pytest

from core import db as dbmod
from core import explain, prompts, tokens
from core.__main__ import main
from core.errors import InputError, NotFoundError
from core.explain import ExplainOptions, cost_table, explain_neurons, import_explanations_csv
from core.llm import ApiOptions, LocalModelOptions, Sampling
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from tests.fake_openai import TEST_API_KEY, fake_completion_tokens, fake_prompt_tokens

MODEL = "tiny-subject"
WORDS = ["The", " river", " flows", " past", " the", " old", " mill", " and", " a", " dog", " barks", "."]


def neuron_record(neuron: NeuronId, focus: str) -> NeuronRecord:
    """20 top and 15 random records of 12 tokens; the neuron fires on `focus`, more in higher-ranked records."""

    def record(strength: float, salt: int) -> ActivationRecord:
        tokens = [*WORDS[:5], focus, *WORDS[6:]]
        activations = [0.05 * ((i + salt) % 3) for i in range(len(tokens))]
        activations[5] = strength
        return ActivationRecord(tuple(tokens), tuple(activations))

    top = tuple(record(5.0 - 0.2 * rank, rank) for rank in range(20))
    random = tuple(record(0.1 * (rank % 4), rank) for rank in range(15))
    stats = NeuronStats(mean=0.2, variance=0.5, max=5.0, quantiles={0.5: 0.3, 0.9: 1.0, 0.99: 2.5, 0.999: 4.0})
    return NeuronRecord(MODEL, neuron, top, random, stats)


NEURONS = [NeuronId(0, 3), NeuronId(1, 7)]


@pytest.fixture
def neurons_db(db):
    dbmod.write_neurons(db, MODEL, [neuron_record(NEURONS[0], " cat"), neuron_record(NEURONS[1], " Paris")], "test")
    return db


def run(db, formats=("original", "summary"), explainer="openai:gpt-4o-mini", progress=None, **options):
    return explain_neurons(db, MODEL, NEURONS, list(formats), explainer, ExplainOptions(**options), progress=progress)


def test_explain_stores_everything_an_explanation_needs(openai_env, neurons_db):
    seen = []
    report = run(neurons_db, sampling=Sampling(seed=11), progress=lambda done, total: seen.append((done, total)))
    assert (report.total, report.ok, report.failed, report.skipped) == (4, 4, 0, 0)
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)

    rows = report.rows(neurons_db)
    expected = {(0, 3, "original"), (0, 3, "summary"), (1, 7, "original"), (1, 7, "summary")}
    assert {(r["layer"], r["neuron"], r["format"]) for r in rows} == expected
    for row in rows:
        neuron_id = NeuronId(row["layer"], row["neuron"])
        record = dbmod.get_neuron(neurons_db, MODEL, neuron_id)
        expected_prompt = prompts.build_messages(
            row["format"], record.split("train"), cutoff=prompts.DEFAULT_CUTOFF, stats=record.stats
        )
        assert row["prompt"] == expected_prompt
        assert row["status"] == "ok" and row["error"] is None and row["source"] == "generated"
        assert row["explainer"] == "openai:gpt-4o-mini"
        assert row["completion"].startswith(" the word")
        assert row["explanation"] == prompts.clean_explanation(row["completion"])
        focus = "cat" if neuron_id == NEURONS[0] else "Paris"
        assert focus in row["explanation"]
        # Input and output tokens are the API's usage, counted separately.
        assert row["input_tokens"] == fake_prompt_tokens(expected_prompt)
        assert row["output_tokens"] == fake_completion_tokens(row["completion"])
        assert row["tokenizer"] == "api:gpt-4o-mini"
        assert row["latency_s"] > 0 and row["created_at"]
        assert row["params"]["sampling"] == Sampling(seed=11).to_json() and row["params"]["seed"] == 11
        assert row["params"]["few_shot"]["source"] == "bundled"
        if row["format"] == "summary":
            assert (row["cutoff_mode"], row["cutoff"], row["params"]["threshold"]) == ("quantile", 0.99, 2.5)
        else:
            assert row["cutoff_mode"] is None and row["params"]["cutoff"] is None
    sent = openai_env.requests[0]
    assert sent["seed"] == 11 and sent["temperature"] == 1.0 and sent["max_tokens"] == 60


def test_samples_differ_by_seed_and_each_is_its_own_job(openai_env, neurons_db):
    report = run(neurons_db, formats=["highlight"], samples=3, sampling=Sampling(seed=5))
    assert report.total == 6 and report.ok == 6
    rows = report.rows(neurons_db)
    assert sorted((r["layer"], r["sample"], r["params"]["seed"]) for r in rows) == [
        (0, 0, 5), (0, 1, 6), (0, 2, 7), (1, 0, 5), (1, 1, 6), (1, 2, 7)
    ]  # fmt: skip
    assert sorted(r["seed"] for r in openai_env.requests) == [5, 5, 6, 6, 7, 7]


def test_usage_missing_falls_back_to_our_tokenizer(openai_env, neurons_db):
    openai_env.chat_usage = False  # like some local servers
    openai_env.chat_handler = lambda request: " numbers and dates."
    report = run(neurons_db, formats=["avhs"])
    for row in report.rows(neurons_db):
        assert row["tokenizer"] == "cl100k_base"
        assert row["input_tokens"] == tokens.count_chat_tokens(row["prompt"], "cl100k_base")
        assert row["output_tokens"] == tokens.count_text_tokens(" numbers and dates.", "cl100k_base")


def test_a_failed_call_is_recorded_and_the_rest_continue(openai_env, neurons_db):
    openai_env.inject("500", "500")
    report = run(neurons_db, api=ApiOptions(max_attempts=2, concurrency=1))
    assert (report.ok, report.failed) == (3, 1)
    [failed] = [r for r in report.rows(neurons_db) if r["status"] == "failed"]
    print("user sees:", failed["error"])
    assert failed["error"] == (
        "openai:gpt-4o-mini: HTTP 500 after 2 attempts: the server failed; try again later "
        "(The server had an error while processing your request.)"
    )
    assert failed["explanation"] is None and failed["prompt"] is not None
    assert report.errors == (failed["error"],)

    # A rerun retries only the failed job, replacing its row.
    before = len(openai_env.requests)
    again = run(neurons_db)
    assert (again.ok, again.failed, again.skipped) == (1, 0, 3)
    assert len(openai_env.requests) == before + 1
    assert len(dbmod.list_explanations(neurons_db, MODEL, status=None)) == 4


def test_an_unusable_answer_is_failed_and_not_served_from_the_cache_again(openai_env, neurons_db):
    replies = iter(["...", " the word cat."])
    openai_env.chat_handler = lambda request: next(replies, " fallback words.")
    report = explain_neurons(neurons_db, MODEL, NEURONS[:1], ["summary"], "openai:m")
    [row] = report.rows(neurons_db)
    print("user sees:", row["error"])
    assert row["status"] == "failed" and row["completion"] == "..." and "holds no explanation" in row["error"]
    assert row["input_tokens"] is not None  # the tokens were spent even though the answer was unusable
    again = explain_neurons(neurons_db, MODEL, NEURONS[:1], ["summary"], "openai:m")
    [row] = again.rows(neurons_db)
    assert row["status"] == "ok" and row["explanation"] == "the word cat"
    assert len(openai_env.requests) == 2


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("lone_surrogate", "not valid Unicode text (a lone surrogate U+D800 at character "),
        ("invalid_utf8", r"not valid UTF-8 (bytes b'\xff' at offset "),
    ],
)
def test_a_reply_that_is_not_text_fails_its_job_only(openai_env, db, fault, reason):
    """A reply spelling a lone surrogate (`"\\ud800"`, which no UTF-8 encoder accepts) or holding bytes that are not
    UTF-8 fails its own job with the reason; the others are stored, and a rerun sends only the failed one."""
    neurons = [*NEURONS, NeuronId(2, 1)]
    focuses = (" cat", " Paris", " dog")
    dbmod.write_neurons(db, MODEL, [neuron_record(n, f) for n, f in zip(neurons, focuses, strict=True)], "test")
    openai_env.inject(fault)
    options = ExplainOptions(api=ApiOptions(concurrency=1))  # one request at a time: the first job gets the bad reply
    report = explain_neurons(db, MODEL, neurons, ["summary"], "openai:m", options)
    assert (report.total, report.ok, report.failed) == (3, 2, 1)
    rows = {(r["layer"], r["neuron"]): r for r in report.rows(db)}
    failed = rows[(0, 3)]
    print("user sees:", failed["error"])
    assert failed["status"] == "failed" and failed["explanation"] is None
    assert failed["error"].startswith(f"openai:m: the {'answer' if fault == 'lone_surrogate' else 'server'}")
    assert reason in failed["error"]
    assert [rows[(1, 7)]["status"], rows[(2, 1)]["status"]] == ["ok", "ok"]

    sent = len(openai_env.requests)
    again = explain_neurons(db, MODEL, neurons, ["summary"], "openai:m", options)
    assert (again.ok, again.failed, again.skipped) == (1, 0, 2)
    [retried] = openai_env.requests[sent:]
    assert retried["messages"] == failed["prompt"]
    row = {(r["layer"], r["neuron"]): r for r in again.rows(db)}[(0, 3)]
    assert row["status"] == "ok" and row["explanation"] == 'the word "cat" and similar words'
    assert len(dbmod.list_explanations(db, MODEL, status=None)) == 3


def test_resume_after_a_kill_mid_batch_does_not_redo_finished_jobs(openai_env, neurons_db):
    class Killed(BaseException):
        pass

    def kill_after_two(done: int, total: int) -> None:
        if done == 2:
            raise Killed

    with pytest.raises(Killed):
        run(neurons_db, progress=kill_after_two, api=ApiOptions(concurrency=1))
    stored = dbmod.list_explanations(neurons_db, MODEL)
    assert len(stored) == 2  # each explanation was stored the moment it arrived

    done_prompts = [r["prompt"] for r in stored]
    before = len(openai_env.requests)
    report = run(neurons_db, use_cache=False)
    assert (report.total, report.ok, report.skipped, report.failed) == (4, 2, 2, 0)
    new_requests = openai_env.requests[before:]
    assert len(new_requests) == 2
    assert not any(r["messages"] == p for r in new_requests for p in done_prompts)
    assert len(dbmod.list_explanations(neurons_db, MODEL)) == 4


def test_the_cache_makes_a_fresh_job_list_cost_no_requests(openai_env, neurons_db):
    run(neurons_db)
    assert len(openai_env.requests) == 4
    # Stored explanations are immutable, so a fresh job list is the same prompts under new job keys: the bundled
    # few-shot examples named by their path rather than as "bundled".
    report = run(neurons_db, few_shot=prompts.BUNDLED_FEW_SHOT)
    assert report.ok == 4 and len(openai_env.requests) == 4
    rows = report.rows(neurons_db)
    assert all(r["params"]["cached"] and r["latency_s"] == 0 and r["input_tokens"] > 0 for r in rows)


def test_changing_the_cutoff_keeps_formats_that_ignore_it(openai_env, neurons_db):
    run(neurons_db, formats=["original", "summary"])
    report = run(neurons_db, formats=["original", "summary"], cutoff=prompts.Cutoff("relative", 0.5))
    assert (report.skipped, report.ok) == (2, 2)  # original is reused, summary is new


def test_prompt_errors_are_recorded_per_job(openai_env, db):
    record = neuron_record(NEURONS[0], " cat")
    no_quantiles = NeuronRecord(MODEL, NEURONS[0], record.top, record.random, NeuronStats(0.1, 0.2, 5.0, {}))
    dbmod.write_neurons(db, MODEL, [no_quantiles], "test")
    report = explain_neurons(db, MODEL, NEURONS[:1], ["original", "summary"], "openai:m")
    assert (report.ok, report.failed) == (1, 1)
    print("user sees:", report.errors[0])
    assert "cannot build the summary prompt for neuron 0:3" in report.errors[0]
    assert len(openai_env.requests) == 1


def test_bad_arguments_are_errors_for_people(openai_env, neurons_db):
    with pytest.raises(NotFoundError, match="neuron 5:5"):
        explain_neurons(neurons_db, MODEL, [NeuronId(5, 5)], ["original"], "openai:m")
    with pytest.raises(InputError, match="unknown prompt format 'fancy'"):
        explain_neurons(neurons_db, MODEL, NEURONS, ["fancy"], "openai:m")
    with pytest.raises(InputError, match="samples 0"):
        ExplainOptions(samples=0)
    assert openai_env.requests == []


def test_key_never_lands_in_the_database(openai_env, neurons_db, db_path):
    openai_env.inject("401")
    run(neurons_db, api=ApiOptions(max_attempts=1))
    neurons_db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    statuses = [r["status"] for r in dbmod.list_explanations(neurons_db, MODEL, status=None)]
    assert sorted(statuses) == ["failed", "ok", "ok", "ok"]
    for path in db_path.parent.glob(db_path.name + "*"):
        data = path.read_bytes()
        assert TEST_API_KEY.encode() not in data and b"SECRET" not in data, path


def test_tiny_hf_model_explains_end_to_end_on_cpu(tiny_chat_model, neurons_db):
    report = explain_neurons(
        neurons_db,
        MODEL,
        NEURONS,
        ["summary", "highlight"],
        f"hf:{tiny_chat_model}",
        ExplainOptions(sampling=Sampling(max_tokens=16, seed=0), local=LocalModelOptions(device="cpu", batch_size=4)),
    )
    assert report.total == 4 and report.ok + report.failed == 4
    rows = report.rows(neurons_db)
    for row in rows:
        assert row["explainer"] == f"hf:{tiny_chat_model}" and row["tokenizer"] == str(tiny_chat_model)
        assert row["input_tokens"] == tokens.count_chat_tokens(row["prompt"], str(tiny_chat_model))
        assert 1 <= row["output_tokens"] <= 16
        assert row["completion"] is not None
    assert report.ok >= 1, [r["error"] for r in rows]
    for row in rows:
        if row["status"] == "ok":
            assert row["explanation"] == prompts.clean_explanation(row["completion"])


# --- token cost ------------------------------------------------------------------------------------------------


def test_cost_table_means_and_ratios():
    cl100k = {"status": "ok", "tokenizer": "cl100k_base"}
    rows = [
        {"format": "original", "input_tokens": 2000, "output_tokens": 20, **cl100k},
        {"format": "original", "input_tokens": 3000, "output_tokens": 40, **cl100k},
        {"format": "summary", "input_tokens": 1000, "output_tokens": 10, **cl100k},
        {"format": "summary", "input_tokens": 9999, "output_tokens": 10, **cl100k, "status": "failed"},
        {"format": "highlight", "input_tokens": None, "output_tokens": None, **cl100k},
    ]
    table = cost_table(rows)
    assert list(table.index) == ["original", "summary", "highlight"]
    assert list(table.columns) == ["n", "mean_input_tokens_cl100k", "mean_output_tokens", "mean_total_tokens",
                                   "original_over_format_input", "original_over_format_total"]  # fmt: skip
    assert table.loc["original", "n"] == 2 and table.loc["summary", "n"] == 1
    assert table.loc["original", "mean_input_tokens_cl100k"] == 2500
    assert table.loc["original", "mean_output_tokens"] == 30
    assert table.loc["summary", "original_over_format_input"] == 2.5
    assert table.loc["summary", "original_over_format_total"] == pytest.approx(2530 / 1010)
    assert table.loc["original", "original_over_format_input"] == 1.0
    assert math.isnan(table.loc["highlight", "mean_input_tokens_cl100k"])
    assert math.isnan(cost_table(rows[2:3]).loc["summary", "original_over_format_input"])
    assert cost_table([]).empty


def test_cost_table_keeps_offline_and_server_counts_apart_and_shows_both():
    # The same prompts: the API reports 713 and 300 tokens, cl100k_base counts 943 and 400 offline.
    rows = [
        {"format": "original", "input_tokens": 713, "tokenizer": "api:gpt-4o-mini", "input_tokens_cl100k": 943,
         "output_tokens": 10},
        {"format": "summary", "input_tokens": 300, "tokenizer": "api:gpt-4o-mini", "input_tokens_cl100k": 400,
         "output_tokens": 10},
    ]  # fmt: skip
    table = cost_table(rows)
    assert table.loc["original", "mean_input_tokens_cl100k"] == 943
    assert table.loc["original", "mean_input_tokens_server"] == 713
    assert "mean_input_tokens" not in table and "mean_input_tokens_unknown" not in table
    assert table.loc["summary", "original_over_format_input"] == pytest.approx(943 / 400)  # one unit per ratio
    # Without the offline counts only the server's unit shows, and the ratio is of server counts.
    server = cost_table([{k: v for k, v in row.items() if k != "input_tokens_cl100k"} for row in rows])
    assert "mean_input_tokens_cl100k" not in server
    assert server.loc["summary", "original_over_format_input"] == pytest.approx(713 / 300)


# --- importing published explanations --------------------------------------------------------------------------

SMALL_CSV = (
    "Layer,Neuron,Original,Summary,Highlight,HighlightSummary,AVHS\n"
    '3,17,words about rivers.,"river names, like ""Nile"".",water words.,rivers and lakes., flowing water.\n'
    '3,42,dates.,,years and dates.,calendar words.,"numbers in dates\n(years)."\n'
)


def test_import_small_csv_is_idempotent(db, tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text(SMALL_CSV, encoding="utf-8")
    assert import_explanations_csv(db, path, "gpt-4").written == 9  # one empty cell is skipped
    again = import_explanations_csv(db, path, "gpt-4")
    assert (again.written, again.unchanged) == (0, 9)
    rows = dbmod.list_explanations(db, "gpt2-xl")
    assert len(rows) == 9
    by_key = {(r["layer"], r["neuron"], r["format"]): r for r in rows}
    assert by_key[(3, 17, "summary")]["explanation"] == 'river names, like "Nile"'
    assert by_key[(3, 17, "avhs")]["explanation"] == "flowing water"
    assert by_key[(3, 42, "avhs")]["explanation"] == "numbers in dates (years)"
    assert by_key[(3, 42, "highlight_summary")]["completion"] == "calendar words."
    row = by_key[(3, 17, "original")]
    assert (row["source"], row["status"], row["explainer"]) == ("imported", "ok", "gpt-4")
    assert row["input_tokens"] is None and row["prompt"] is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('Layer,Neuron,Original\n1,2,ok.\n3,4,"broken\n5,6,x,y,z,w\n', "is not a readable CSV"),
        ("Puzzle id,GT Explanation,Original\n1:seed1,colors,colors.\n", "lacks the columns"),
        ("Layer,Neuron,Whatever\n1,2,x\n", "lacks the columns"),
        ("Layer,Neuron,Original\n1,2,fine.\nthree,4,bad layer.\n", "row 2: layer 'three' is not a non-negative"),
        ("", "is not a readable CSV"),
    ],
)
def test_import_corrupt_csv_is_an_error_and_writes_nothing(db, tmp_path, content, message):
    good = tmp_path / "good.csv"
    good.write_text(SMALL_CSV, encoding="utf-8")
    import_explanations_csv(db, good, "gpt-4")
    before = dbmod.list_explanations(db, status=None)
    bad = tmp_path / "bad.csv"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(InputError, match=message) as caught:
        import_explanations_csv(db, bad, "gpt-4")
    print("user sees:", caught.value)
    assert dbmod.list_explanations(db, status=None) == before


def test_import_binary_file_is_an_error(db, tmp_path):
    bad = tmp_path / "weights.csv"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError, match="not a readable CSV"):
        import_explanations_csv(db, bad, "gpt-4")
    with pytest.raises(InputError, match="no such file"):
        import_explanations_csv(db, tmp_path / "absent.csv", "gpt-4")
    assert dbmod.list_explanations(db, status=None) == []


def test_import_the_published_reference_csv(db, reference_dir):
    path = reference_dir / "lee2023" / "results" / "random_GPT4_results.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    count = import_explanations_csv(db, path, "gpt-4").written
    assert count == 240 * 5
    assert import_explanations_csv(db, path, "gpt-4").unchanged == count
    rows = dbmod.list_explanations(db, "gpt2-xl")
    assert len(rows) == count
    assert {r["format"] for r in rows} == set(prompts.FORMATS)
    assert all(r["explanation"] and not r["explanation"].endswith(".") for r in rows)
    # The Top1k file writes its headers in lower case and adds an index column.
    top = reference_dir / "lee2023" / "results" / "Top1k_GPT35_results.csv"
    if top.exists():
        assert import_explanations_csv(db, top, "gpt-3.5-turbo").written == 1000 * 5


# --- the command line ------------------------------------------------------------------------------------------


def test_cli_explain_prints_the_cost_table(openai_env, neurons_db, db_path, tmp_path, capsys):
    neuron_file = tmp_path / "neurons.csv"
    neuron_file.write_text("Layer,Neuron\n0,3\n1,7\n", encoding="utf-8")
    argv = ["explain", "--db", str(db_path), "--model", MODEL, "--neuron-file", str(neuron_file),
            "--formats", "original,summary,highlight", "--explainer", "openai:gpt-4o-mini", "--seed", "1",
            "--concurrency", "2"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    print(out, err)
    assert "6 explained, 0 already done, 0 failed (of 6)" in err
    lines = out.splitlines()
    assert lines[0].split() == ["n", "mean_input_tokens_cl100k", "mean_input_tokens_server", "mean_output_tokens",
                                "mean_total_tokens", "original_over_format_input",
                                "original_over_format_total"]  # fmt: skip
    assert [line.split()[0] for line in lines[2:]] == ["original", "summary", "highlight"]

    assert main([*argv[:5], "--neurons", "0:3,1:7", *argv[7:]]) == 0
    assert "0 explained, 6 already done" in capsys.readouterr().err


def test_cli_explain_failure_exits_non_zero_with_one_line_errors(openai_env, neurons_db, db_path, capsys):
    openai_env.inject("401")
    argv = ["explain", "--db", str(db_path), "--model", MODEL, "--neurons", "0:3", "--formats", "summary",
            "--explainer", "openai:m", "--max-attempts", "1"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    print(err)
    assert "failed: openai:m: HTTP 401" in err and TEST_API_KEY not in err
    assert "rerun the same command to retry them" in err

    assert main(["explain", "--db", str(db_path), "--model", MODEL, "--neurons", "9:9", "--explainer", "x:y"]) == 2
    assert "error: explainer 'x:y' is not of the form" in capsys.readouterr().err


def test_cli_import_explanations(db_path, tmp_path, capsys):
    path = tmp_path / "mine.csv"
    path.write_text(SMALL_CSV, encoding="utf-8")
    assert main(["import-explanations", str(path), "--explainer", "gpt-4", "--db", str(db_path)]) == 0
    assert "imported 9 explanation(s) of gpt2-xl by gpt-4" in capsys.readouterr().out
    assert main(["import-explanations", str(tmp_path / "nope.csv"), "--explainer", "gpt-4", "--db", str(db_path)]) == 2
    assert "error: cannot read" in capsys.readouterr().err


def test_job_keys_are_deterministic():
    params = {"sampling": Sampling().to_json(), "cutoff": None}
    key = explain.job_key(MODEL, NEURONS[0], "original", "openai:m", params, 0)
    assert key == explain.job_key(MODEL, NEURONS[0], "original", "openai:m", dict(params), 0)
    assert key != explain.job_key(MODEL, NEURONS[0], "original", "openai:m", params, 1)
    assert key != explain.job_key(MODEL, NEURONS[1], "original", "openai:m", params, 0)


def test_a_rendering_variant_is_a_named_option_with_its_own_jobs(openai_env, neurons_db, db_path, capsys):
    records = [neuron_record(NEURONS[0], " cat")]
    paper = explain.plan_jobs(MODEL, records, ["highlight", "summary"], "openai:m")
    again = explain.plan_jobs(
        MODEL, records, ["highlight", "summary"], "openai:m", format_options=prompts.PAPER_OPTIONS
    )
    variant = prompts.FormatOptions(distinct_lists=True, merge_spans=True)
    merged = explain.plan_jobs(MODEL, records, ["highlight", "summary"], "openai:m", format_options=variant)
    assert [job.job_key for job in paper] == [job.job_key for job in again]  # the paper's rendering: keys unchanged
    assert all(a.job_key != b.job_key for a, b in zip(paper, merged, strict=True))
    assert merged[0].params["format_options"] == {"distinct_lists": True, "merge_spans": True}
    assert all(a.messages != b.messages for a, b in zip(paper, merged, strict=True))
    # The same variants on the command line, for `prompt` and `explain`.
    argv = ["prompt", "--format", "highlight", "--model", MODEL, "--neuron", "0:3", "--db", str(db_path)]
    assert main(argv) == 0
    default_text = capsys.readouterr().out
    assert main([*argv, "--merge-spans"]) == 0
    assert capsys.readouterr().out != default_text
    explain_argv = ["explain", "--model", MODEL, "--neurons", "0:3", "--formats", "summary", "--explainer", "openai:m"]
    assert main([*explain_argv, "--db", str(db_path)]) == 0
    assert main([*explain_argv, "--distinct-lists", "--db", str(db_path)]) == 0
    stored = [row for row in dbmod.list_explanations(neurons_db, MODEL, NEURONS[0]) if row["format"] == "summary"]
    assert len(stored) == 2 and {bool(row["params"].get("format_options")) for row in stored} == {False, True}
