"""Flags that several commands share, as decorators (`@db_option`, `@neuron_flags(required=True)` …), and the one
function that builds each options object from its flags (`collect_options`, `explain_options`, `simulator_options`
…). A flag that feeds a builder reaches the command only inside the builder's result (core/cli/base.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from core import config
from core.cli.base import F, option
from core.errors import InputError

if TYPE_CHECKING:
    from core.activations import CollectOptions
    from core.explain import ExplainOptions
    from core.llm import ApiOptions, LocalModelOptions
    from core.prompts import FormatOptions
    from core.records import ActivationRecord, NeuronId, NeuronStats
    from core.scorers import ScorerOptions
    from core.simulate import SimulatorOptions

DB_KEY = "core.cli.db"  # ctx.meta: the --db of the command that runs, and whether its file existed before
DB_EXISTED_KEY = "core.cli.db_existed"


def compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """One decorator of several; the options show in --help in the order given."""

    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


# --- reading what flags name ---------------------------------------------------------------------------------------


def split_list(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def read_json(path: str, what: str) -> Any:
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} file {path} is not valid JSON: {exc}") from None


def neurons_from_file(path: str) -> list[NeuronId]:
    """Neurons from a CSV with columns layer,neuron (or Layer,Neuron), or a text file of layer:index entries."""
    from core import records

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read neuron file {path}: {exc}") from None
    return records.neurons_from_file(path, data)


# --- the database, the model, JSON output ------------------------------------------------------------------------


def _remember_db(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Note the database file and whether it exists before the command runs (for "created a new database")."""
    if not ctx.resilient_parsing:
        ctx.meta[DB_KEY] = value
        ctx.meta[DB_EXISTED_KEY] = config.db_path(value).exists()
    return value


db_option = option(
    "--db",
    default=None,
    callback=_remember_db,
    help=f"SQLite file (default: ${config.ENV_DB}, else evaluations.db at the repo root)",
)


def json_option(help: str) -> Callable[[F], F]:
    """`--json`, received as `as_json`."""
    return option("--json", "as_json", is_flag=True, help=help)


def model_option(default: str | None = config.DEFAULT_MODEL, help: str | None = None) -> Callable[[F], F]:
    return option("--model", default=default, help=help)


# --- which neurons -------------------------------------------------------------------------------------------------


def selected_neurons(neurons: str | None = None, neuron_file: str | None = None) -> list[NeuronId] | None:
    """The neurons of --neurons or --neuron-file; None when neither is given."""
    from core.records import parse_neurons

    if neurons:
        return parse_neurons(neurons)
    if neuron_file:
        return neurons_from_file(neuron_file)
    return None


def neuron_flags(required: bool) -> Callable[[F], F]:
    """--neurons L:N,… or --neuron-file CSV (one of them when `required`), received as `selected_neurons`."""
    one = {"one_of": "neurons", "one_required": required, "feeds": selected_neurons}
    return compose(
        option("--neurons", default=None, help="layer:index list, e.g. 3:17,3:42", **one),
        option("--neuron-file", default=None, help="CSV with columns layer,neuron", **one),
    )


def records_flags(neuron_help: str) -> Callable[[F], F]:
    """--records FILE, or --neuron L:N (with --model) to read a stored neuron's records instead."""
    one = {"one_of": "records", "one_required": True}
    return compose(
        option(
            "--records",
            default=None,
            help='JSON file: {"records": [{"tokens": [...], "activations": [...]}, ...]}, or a list',
            **one,
        ),
        option("--neuron", default=None, help=f"layer:index of a stored neuron: {neuron_help}", **one),
        model_option(help="subject model of --neuron (default: MiniLM)"),
    )


def load_records(
    db: str | None, records: str | None, neuron: str | None, model: str, split: str
) -> tuple[list[ActivationRecord], NeuronStats | None]:
    """(records, stats or None) from --records, or the `split` records and stats of the stored --neuron."""
    from core import db as dbmod
    from core.models import resolve_model_name
    from core.records import NeuronId, records_from_json

    if records:
        return records_from_json(read_json(records, "records")), None
    database = dbmod.connect(db, create=False)
    record = dbmod.get_neuron(database, resolve_model_name(model), NeuronId.parse(neuron or ""))
    return record.split(split), record.stats


# --- collection ----------------------------------------------------------------------------------------------------


def collect_options(
    max_tokens: int = config.DEFAULT_MAX_TOKENS,
    excerpt_len: int = config.DEFAULT_EXCERPT_LEN,
    top_k: int = config.DEFAULT_TOP_K,
    random_k: int = config.DEFAULT_RANDOM_K,
    seed: int = config.DEFAULT_SEED,
    batch_size: int = config.DEFAULT_BATCH_SIZE,
    quantile_sample: int = config.DEFAULT_QUANTILE_SAMPLE,
    device: str | None = None,
    dtype: str | None = None,
    device_map: str | None = None,
    collect_tokens: int | None = None,
) -> CollectOptions:
    """The CollectOptions of `collect`'s flags; `run` collects a missing layer with its --collect-tokens and --device
    (its --max-tokens and --seed are the explainer's), the rest as collect's defaults."""
    from core.activations import CollectOptions

    return CollectOptions(
        max_tokens=collect_tokens if collect_tokens is not None else max_tokens,
        excerpt_len=excerpt_len,
        top_k=top_k,
        random_k=random_k,
        seed=seed,
        batch_size=batch_size,
        quantile_sample=quantile_sample,
        device=device,
        dtype=dtype,
        device_map=device_map,
    )


def subject_device_option(help: str, feeds: Callable[..., object] | None = None) -> Callable[[F], F]:
    return option(
        "--device",
        default=None,
        feeds=feeds,
        help=f"{help}: cpu, cuda, cuda:1 … (default: cuda when available)",
    )


# --- explainers ----------------------------------------------------------------------------------------------------


def api_options(
    concurrency: int | None = None, timeout: float | None = None, max_attempts: int | None = None
) -> ApiOptions:
    """ApiOptions from the explainer's --concurrency, --timeout and --max-attempts, or the simulator's
    --simulator-concurrency and --simulator-timeout (None: the defaults)."""
    from core.llm import ApiOptions

    defaults = ApiOptions()
    return ApiOptions(
        timeout_s=timeout if timeout is not None else defaults.timeout_s,
        concurrency=concurrency if concurrency is not None else defaults.concurrency,
        max_attempts=max_attempts if max_attempts is not None else defaults.max_attempts,
    )


def local_model_options(
    device: str | None = None, dtype: str | None = None, batch_size: int | None = None
) -> LocalModelOptions:
    """The LocalModelOptions of the explainer (--explainer-device) or of the simulator (--simulator-device,
    --simulator-dtype, --sim-batch-size): one model, one set of flags."""
    from core.llm import LocalModelOptions

    return LocalModelOptions(device=device, dtype=dtype, batch_size=batch_size)


def format_options(distinct_lists: bool = False, merge_spans: bool = False) -> FormatOptions:
    from core.prompts import FormatOptions

    return FormatOptions(distinct_lists=distinct_lists, merge_spans=merge_spans)


def explain_options(
    samples: int = 1,
    no_cache: bool = False,
    explainer_device: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    max_tokens: int | None = None,
    seed: int | None = None,
    cutoff_mode: str | None = None,
    cutoff: str | None = None,
    few_shot: str | None = None,
    distinct_lists: bool = False,
    merge_spans: bool = False,
    concurrency: int | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
) -> ExplainOptions:
    """The ExplainOptions of `explainer_flags` (explain, run); `puzzles` has only --samples, --no-cache and
    --explainer-device, and keeps the rest as ExplainOptions' defaults (no cutoff: the puzzles choose their own)."""
    from core import llm, prompts
    from core.explain import ExplainOptions

    defaults = llm.Sampling()
    sampling = llm.Sampling(
        defaults.temperature if temperature is None else temperature,
        defaults.top_p if top_p is None else top_p,
        defaults.max_tokens if max_tokens is None else max_tokens,
        seed=seed,
    )
    given_cutoff = cutoff_mode is not None or cutoff is not None  # None is the paper's quantile 0.99 in explain
    return ExplainOptions(
        sampling=sampling,
        samples=samples,
        cutoff=prompts.Cutoff.parse(cutoff_mode, cutoff) if given_cutoff else None,
        few_shot=few_shot,
        format_options=format_options(distinct_lists, merge_spans),
        use_cache=not no_cache,
        api=api_options(concurrency, timeout, max_attempts),
        local=local_model_options(device=explainer_device),
    )


def explainer_device_option(f: F) -> F:
    return option(
        "--explainer-device",
        default=None,
        feeds=explain_options,
        help="hf: explainers: cpu, cuda … (default: cuda when available)",
    )(f)


def format_variant_flags(feeds: Callable[..., object]) -> Callable[[F], F]:
    """The project's rendering variants of the natural formats; the defaults are the paper's (docs/METHOD.md §8)."""
    return compose(
        option(
            "--distinct-lists",
            is_flag=True,
            feeds=feeds,
            help="summary/highlight_summary/avhs lists: each token once",
        ),
        option(
            "--merge-spans", is_flag=True, feeds=feeds, help="highlight: one pair of brackets per run of marked tokens"
        ),
    )


def cutoff_flags(value_help: str, feeds: Callable[..., object] | None = None) -> Callable[[F], F]:
    from core import prompts

    return compose(
        option(
            "--cutoff-mode",
            default=None,
            type=click.Choice(prompts.CUTOFF_MODES),
            feeds=feeds,
            help=f"how highly activating tokens are chosen (default: {prompts.DEFAULT_CUTOFF.mode})",
        ),
        option("--cutoff", default=None, feeds=feeds, help=value_help),
    )


def explainer_flags(f: F) -> F:
    """Formats, explainer, sampling, cutoff and API flags, shared by `explain` and `run`; all but --formats and
    --explainer are received as `explain_options`."""
    from core import llm, prompts

    defaults = llm.Sampling()
    feeds = {"feeds": explain_options}
    return compose(
        option("--formats", default=",".join(prompts.FORMATS), help="comma-separated prompt formats (default: all)"),
        option(
            "--explainer",
            required=True,
            help=f"{' or '.join(b.spec for b in llm.BACKENDS.values())}, e.g. openai:gpt-4o-mini or hf:./my-chat-model",
        ),
        option("--samples", type=int, default=1, help="explanations per neuron and format (1)", **feeds),
        option(
            "--temperature",
            type=float,
            default=defaults.temperature,
            help=f"0 = greedy (default {defaults.temperature})",
            **feeds,
        ),
        option(
            "--top-p", type=float, default=defaults.top_p, help=f"nucleus sampling (default {defaults.top_p})", **feeds
        ),
        option(
            "--max-tokens",
            type=int,
            default=defaults.max_tokens,
            help=f"explanation length limit (default {defaults.max_tokens})",
            **feeds,
        ),
        option("--seed", type=int, default=None, help="sampling seed; sample k uses seed + k", **feeds),
        cutoff_flags("quantile level, fraction of the max, or raw value", feeds=explain_options),
        option("--few-shot", default=None, help="few-shot JSON file, or `none` (default: bundled examples)", **feeds),
        format_variant_flags(explain_options),
        option(
            "--no-cache",
            is_flag=True,
            help="ask the LLM again for jobs still to do, even when its answer is cached (stored explanations are "
            "kept)",
            **feeds,
        ),
        option(
            "--concurrency",
            type=int,
            default=None,
            help=f"parallel API requests (default {llm.DEFAULT_CONCURRENCY})",
            **feeds,
        ),
        option(
            "--timeout",
            type=float,
            default=None,
            help=f"seconds per API request ({llm.DEFAULT_TIMEOUT_S:g})",
            **feeds,
        ),
        option(
            "--max-attempts",
            type=int,
            default=None,
            help=f"attempts per API request ({llm.DEFAULT_MAX_ATTEMPTS})",
            **feeds,
        ),
        explainer_device_option,
    )(f)


# --- simulators and scorers ----------------------------------------------------------------------------------------


def simulator_options(
    simulator_device: str | None = None,
    simulator_dtype: str | None = None,
    sim_batch_size: int | None = None,
    no_prefix_cache: bool = False,
    top_logprobs: int | None = None,
    simulation_few_shot: str | None = None,
    simulator_concurrency: int | None = None,
    simulator_timeout: float | None = None,
) -> SimulatorOptions:
    """The SimulatorOptions of `simulator_flags`: the model named by --simulator reads its own part (local for hf:,
    --simulator-concurrency, --simulator-timeout and --top-logprobs for openai:)."""
    from core.simulate import SimulatorOptions

    return SimulatorOptions(
        api=api_options(concurrency=simulator_concurrency, timeout=simulator_timeout),
        local=local_model_options(device=simulator_device, dtype=simulator_dtype, batch_size=sim_batch_size),
        few_shot=simulation_few_shot,
        reuse_prefix=not no_prefix_cache,
        top_logprobs=top_logprobs,
    )


def simulator_flags(required: bool = True) -> Callable[[F], F]:
    """--simulator and --method, and the simulator's own flags, received as `simulator_options`."""
    from core.simulate import SIMULATORS

    feeds = {"feeds": simulator_options}
    return compose(
        option(
            "--simulator",
            required=required,
            default=None,
            help="hf:PATH (local model) or openai:MODEL (API server)",
        ),
        option(
            "--method",
            default=None,
            type=click.Choice(list(SIMULATORS)),
            help="simulation method (default: all_at_once for hf:, chat_logprobs for openai:; "
            "completions_echo for vLLM-style servers)",
        ),
        option(
            "--simulator-device",
            default=None,
            help="hf: simulators and hf: detection/fuzzing LLMs: cpu, cuda … (default: cuda when available)",
            **feeds,
        ),
        option(
            "--simulator-dtype",
            default=None,
            help="hf: simulator: auto, float32, bfloat16, float16 (default: auto)",
            **feeds,
        ),
        option(
            "--sim-batch-size",
            type=int,
            default=None,
            help="hf: simulator: excerpts per forward pass (16; LLMs 8)",
            **feeds,
        ),
        option("--no-prefix-cache", is_flag=True, help="local simulator: recompute the shared prefix", **feeds),
        option("--top-logprobs", type=int, default=None, help="API simulators: top logprobs to request", **feeds),
        option(
            "--simulator-concurrency",
            type=int,
            default=None,
            help="openai: simulators and detection/fuzzing LLMs: requests in flight, shared by the explanations "
            "scored at once (default 4)",
            **feeds,
        ),
        option(
            "--simulator-timeout",
            type=float,
            default=None,
            help="openai: simulators and detection/fuzzing LLMs: seconds per request (default 60)",
            **feeds,
        ),
        option(
            "--simulation-few-shot",
            default=None,
            help="simulation few-shot JSON, or `none` (default: bundled)",
            **feeds,
        ),
    )


def split_option(help: str) -> Callable[[F], F]:
    from core.records import SPLITS

    return option("--split", default="valid", type=click.Choice(list(SPLITS)), help=help)


def scoring_flags(f: F) -> F:
    """Which records a simulation is scored on, calibration, and the similarity to the reference explanation."""
    from core.similarity import DEFAULT_EMBEDDER

    return compose(
        split_option("records to score on (valid)"),
        option("--calibrate", is_flag=True, help="fit a·EV + b on the calibration split first"),
        option(
            "--reference",
            default="openai",
            type=click.Choice(["openai", "none"]),
            help="similarity to the imported reference",
        ),
        option(
            "--embedder",
            default=DEFAULT_EMBEDDER,
            help="minilm or openai:EMBEDDING_MODEL (similarity; embedding scorer)",
        ),
    )(f)


def scorer_options(
    activating_quantile: float = 0.99,
    activating_threshold: float | None = None,
    activating: int | None = None,
    non_activating: int | None = None,
    excerpts_per_call: int | None = None,
    scorer_seed: int = 0,
) -> ScorerOptions:
    """The ScorerOptions of `scorer_flags`."""
    from core.scorers import ScorerOptions

    defaults = ScorerOptions()
    return ScorerOptions(
        activating_quantile=activating_quantile,
        activating_threshold=activating_threshold,
        n_activating=defaults.n_activating if activating is None else activating,
        n_non_activating=defaults.n_non_activating if non_activating is None else non_activating,
        excerpts_per_call=defaults.excerpts_per_call if excerpts_per_call is None else excerpts_per_call,
        seed=scorer_seed,
    )


def scorer_flags(f: F) -> F:
    """--scorer and its settings (docs/METHOD.md §10); the settings are received as `scorer_options`."""
    from core.scorers import DEFAULT_SCORER, SCORERS
    from core.scorers.base import DEFAULT_ACTIVATING, DEFAULT_EXCERPTS_PER_CALL, DEFAULT_NON_ACTIVATING

    section = {"section": "scorers (docs/METHOD.md §10)"}
    feeds = {"feeds": scorer_options, **section}
    return compose(
        option(
            "--scorer",
            default=DEFAULT_SCORER,
            type=click.Choice(list(SCORERS)),
            help="simulation (default, needs --simulator), detection or fuzzing (an LLM given by --simulator), "
            "embedding (no LLM; --embedder)",
            **section,
        ),
        option(
            "--activating-quantile",
            type=float,
            default=0.99,
            help="an excerpt is activating when its max is above this quantile of the neuron's per-excerpt maxima "
            "(stored: 0.5, 0.9, 0.99, 0.999; default 0.99)",
            **feeds,
        ),
        option("--activating-threshold", type=float, default=None, help="… or above this raw value", **feeds),
        option(
            "--activating",
            type=int,
            default=DEFAULT_ACTIVATING,
            help=f"activating excerpts per neuron ({DEFAULT_ACTIVATING})",
            **feeds,
        ),
        option(
            "--non-activating",
            type=int,
            default=DEFAULT_NON_ACTIVATING,
            help=f"non-activating excerpts ({DEFAULT_NON_ACTIVATING})",
            **feeds,
        ),
        option(
            "--excerpts-per-call",
            type=int,
            default=DEFAULT_EXCERPTS_PER_CALL,
            help=f"detection/fuzzing ({DEFAULT_EXCERPTS_PER_CALL})",
            **feeds,
        ),
        option("--scorer-seed", type=int, default=0, help="shuffles excerpts into calls (0)", **feeds),
        option("--scorer-prompt", default=None, help="detection/fuzzing prompt JSON (default: bundled)", **section),
        option("--no-cache", is_flag=True, help="detection/fuzzing: ask the LLM again", **section),
    )(f)


# --- studies -------------------------------------------------------------------------------------------------------


def summary_flags(f: F) -> F:
    """Which raters and which simulation scores a study's summary uses (`study summary`, `export`)."""
    return compose(
        option(
            "--min-gold-accuracy",
            type=float,
            default=None,
            help="leave out raters whose gold-item accuracy is lower",
        ),
        option("--simulator", default=None, help="whose simulation scores to compare with (default: most common)"),
    )(f)
