"""Importing OpenAI's public NeuronRecord JSON and explanations, from fixture files written in that format."""

from __future__ import annotations

import json

import pytest

from core import db as dbmod
from core.__main__ import main
from core.db.explanations import InsertReport
from core.errors import InputError
from core.models import DEFAULT_MODEL_NAME
from core.openai_import import import_explanations, import_neuron_records
from core.records import NeuronId


def activation_record(tokens, activations):
    return {"dataclass_name": "ActivationRecord", "tokens": tokens, "activations": activations}


def write_neuron_file(path, layer=0, neuron=426):
    data = {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": neuron},
        "random_sample": [activation_record([" a", " b"], [0.0, 0.1]) for _ in range(15)],
        "random_sample_by_quantile": [[activation_record([" c"], [0.2])]],
        "quantile_boundaries": [0.0, 0.5, 1.0, 2.0, 3.0],
        "mean": 0.05,
        "variance": 0.01,
        "skewness": 1.0,
        "kurtosis": 3.0,
        "most_positive_activation_records": [
            activation_record([" un", "likely", " event"], [0.1, v, 0.0]) for v in (1.0, 3.5, 2.0)
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_neuron_record_import(db, tmp_path):
    path = write_neuron_file(tmp_path / "0" / "426.json")
    assert import_neuron_records(db, [path]) == [NeuronId(0, 426)]
    record = dbmod.get_neuron(db, "gpt2-xl", NeuronId(0, 426))
    assert [r.max_activation for r in record.top] == [3.5, 2.0, 1.0]  # sorted descending
    assert len(record.random) == 15 and record.stats.max == 3.5
    assert record.stats.quantiles == {0.5: 0.5, 0.9: 1.0, 0.99: 2.0, 0.999: 3.0}


def test_partial_file_writes_nothing(db, tmp_path):
    good = write_neuron_file(tmp_path / "0" / "1.json", neuron=1)
    partial = tmp_path / "0" / "2.json"
    partial.write_text(write_neuron_file(tmp_path / "x.json").read_text()[:200])
    with pytest.raises(InputError, match=r"2.json: not valid JSON .* is the file complete"):
        import_neuron_records(db, [good, partial])
    assert dbmod.summary(db)["counts"]["neurons"] == 0


def test_record_with_mismatched_lengths_names_the_field(db, tmp_path):
    path = write_neuron_file(tmp_path / "0" / "3.json", neuron=3)
    data = json.loads(path.read_text())
    data["most_positive_activation_records"][1]["activations"].pop()
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"most_positive_activation_records\[1\]: 3 tokens but 2 activations"):
        import_neuron_records(db, [path])


def test_explanations_jsonl_and_csv(db, tmp_path, reference_dir):
    jsonl = tmp_path / "5" / "7.jsonl"
    jsonl.parent.mkdir()
    scored = {"explanation": " years", "scored_simulation": {"ev_correlation_score": 0.4}}
    jsonl.write_text(json.dumps({"scored_explanations": [scored]}) + "\n")
    assert import_explanations(db, [jsonl]) == InsertReport(written=1, unchanged=0)
    assert import_explanations(db, [jsonl]) == InsertReport(written=0, unchanged=1)  # idempotent
    rows = dbmod.list_explanations(db, "gpt2-xl", NeuronId(5, 7))
    assert [(r["explanation"], r["reference_score"], r["source"]) for r in rows] == [("years", 0.4, "reference")]
    report = import_explanations(db, [reference_dir / "lee2023" / "inputs" / "test_neurons.csv"])
    assert report == InsertReport(written=5, unchanged=0)
    assert dbmod.list_explanations(db, "gpt2-xl", NeuronId(0, 286))[0]["explanation"] == "words related to comparison."


def test_cli_import_then_neuron_json(tmp_path, capsys):
    db_file = tmp_path / "cli.db"
    path = write_neuron_file(tmp_path / "0" / "426.json")
    assert main(["import-openai", str(path), "--db", str(db_file)]) == 0
    assert capsys.readouterr().out == "imported 1 new neuron record(s) of gpt2-xl\n"
    # A re-import says what it added, not how many records the file holds.
    assert main(["import-openai", str(path), "--db", str(db_file)]) == 0
    assert capsys.readouterr().out.startswith("nothing new: all 1 neuron record(s) of gpt2-xl were already stored")
    args = ["neuron", "--model", "gpt2-xl", "--layer", "0", "--neuron", "426", "--json", "--db", str(db_file)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"stats", "top", "random"}
    assert set(out["stats"]) == {"mean", "variance", "max", "quantiles"}
    assert [max(r["activations"]) for r in out["top"]] == [3.5, 2.0, 1.0]
    assert main(["neuron", "--model", "gpt2-xl", "--layer", "9", "--neuron", "0", "--db", str(db_file)]) == 2
    assert "collected layers: 0 (1 neurons)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mean", "high", r"7\.json: mean: Input should be a valid number"),
        ("variance", [1], r"7\.json: variance: Input should be a valid number"),
        ("mean", True, r"7\.json: mean: Input should be a valid number"),
        ("neuron_id", {"layer_index": "x", "neuron_index": 7}, r"7\.json: neuron_id\.layer_index: .* valid integer"),
        (
            "neuron_id",
            {"layer_index": 0, "neuron_index": -1},
            r"7\.json: neuron_id\.neuron_index: .* greater than or equal to 0",
        ),
        ("most_positive_activation_records", None, r"7\.json: most_positive_activation_records: expected a list"),
    ],
)
def test_bad_fields_are_one_error_naming_the_field(db, tmp_path, field, value, message):
    path = write_neuron_file(tmp_path / "0" / "7.json", neuron=7)
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        import_neuron_records(db, [path])
    assert dbmod.summary(db)["counts"]["neurons"] == 0


def test_unreadable_sources_are_one_error_each(db, tmp_path):
    binary = tmp_path / "0" / "8.json"
    binary.parent.mkdir()
    binary.write_bytes(b"\xff\xfe{}")
    with pytest.raises(InputError, match=r"8\.json is not UTF-8 text"):
        import_neuron_records(db, [binary])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match=r"folder .*empty holds no \.json files"):
        import_neuron_records(db, [empty])
    listed = tmp_path / "1" / "2.jsonl"
    listed.parent.mkdir()
    listed.write_text("[1, 2]\n")
    with pytest.raises(InputError, match=r"2.jsonl:1: expected an object"):
        import_explanations(db, [listed])


def test_cli_model_default_is_the_bundled_model_as_everywhere(tmp_path, capsys):
    db_file = tmp_path / "cli.db"
    records = write_neuron_file(tmp_path / "0" / "426.json")
    explanations = tmp_path / "explanations.csv"
    explanations.write_text("layer,neuron,score,explanation\n0,426,0.5,negation\n", encoding="utf-8")
    args = ["import-openai", str(records), "--explanations", str(explanations), "--model", "default"]
    assert main([*args, "--db", str(db_file)]) == 0
    assert "of all-MiniLM-L6-v2" in capsys.readouterr().out
    db = dbmod.connect(db_file)
    assert dbmod.list_explanations(db, "default") == []
    [row] = dbmod.list_explanations(db, DEFAULT_MODEL_NAME)
    assert row["explanation"] == "negation"
    assert dbmod.get_neuron(db, DEFAULT_MODEL_NAME, NeuronId(0, 426)).stats.max == 3.5
    assert main([*args, "--db", str(db_file)]) == 0
    assert "nothing new: all 1 reference explanations" in capsys.readouterr().out
