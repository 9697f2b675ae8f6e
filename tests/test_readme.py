"""The README's command block, run: every command in order, as a user would type it, in a fresh folder with a tiny
fixture database, the fake OpenAI server (tests/fake_openai.py) and a tiny local chat model as `./my-model`.
Commands that need the network or a GPU, or minutes of CPU, are skipped, each with its reason."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
from pathlib import Path

import click
import pytest

from core import db as dbmod
from core.models import DEFAULT_MODEL_NAME
from core.records import ActivationRecord, NeuronId, NeuronRecord, NeuronStats
from tests.test_openai_import import write_neuron_file
from tests.test_simulate_api import _echo_handler

REPO_ROOT = Path(__file__).resolve().parent.parent
CODE = "readme-access-code"
# A command containing the key is not run, for the reason given.
SKIPPED = {
    "hf:openwebtext": "needs the network (a Hugging Face dataset) and a GPU",
    "collect --model default": "runs the bundled model over 300k tokens, minutes on 2 CPU cores; `collect` is tested "
    "on tiny models in tests/test_activations.py",
}
WORDS = [" the", " cat", " sat", " on", " mat", " river", " red", " year", " 1999", ","]


def readme_commands() -> list[str]:
    """The commands of the README's "Command line" block, continuation lines joined, comments left to bash."""
    section = (REPO_ROOT / "README.md").read_text(encoding="utf-8").split("\n## Command line\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section.split("\n## ", 1)[0], re.DOTALL)
    assert block is not None, "the README's Command line section has no ```bash block"
    commands, current = [], ""
    for line in block.group(1).splitlines():
        current = f"{current} {line.strip()}" if current else line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        if current and not current.startswith("#"):
            commands.append(current)
        current = ""
    return commands


def _neuron(model: str, layer: int, index: int, seed: int) -> NeuronRecord:
    rng = random.Random(seed)

    def record(peak: float) -> ActivationRecord:
        tokens = tuple(rng.choice(WORDS) for _ in range(12))
        return ActivationRecord(tokens, tuple(peak if t == " year" else rng.random() * 0.1 for t in tokens))

    top = tuple(sorted((record(2 + rng.random() * 3) for _ in range(20)), key=lambda r: -r.max_activation))
    stats = NeuronStats(0.2, 0.5, top[0].max_activation, {0.5: 1.0, 0.9: 2.0, 0.99: 3.0, 0.999: 4.0})
    return NeuronRecord(model, NeuronId(layer, index), top, tuple(record(0.5) for _ in range(15)), stats)


def _explanation_table(path: Path, prefix: str) -> None:
    header = "Layer,Neuron,Original,Summary,Highlight,HighlightSummary,AVHS"
    rows = [f"0,{n},{prefix} years in dates {n},{prefix} calendar years {n},{prefix} a year token {n},"
            f"{prefix} years and dates {n},{prefix} year mentions {n}" for n in (426, 722)]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def _fixtures(folder: Path, tiny_chat_model: Path, database: Path) -> None:
    """What the README's commands read: a database with the default model's neurons 3:17 and 3:42 (as `collect`
    leaves them), and the files the commands name, relative to the folder they run in."""
    db = dbmod.connect(database)
    dbmod.write_neurons(db, DEFAULT_MODEL_NAME, [_neuron(DEFAULT_MODEL_NAME, 3, i, i) for i in (17, 42)], "test")
    db.conn.close()
    (folder / "my-model").symlink_to(tiny_chat_model)
    (folder / "core").symlink_to(REPO_ROOT / "core")
    (folder / ".venv").symlink_to(REPO_ROOT / ".venv")
    write_neuron_file(folder / "records" / "0" / "426.json")
    scored = {"explanation": "the word unlikely", "scored_simulation": {"ev_correlation_score": 0.4}}
    (folder / "explanations" / "0").mkdir(parents=True)
    (folder / "explanations" / "0" / "426.jsonl").write_text(
        json.dumps({"neuron_id": {"layer_index": 0, "neuron_index": 426}, "scored_explanations": [scored]}) + "\n"
    )
    reference = folder.parent / "shared" / "reference" / "lee2023"
    (reference / "inputs").mkdir(parents=True)
    (reference / "inputs" / "test_neurons.csv").write_text(
        "layer,neuron,score,explanation\n0,426,0.5,unlikely events\n0,722,0.3,years\n", encoding="utf-8"
    )
    _explanation_table(reference / "results" / "random_GPT4_results.csv", "paper:")
    _explanation_table(folder / "runA" / "results.csv", "rerun:")
    (folder / "results_score.csv").write_text("layer,neuron,Original,Summary\n0,426,0.4,0.5\n0,722,0.2,0.3\n")
    target = _neuron(DEFAULT_MODEL_NAME, 3, 17, 1)
    (folder / "R.json").write_text(json.dumps({"records": [r.to_json() for r in target.top[:5]]}))
    (folder / "S.json").write_text(json.dumps(target.stats.to_json()))


def _ratings_file(folder: Path, database: Path) -> None:
    """ratings.csv for `import-ratings`: alice's choice on every item of study S, written once S exists."""
    db = dbmod.connect(database)
    study = dbmod.get_study(db, "S")
    lines = ["item_id,rater,choice"] + [f"{item['id']},alice,left" for item in dbmod.list_items(db, study["id"])]
    db.conn.close()
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_every_readme_command_runs(tmp_path: Path, tiny_chat_model: Path, openai_env) -> None:
    commands = readme_commands()
    assert any(command.startswith("python -m core study create") for command in commands)
    folder = tmp_path / "repo"
    folder.mkdir()
    database = tmp_path / "readme.db"
    _fixtures(folder, tiny_chat_model, database)
    openai_env.completions_handler = _echo_handler({})  # a vLLM-like /completions: echo with prompt logprobs
    env = {
        **os.environ,
        "PATH": f"{REPO_ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "EVAL_DB": str(database),
        "CODE": CODE,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    skipped, ran = [], []
    for command in commands:
        reason = next((why for key, why in SKIPPED.items() if key in command), None)
        if reason is not None:
            skipped.append((command, reason))
            continue
        if "import-ratings" in command:
            _ratings_file(folder, database)
        done = subprocess.run(
            ["bash", "-c", command], cwd=folder, env=env, input=f"{CODE}\n", capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        ran.append(command)
    assert len(skipped) == len(SKIPPED), skipped  # each reason is used, so none is stale
    assert len(ran) >= 30
    db = dbmod.connect(database)
    assert [row["name"] for row in dbmod.list_raters(db)] == ["alice", "bob"]
    assert dbmod.list_raters(db)[1]["removed"] is True
    assert (folder / "S_export" / "S_ratings.csv").exists()
    db.conn.close()


def test_the_readme_block_is_read_whole() -> None:
    commands = readme_commands()
    run_line = next(command for command in commands if command.startswith("python -m core run "))
    assert run_line.endswith("--method completions_echo")  # a continued line is one command
    assert not any(command.startswith("#") for command in commands)
    with pytest.raises(StopIteration):
        next(command for command in commands if command.endswith("\\"))


def readme_command_lines() -> list[list[str]]:
    """Every `python -m core …` (or `neuron-workbench …`) command of every ```bash block of the README, as argv after
    the program: continuation lines joined, comments dropped, a pipe's other side left out."""
    import shlex

    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            tokens = list(lexer)
            for at, token in enumerate(tokens):
                if token == "neuron-workbench" or (
                    token.endswith("python") and tokens[at + 1 : at + 3] == ["-m", "core"]
                ):
                    start = at + (1 if token == "neuron-workbench" else 3)
                    end = next((i for i in range(start, len(tokens)) if set(tokens[i]) <= set("();<>|&")), len(tokens))
                    found.append(tokens[start:end])
    return found


def parse_without_running(argv: list[str]) -> None:
    """Parse `argv` as the CLI would, down to the command it names, checking command names, flag names, required
    flags, choices and types (click raises a UsageError), and build the options objects; run nothing."""
    from core.cli import cli

    command: click.Command = cli
    ctx: click.Context | None = None
    name = "python -m core"
    while isinstance(command, click.Group):
        at = _first_argument(command, argv)
        if at is None:
            break
        if argv[at] not in command.commands:
            raise click.UsageError(f"No such command {argv[at]!r}", ctx)
        ctx = command.make_context(name, argv[: at + 1], parent=ctx)
        name, command, argv = argv[at], command.commands[argv[at]], argv[at + 1 :]
    command.make_context(name, argv, parent=ctx)


def _first_argument(group: click.Group, argv: list[str]) -> int | None:
    """Where the subcommand's name is in `argv`: the first word that is neither a flag of the group nor its value."""
    flags = {flag: param for param in group.params if isinstance(param, click.Option) for flag in param.opts}
    at = 0
    while at < len(argv):
        arg = argv[at]
        if not arg.startswith("-"):
            return at
        param = flags.get(arg.split("=", 1)[0])
        at += 1 if param is None or param.is_flag or "=" in arg else 2
    return None


def test_every_readme_command_line_parses() -> None:
    """A renamed or removed flag, or a command the README names that the CLI lacks, fails here without running."""
    lines = readme_command_lines()
    assert len(lines) >= 40 and ["study", "show", "S"] in lines and ["explanations", "show", "1"] in lines
    for argv in lines:
        argv = ["0:1" if arg == "…" else arg for arg in argv]  # the README's placeholder for a neuron list
        parse_without_running(argv)
    for argv, message in (
        (["score", "--simulators", "hf:x"], "No such option '--simulators'"),
        (["explain", "--neurons", "0:1"], "Missing option '--explainer'"),
        (["study", "shows", "S"], "No such command 'shows'"),
        (["explanations", "--json", "shw", "1"], "No such command 'shw'"),
        (["score", "--scorer", "nonsense"], "'nonsense' is not one of"),
    ):
        with pytest.raises(click.UsageError) as info:
            parse_without_running(argv)
        assert message in info.value.format_message(), argv
