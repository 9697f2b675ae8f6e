"""Importing explanation tables: a stored explanation is never rewritten, and a table that is not one is refused.
And importing the code: no module of core imports one that imports it back."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from core import db as dbmod
from core.__main__ import main
from core.errors import InputError
from core.explain import import_explanations_csv
from core.human_eval import create_study, study_items
from core.scoring import Scores

NEURONS = [(0, 5), (0, 9), (1, 3), (2, 7), (3, 1)]


def write_table(path, texts: dict[str, str], neurons=NEURONS) -> str:
    """A CSV in Lee et al.'s layout: Layer, Neuron, Original, Summary; `texts` maps a column to a text stem."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["Layer,Neuron," + ",".join(texts)]
    lines += [f"{layer},{neuron}," + ",".join(f"{stem} {layer}-{neuron}." for stem in texts.values())
              for layer, neuron in neurons]  # fmt: skip
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_second_file_of_the_same_name_never_rewrites_what_raters_saw(tmp_path, capsys):
    db_file = str(tmp_path / "study.db")
    first = write_table(tmp_path / "runA" / "results.csv", {"Original": "rivers", "Summary": "water"})
    second = write_table(tmp_path / "runB" / "results.csv", {"Original": "dates", "Summary": "years"})
    assert cli(capsys, "import-explanations", first, "--explainer", "gpt-4", "--db", db_file)[0] == 0
    db = dbmod.connect(db_file)
    neurons = [f"{layer}:{neuron}" for layer, neuron in NEURONS]
    create_study(db, "S", "original,summary", neurons, ratings_per_item=1, seed=7, model="gpt2-xl")
    before = study_items(db, "S")
    scored = before[0]["left_explanation_id"]
    dbmod.save_score(db, scored, "hf:sim", "all_at_once", "valid", False, Scores(0.5, 0.1, 0.2, ()), [[1.0]], "ok")

    code, out, err = cli(capsys, "import-explanations", second, "--explainer", "gpt-4", "--db", db_file)
    assert code == 0 and "imported 10 explanation(s)" in out
    assert "warning: 5 neuron(s)" in err and "runA" in err  # arms naming gpt-4 now mix two files

    texts = {row["explanation"] for row in dbmod.list_explanations(db, "gpt2-xl")}
    assert {f"rivers {layer}-{neuron}" for layer, neuron in NEURONS} <= texts  # the first texts are still there
    assert {f"dates {layer}-{neuron}" for layer, neuron in NEURONS} <= texts
    assert len(texts) == 20
    after = study_items(db, "S")
    assert after == before
    for item in after:
        for side in ("left", "right"):
            stored = dbmod.get_explanation(db, item[f"{side}_explanation_id"])
            assert stored["explanation"] == item[f"{side}_text"]
            assert stored["params"]["path"] == str((tmp_path / "runA" / "results.csv").resolve())
    [joined] = db.conn.execute(
        "SELECT e.explanation FROM scores s JOIN explanations e ON e.id = s.explanation_id"
    ).fetchall()
    assert joined[0] == before[0]["left_text"]


def test_importing_the_same_file_twice_is_a_no_op_that_says_so(tmp_path, capsys):
    db_file = str(tmp_path / "x.db")
    path = write_table(tmp_path / "results.csv", {"Original": "a", "Summary": "b", "AVHS": "c", "Highlight": "d",
                                                   "HighlightSummary": "e"})  # fmt: skip
    args = ["import-explanations", path, "--explainer", "gpt-4", "--db", db_file]
    code, out, err = cli(capsys, *args)
    assert (code, err) == (0, f"created a new database at {db_file}\n") and "imported 25 explanation(s)" in out
    code, out, err = cli(capsys, *args)
    assert (code, err) == (0, "")
    assert out.strip() == f"nothing new: all 25 explanations of {path} are already stored"
    assert len(dbmod.list_explanations(dbmod.connect(db_file), status=None)) == 25


def test_an_imported_row_records_its_file_and_the_text_is_part_of_its_key(db, tmp_path):
    path = tmp_path / "results.csv"
    write_table(path, {"Summary": "rivers"}, neurons=[(4, 2)])
    report = import_explanations_csv(db, path, "gpt-4")
    assert (report.written, report.unchanged, report.warnings) == (1, 0, ())
    [row] = dbmod.list_explanations(db)
    assert row["params"]["path"] == str(path.resolve())
    assert row["params"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert (row["params"]["file"], row["params"]["row"], row["params"]["column"]) == ("results.csv", 1, "Summary")
    # The same file edited in place: the new text is a new row, the old one stays.
    write_table(path, {"Summary": "lakes"}, neurons=[(4, 2)])
    again = import_explanations_csv(db, path, "gpt-4")
    assert (again.written, again.unchanged) == (1, 0) and len(again.warnings) == 1
    assert [r["explanation"] for r in dbmod.list_explanations(db)] == ["lakes 4-2", "rivers 4-2"]


def test_rows_imported_before_the_text_was_in_the_key_are_recognised(db, tmp_path):
    path = tmp_path / "results.csv"
    write_table(path, {"Original": "rivers"}, neurons=[(0, 1)])
    legacy_key = hashlib.sha256(b"an older key: source, file name, model, neuron, format, explainer").hexdigest()
    fields = {"model": "gpt2-xl", "layer": 0, "neuron": 1, "format": "original", "explainer": "gpt-4"}
    dbmod.insert_explanations(db, [{**fields, "source": "imported", "explanation": "rivers 0-1",
                                    "params": {"file": "results.csv"}, "job_key": legacy_key}])  # fmt: skip
    report = import_explanations_csv(db, path, "gpt-4")
    assert (report.written, report.unchanged, report.warnings) == (0, 1, ())
    assert len(dbmod.list_explanations(db)) == 1


SCORE_TABLE = (
    ",layer,neuron,Original,Summary,Highlight,HighlightSummary,AVHS\n"
    "0,0,286,0.21,0.26,0.26,0.26,0.27\n"
    "1,10,1838,0.09,0.35,0.27,0.18,0.18\n"
    "2,20,193,0.16,0.24,0.17,0.18,0.2\n"
)


def test_a_score_table_is_refused_with_one_line(tmp_path, capsys):
    path = tmp_path / "test_neurons_results_score.csv"
    path.write_text(SCORE_TABLE, encoding="utf-8")
    db_file = tmp_path / "x.db"
    code, out, err = cli(capsys, "import-explanations", str(path), "--explainer", "gpt-4", "--db", str(db_file))
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1
    assert str(path) in err and "looks like a table of scores" in err and "Original = 0.21" in err
    assert dbmod.list_explanations(dbmod.connect(db_file), status=None) == []


def test_a_few_numbers_among_explanations_are_fine_but_mostly_numbers_are_not(db, tmp_path):
    path = tmp_path / "mixed.csv"
    rows = [f"0,{i},words about {i}." for i in range(9)] + ["0,9,1998."]
    path.write_text("Layer,Neuron,Summary\n" + "\n".join(rows) + "\n", encoding="utf-8")
    assert import_explanations_csv(db, path, "gpt-4").written == 10
    numbers = tmp_path / "numbers.csv"
    rows = [f"0,{i},{i * 0.1:.2f}" for i in range(9)] + ["0,9,", "0,10,words."]  # 9 of 10 filled cells
    numbers.write_text("Layer,Neuron,Summary\n" + "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"9 of its 10 format cells are numbers"):
        import_explanations_csv(db, numbers, "gpt-4")


@pytest.mark.parametrize(
    "name", ["test_neurons_results_score.csv", "test_neurons_results_adaCS.csv", "test_neurons_tokens.csv"]
)
def test_the_published_score_and_token_tables_are_refused(db, reference_dir, name):
    path = reference_dir / "lee2023" / "test_results" / name
    if not path.exists():
        pytest.skip(f"{path} not found")
    with pytest.raises(InputError, match="looks like a table of scores or token counts"):
        import_explanations_csv(db, path, "gpt-3.5-turbo")
    assert dbmod.list_explanations(db, status=None) == []


def test_mixing_sources_under_one_explainer_label_is_a_warning(db, tmp_path):
    first = tmp_path / "a" / "top.csv"
    write_table(first, {"Summary": "rivers"}, neurons=[(0, 1), (0, 2)])
    import_explanations_csv(db, first, "gpt-4")
    other_label = tmp_path / "b" / "top.csv"
    write_table(other_label, {"Summary": "dates"}, neurons=[(0, 1), (0, 2)])
    assert import_explanations_csv(db, other_label, "gpt-4-run2").warnings == ()
    overlapping = tmp_path / "c" / "top.csv"
    write_table(overlapping, {"Summary": "colors", "Original": "hues"}, neurons=[(0, 2), (0, 3)])
    report = import_explanations_csv(db, overlapping, "gpt-4")
    [warning] = report.warnings
    assert warning.startswith(f"1 neuron(s) of {overlapping} already had summary explanations by gpt-4 from")
    assert str(first.resolve()) in warning and "another --explainer label" in warning


def test_a_huge_field_is_one_line_naming_the_file(tmp_path, capsys):
    path = tmp_path / "huge.csv"
    path.write_text('Layer,Neuron,Summary\n0,1,"' + "x" * 300_000 + '"\n0,2,fine.\n', encoding="utf-8")
    db_file = tmp_path / "x.db"
    code, out, err = cli(capsys, "import-explanations", str(path), "--explainer", "gpt-4", "--db", str(db_file))
    assert (code, out) == (2, "")
    assert len(err.strip().splitlines()) == 1 and len(err) < 400
    assert "huge.csv, row 1" in err and "300,000 characters" in err
    layer = tmp_path / "layer.csv"
    layer.write_text("Layer,Neuron,Summary\n" + "9" * 200_000 + "x,1,fine.\n", encoding="utf-8")
    code, out, err = cli(capsys, "import-explanations", str(layer), "--explainer", "gpt-4", "--db", str(db_file))
    assert code == 2 and len(err) < 400 and "layer.csv, row 1: layer" in err


def test_a_file_grown_by_a_row_imports_only_that_row(tmp_path, capsys):
    path = write_table(tmp_path / "r.csv", {"Summary": "s"}, neurons=[(0, 1), (0, 2)])
    db_file = str(tmp_path / "x.db")
    cli(capsys, "import-explanations", path, "--explainer", "gpt-4", "--db", db_file)
    write_table(tmp_path / "r.csv", {"Summary": "s"}, neurons=[(0, 1), (0, 2), (0, 3)])
    code, out, _ = cli(capsys, "import-explanations", path, "--explainer", "gpt-4", "--db", db_file)
    assert code == 0
    assert out.strip() == f"imported 1 explanation(s) of gpt2-xl by gpt-4 from {path}; 2 already stored"


# --- Imports of the code itself ----------------------------------------------------------------------------------

CORE = Path(__file__).resolve().parent.parent / "core"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _imported(path: Path, modules: set[str]) -> set[str]:
    """The core modules `path` imports anywhere, in functions too (a late import is still a circle), but not under
    `if TYPE_CHECKING:`. `from core.llm import x` imports core.llm.x when that is a module, else core.llm."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text(encoding="utf-8"))]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            stack.extend(getattr(node, "orelse", []))
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found |= {target} if target in modules else {base} if base in modules else set()
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    """Module of core → the modules of core it imports."""
    paths = sorted(CORE.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    return {_module_name(path): _imported(path, modules) for path in paths}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every set of modules that import one another round a circle (strongly connected, more than one)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        order[module] = low[module] = len(order)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in order:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], order[other])
        if low[module] == order[module]:
            component = [stack.pop()]
            while component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    return cycles


def test_no_module_of_core_imports_one_that_imports_it_back():
    graph = import_graph()
    assert {"core.llm", "core.llm.api", "core.llm.hf", "core.simulate.local"} <= set(graph)
    assert import_cycles(graph) == []
    # Implementations import their package's shared base, never the registry that imports them.
    assert graph["core.llm.hf"] & {"core.llm", "core.llm.api"} == set()
    assert graph["core.simulate.api"] & {"core.simulate", "core.simulate.local"} == set()
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_llm_and_simulator_registries_load_no_torch():
    code = "import sys, core.llm, core.simulate, core.explain; sys.exit('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=CORE.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr or "importing core.llm or core.simulate loaded torch"
