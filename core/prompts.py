"""Explanation prompt formats: activation records → OpenAI-style chat messages (docs/METHOD.md §2).

Every format is one `PromptFormat` in the `FORMATS` registry; the CLI and the app list formats from it, so a new
format is added there and nowhere else. Everything here is a pure function of its arguments, except
`load_few_shot` and `read_data_file`, which read files: the one reader of the project's few-shot and scorer-prompt
files (pydantic models through core/datafiles.py).

By default every format renders as Lee et al.'s code does (docs/METHOD.md §2): the same task instruction in all five
system messages, Bills et al.'s `<start>`/`<end>` blocks for original, and for the natural formats (summary,
highlight, highlight_summary, avhs) one block per record, `\n Text excerpt - A:\n<start>…<end> \n`, each marked
token in its own brackets (`[ New][ York]`) and every marked occurrence listed in text order, joined by `,`.
`FormatOptions` offers the project's variants (de-duplicated lists, merged bracket spans); none is the default.

Deliberate deviations from the paper's code (docs/METHOD.md §7), which fix its bugs:
- inputs, the shared few-shot data included, are never modified (the paper's AVHS normalised them in place);
- records are labelled A..Z, then AA, AB, … (the paper stopped at 26);
- brackets and backslashes that belong to the text are escaped in highlighted text (`\\[`, `\\]`, `\\\\`), so a
  highlight can always be told from a literal bracket;
- in the original format's `token<TAB>n` lines, tabs, newlines and other control characters inside a token are
  escaped (`escape_token`) so each token stays on one line.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, Field, FiniteFloat, InstanceOf, StrictStr, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.datafiles import DataModel, parse, read_json
from core.errors import InputError, LLMError
from core.records import ActivationRecord, NeuronStats, normalize

BUNDLED_FEW_SHOT = Path(__file__).resolve().parent / "data" / "few_shot.json"
EXPLANATION_PREFIX = "the main thing this neuron does is find"
# Bills et al. repeat the non-zero lines when fewer than this share of the shown values is non-zero (docs/METHOD.md §2).
REPEAT_NON_ZERO_BELOW = 0.2
# The paper joins the items of a token list with a bare comma (docs/METHOD.md §2).
LIST_SEPARATOR = ","

Messages = list[dict[str, str]]
FileModel = TypeVar("FileModel", bound=DataModel)


@dataclass(frozen=True)
class FormatOptions:
    """Variants of the natural formats' rendering. The defaults are the paper's (docs/METHOD.md §2).

    - `distinct_lists`: token lists hold each distinct marked token once, whitespace-trimmed, in order of first
      appearance; a token that is blank or holds a comma, quote, tab or newline is written as a JSON string. AVHS
      then lists each distinct token with its highest value. (Default: every marked occurrence, raw, in text order.)
    - `merge_spans`: consecutive marked tokens share one pair of brackets, with leading and trailing whitespace kept
      outside (` [New York]`). (Default: each marked token in its own brackets, `[ New][ York]`.)
    """

    distinct_lists: bool = False
    merge_spans: bool = False


PAPER_OPTIONS = FormatOptions()

# records, their 0-10 values (one list per record), raw-activation cutoff threshold, options → BODY
BodyFn = Callable[[Sequence[ActivationRecord], Sequence[Sequence[int]], float, FormatOptions], str]


# ---------------------------------------------------------------------------------------------------------------
# Cutoff: which raw activations count as "highly activating" in the natural formats
# ---------------------------------------------------------------------------------------------------------------

CUTOFF_MODES = ("quantile", "relative", "absolute")
# Value used when only a mode is given; absolute has no sensible default across neurons.
CUTOFF_DEFAULT_VALUES: dict[str, float | None] = {"quantile": 0.99, "relative": 0.5, "absolute": None}


@dataclass(frozen=True)
class Cutoff:
    """How the natural formats decide that a token is highly activating: raw activation > threshold (the cutoff
    modes of docs/METHOD.md §2).

    - `quantile` (the paper's rule, and our default): `value` is a quantile level (default 0.99); the threshold is
      the neuron's boundary at that level of its per-excerpt maximum activations over the whole corpus, taken from
      `NeuronStats.quantiles`. Comparable across the records of one neuron, needs the neuron's stats.
    - `relative`: the threshold is `value` × M, with M the largest relu activation of the records shown
      (0 ≤ value ≤ 1). Needs no stats.
    - `absolute`: the threshold is `value` itself, in the neuron's raw activation units.
    """

    mode: str
    value: float

    def __post_init__(self) -> None:
        if self.mode not in CUTOFF_MODES:
            raise InputError(f"cutoff mode {self.mode!r} is unknown; choose one of {', '.join(CUTOFF_MODES)}")
        value = self.value
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InputError(f"cutoff value {value!r} is not a finite number")
        if self.mode == "quantile" and not 0 < value < 1:
            raise InputError(f"quantile cutoff {value} must be a quantile level between 0 and 1, e.g. 0.99")
        if self.mode == "relative" and not 0 <= value <= 1:
            raise InputError(f"relative cutoff {value} must be a fraction of the maximum between 0 and 1, e.g. 0.5")
        object.__setattr__(self, "value", float(value))

    @classmethod
    def parse(cls, mode: str | None, value: float | str | None = None) -> Cutoff:
        """Validated cutoff from user input; a missing mode means the default mode, a missing value its default."""
        mode = (mode or DEFAULT_CUTOFF.mode).strip().lower()
        if mode not in CUTOFF_MODES:
            raise InputError(f"cutoff mode {mode!r} is unknown; choose one of {', '.join(CUTOFF_MODES)}")
        if value is None or (isinstance(value, str) and not value.strip()):
            default = CUTOFF_DEFAULT_VALUES[mode]
            if default is None:
                raise InputError(f"the {mode} cutoff needs a value, e.g. --cutoff 1.5 (a raw activation)")
            value = default
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InputError(f"cutoff value {value!r} is not a number") from None
        return cls(mode, value)

    def threshold(self, records: Sequence[ActivationRecord], stats: NeuronStats | None) -> float:
        """The raw-activation threshold for these records of one neuron."""
        if self.mode == "absolute":
            return self.value
        if self.mode == "relative":
            return self.value * max_relu_activation(records)
        if stats is None:
            raise InputError(
                f"the quantile cutoff ({self.value}) needs the neuron's stats (quantiles of per-excerpt maxima); "
                "pass them (--stats STATS.json) or use --cutoff-mode relative or absolute"
            )
        for level, boundary in stats.quantiles.items():
            if math.isclose(level, self.value, rel_tol=0, abs_tol=1e-9):
                return boundary
        known = ", ".join(str(q) for q in sorted(stats.quantiles)) or "none"
        raise InputError(
            f"the neuron's stats have no {self.value} quantile (available: {known}); choose one of those levels"
        )

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "value": self.value}

    @classmethod
    def from_json(cls, data: Any, where: str = "cutoff") -> Cutoff:
        if not isinstance(data, dict) or "mode" not in data:
            raise InputError(f'{where}: expected an object like {{"mode": "relative", "value": 0.5}}')
        try:
            return cls.parse(data["mode"], data.get("value"))
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None


def stats_from_json(data: Any, where: str = "stats") -> NeuronStats:
    """NeuronStats from its JSON (or an object holding it under "stats", like a neuron export), naming bad fields."""
    if isinstance(data, dict) and isinstance(data.get("stats"), dict):
        data, where = data["stats"], f"{where}.stats"
    if not isinstance(data, dict):
        raise InputError(
            f'{where}: expected an object like {{"mean": 0.1, "variance": 0.2, "max": 3.0, "quantiles": '
            '{"0.99": 1.5}}'
        )
    for key in ("mean", "variance", "max"):
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{where}.{key}: expected a number, got {value!r}")
    quantiles = data.get("quantiles", {})
    if not isinstance(quantiles, dict):
        raise InputError(f'{where}.quantiles: expected an object from level to boundary, e.g. {{"0.99": 1.5}}')
    for level, boundary in quantiles.items():
        try:
            float(level)
        except ValueError:
            raise InputError(f"{where}.quantiles: {level!r} is not a quantile level such as 0.99") from None
        if isinstance(boundary, bool) or not isinstance(boundary, int | float):
            raise InputError(f"{where}.quantiles[{level}]: expected a number, got {boundary!r}")
    return NeuronStats.from_json(data)


DEFAULT_CUTOFF = Cutoff("quantile", 0.99)
# Few-shot neurons have no corpus stats, and an absolute value means nothing across neurons, so each few-shot
# example uses its own `cutoff` from the few-shot file, else this one (the paper hard-coded a raw 1.0 instead).
# It does not follow the target's cutoff, so the few-shot part of a prompt is the same for every target neuron.
FEW_SHOT_CUTOFF = Cutoff("relative", 0.5)


def max_relu_activation(records: Sequence[ActivationRecord]) -> float:
    """M of docs/METHOD.md §1: the largest relu(activation) over the records shown; 0 when none is positive."""
    return max((max(0.0, a) for r in records for a in r.activations), default=0.0)


# ---------------------------------------------------------------------------------------------------------------
# Format bodies
# ---------------------------------------------------------------------------------------------------------------


def record_label(index: int) -> str:
    """A, B, …, Z, AA, AB, …: the label of the record at 0-based `index` (no limit of 26)."""
    if index < 0:
        raise ValueError("record index must be >= 0")
    label = ""
    number = index + 1
    while number:
        number, rest = divmod(number - 1, 26)
        label = chr(ord("A") + rest) + label
    return label


def escape_brackets(text: str) -> str:
    """Escape text for the highlight formats: `\\` → `\\\\`, `[` → `\\[`, `]` → `\\]`."""
    return text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")


_LINE_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_token(token: str) -> str:
    """Token text safe for a `token<TAB>value` line: tab, newline, CR and other control characters escaped.

    Used by the original format here and by the simulators' prompts, so both show a token the same way. Backslashes
    are kept as they are: the escapes only need to keep the line layout intact, and doubling every backslash in code
    excerpts would make them harder for a model to read.
    """
    out = []
    for ch in token:
        if ch in _LINE_ESCAPES:
            out.append(_LINE_ESCAPES[ch])
        elif unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029\x85":
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _token_lines(record: ActivationRecord, values: Sequence[int], omit_zeros: bool) -> str:
    # docs/METHOD.md §7: one line per token, so a tab or newline inside a token is escaped (Bills et al. wrote it raw).
    return "\n".join(
        f"{escape_token(token)}\t{value}"
        for token, value in zip(record.tokens, values, strict=True)
        if value or not omit_zeros
    )


def _start_end_blocks(records: Sequence[ActivationRecord], values: Sequence[Sequence[int]], omit_zeros: bool) -> str:
    # Same layout as Bills et al.'s neuron-explainer: "\n<start>\n" lines "\n<end>\n<start>\n" … "\n<end>\n".
    blocks = [_token_lines(r, v, omit_zeros) for r, v in zip(records, values, strict=True)]
    return "\n<start>\n" + "\n<end>\n<start>\n".join(blocks) + "\n<end>\n"


def original_body(
    records: Sequence[ActivationRecord],
    values: Sequence[Sequence[int]],
    threshold: float,
    options: FormatOptions = PAPER_OPTIONS,
) -> str:
    """Bills et al.'s token<TAB>n blocks, repeated without zeros when under 20% of the values are non-zero."""
    body = _start_end_blocks(records, values, omit_zeros=False)
    total = sum(len(v) for v in values)
    non_zero = sum(1 for v in values for n in v if n)
    if total and non_zero / total < REPEAT_NON_ZERO_BELOW:
        body += "\nSame activations, but with all zeros filtered out:" + _start_end_blocks(records, values, True)
    return body


def _quoted_item(token: str) -> str:
    text = token.strip()
    if not text or any(ch in text for ch in ',"\t\n'):
        return json.dumps(text or token, ensure_ascii=False)
    return text


def _own_brackets(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    # The paper's highlight: every marked token in its own brackets, whitespace inside (`[ New][ York]`).
    return "".join(f"[{escape_brackets(t)}]" if m else escape_brackets(t) for t, m in zip(tokens, marked, strict=True))


def _merged_brackets(tokens: Sequence[str], marked: Sequence[bool]) -> str:
    # FormatOptions.merge_spans: one pair of brackets per run of marked tokens, whitespace outside (` [New York]`).
    parts: list[str] = []
    i = 0
    while i < len(tokens):
        if not marked[i]:
            parts.append(escape_brackets(tokens[i]))
            i += 1
            continue
        j = i
        while j < len(tokens) and marked[j]:
            j += 1
        span = "".join(escape_brackets(t) for t in tokens[i:j])
        core = span.strip()
        if core:
            lead = span[: len(span) - len(span.lstrip())]
            trail = span[len(span.rstrip()) :]
            parts.append(f"{lead}[{core}]{trail}")
        else:  # a marked whitespace token stays visible as such
            parts.append(f"[{span}]")
        i = j
    return "".join(parts)


def _highlighted_text(tokens: Sequence[str], marked: Sequence[bool], options: FormatOptions) -> str:
    return (_merged_brackets if options.merge_spans else _own_brackets)(tokens, marked)


def _token_list(tokens: Sequence[str], marked: Sequence[bool], options: FormatOptions) -> str:
    """The marked tokens as the paper lists them: every occurrence, raw, in text order, joined by `,`."""
    items = [t for t, m in zip(tokens, marked, strict=True) if m]
    if options.distinct_lists:
        items = list(dict.fromkeys(_quoted_item(t) for t in items))
    return LIST_SEPARATOR.join(items)


def _valued_list(tokens: Sequence[str], values: Sequence[int], options: FormatOptions) -> str:
    """AVHS's list: `token<TAB>n` for every token with n > 0, in text order, joined by `,` on one line."""
    pairs = [(t, n) for t, n in zip(tokens, values, strict=True) if n > 0]
    if options.distinct_lists:
        best: dict[str, int] = {}
        for token, n in pairs:
            item = _quoted_item(token)
            best[item] = max(n, best.get(item, 0))
        pairs = list(best.items())
    return LIST_SEPARATOR.join(f"{token}\t{n}" for token, n in pairs)


def _excerpt(index: int, text: str) -> str:
    # The paper's block, stray spaces included: "\n Text excerpt - A:\n<start>…<end> \n".
    return f"\n Text excerpt - {record_label(index)}:\n<start>{text}<end> \n"


def _with_list(excerpt: str, listing: str) -> str:
    return f"{excerpt}\nHighly activating tokens:\n{listing}\n"


def _natural_body(blocks: Sequence[str]) -> str:
    return "\n" + "".join(blocks)


def _above(record: ActivationRecord, threshold: float) -> list[bool]:
    return [a > threshold for a in record.activations]


def summary_body(
    records: Sequence[ActivationRecord],
    values: Sequence[Sequence[int]],
    threshold: float,
    options: FormatOptions = PAPER_OPTIONS,
) -> str:
    """Each excerpt's plain text, then its tokens above the threshold as a comma list."""
    return _natural_body(
        [
            _with_list(_excerpt(i, "".join(r.tokens)), _token_list(r.tokens, _above(r, threshold), options))
            for i, r in enumerate(records)
        ]
    )


def highlight_body(
    records: Sequence[ActivationRecord],
    values: Sequence[Sequence[int]],
    threshold: float,
    options: FormatOptions = PAPER_OPTIONS,
) -> str:
    """Each excerpt's text with the tokens above the threshold in square brackets."""
    return _natural_body(
        [_excerpt(i, _highlighted_text(r.tokens, _above(r, threshold), options)) for i, r in enumerate(records)]
    )


def highlight_summary_body(
    records: Sequence[ActivationRecord],
    values: Sequence[Sequence[int]],
    threshold: float,
    options: FormatOptions = PAPER_OPTIONS,
) -> str:
    """The highlighted excerpt plus the comma list of its tokens above the threshold."""
    blocks = []
    for i, record in enumerate(records):
        marked = _above(record, threshold)
        excerpt = _excerpt(i, _highlighted_text(record.tokens, marked, options))
        blocks.append(_with_list(excerpt, _token_list(record.tokens, marked, options)))
    return _natural_body(blocks)


def avhs_body(
    records: Sequence[ActivationRecord],
    values: Sequence[Sequence[int]],
    threshold: float,
    options: FormatOptions = PAPER_OPTIONS,
) -> str:
    """The excerpt with every token of value n > 0 highlighted, then those tokens as `token<TAB>n` items.

    The cutoff does not apply here: a token is marked when its 0-10 value is positive (docs/METHOD.md §2).
    """
    blocks = []
    for i, (record, record_values) in enumerate(zip(records, values, strict=True)):
        excerpt = _excerpt(i, _highlighted_text(record.tokens, [n > 0 for n in record_values], options))
        blocks.append(_with_list(excerpt, _valued_list(record.tokens, record_values, options)))
    return _natural_body(blocks)


# ---------------------------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptFormat:
    """One explanation prompt format (docs/METHOD.md §2). `body` is pure: (records, 0-10 values, threshold,
    options) → BODY. Formats with `uses_cutoff=False` ignore the threshold and are given NaN, so they never need
    stats."""

    name: str
    description: str
    system_message: str
    body: BodyFn
    uses_cutoff: bool = True


# One task instruction for all five formats, as in the paper; only the description of how the activations are
# shown differs between formats (docs/METHOD.md §2).
TASK_INSTRUCTION = (
    "We are studying the neurons of a neural network to work out their roles. Look at the parts of the text where "
    "a neuron activates highly and sum up in a single sentence what it is looking for. Don't list examples of words."
)
_COMMON_GROUND = (
    "Your task is to say what the highly activating tokens have in common, taking their context into account."
)
_SHOWN_AS_LINES = (
    "Activations are shown as token<tab>activation, one token per line, from 0 to 10. A non-zero value means the "
    "neuron found what it is looking for; the higher the value, the stronger the match. A tab or newline inside a "
    "token is written as \\t or \\n."
)
_SHOWN_AS_LIST = (
    "We show short text excerpts, each followed by a comma-separated list of its highly activating tokens (words "
    "or pieces of words)."
)
_SHOWN_IN_BRACKETS = (
    "We show short text excerpts with every highly activating token (a word or part of one) in square brackets, "
    "like [token]; a bracket from the text itself is written \\[ or \\]."
)
_THEN_LIST = "Each excerpt is followed by a comma-separated list of only its highly activating tokens."
_THEN_VALUES = (
    "Each excerpt is followed by a comma-separated list of its highly activating tokens as token<tab>activation. "
    "Activations range from 0 to 10: a non-zero value means the neuron found what it is looking for, and the higher "
    "the value, the stronger the match."
)


def _system(*parts: str) -> str:
    return f"{TASK_INSTRUCTION}\n\n{' '.join(parts)}"


FORMATS: dict[str, PromptFormat] = {
    fmt.name: fmt
    for fmt in (
        PromptFormat(
            "original",
            "Bills et al.: every token on its own line with its 0-10 activation",
            _system(_SHOWN_AS_LINES),
            original_body,
            uses_cutoff=False,
        ),
        PromptFormat(
            "summary",
            "plain excerpt text, then a comma list of the highly activating tokens",
            _system(_SHOWN_AS_LIST, _COMMON_GROUND),
            summary_body,
        ),
        PromptFormat(
            "highlight",
            "excerpt text with each highly activating token in [square brackets]",
            _system(_SHOWN_IN_BRACKETS, _COMMON_GROUND),
            highlight_body,
        ),
        PromptFormat(
            "highlight_summary",
            "highlighted excerpt text plus the comma list",
            _system(_SHOWN_IN_BRACKETS, _THEN_LIST, _COMMON_GROUND),
            highlight_summary_body,
        ),
        PromptFormat(
            "avhs",
            "activation values + highlight + summary: tokens with a non-zero 0-10 value highlighted and listed",
            _system(_SHOWN_IN_BRACKETS, _THEN_VALUES, _COMMON_GROUND),
            avhs_body,
            uses_cutoff=False,
        ),
    )
}


def get_format(name: str) -> PromptFormat:
    """The registered format called `name`, or an InputError listing the known ones."""
    try:
        return FORMATS[name]
    except KeyError:
        raise InputError(f"unknown prompt format {name!r}; choose one of {', '.join(FORMATS)}") from None


# ---------------------------------------------------------------------------------------------------------------
# Few-shot examples
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FewShotExample:
    """A neuron shown before the target: its records and the explanation the assistant gives (no final period).

    `cutoff` overrides FEW_SHOT_CUTOFF for this example; it must be relative or absolute.
    """

    records: tuple[ActivationRecord, ...]
    explanation: str
    cutoff: Cutoff | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", tuple(self.records))


# --- Data files: few-shot examples here and in core/simulate, the scorers' prompts (core/datafiles.py models) ---


def _plain_number(value: Any) -> Any:
    # JSON true/false and numbers written as strings are not activations, though pydantic's lax mode would take them.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PydanticCustomError("number", "{value} is not a number", {"value": repr(value)})
    return value


Activation = Annotated[FiniteFloat, BeforeValidator(_plain_number)]


def an_object(data: Any, fields: str) -> dict[str, Any]:
    """`data` if it is a JSON object; else the error a person reads, naming the fields it should hold (pydantic's
    own names the model class)."""
    if not isinstance(data, dict):
        raise PydanticCustomError("object", "expected an object with {fields}", {"fields": fields})
    return data


class RecordData(DataModel):
    """An activation record in a data file: `{"tokens": [...], "activations": [...]}`, one finite number a token."""

    tokens: list[StrictStr]
    activations: list[Activation]

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data: Any) -> Any:
        return an_object(data, "'tokens' and 'activations'")

    @model_validator(mode="after")
    def _aligned(self) -> RecordData:
        if len(self.tokens) != len(self.activations):
            raise PydanticCustomError(
                "aligned",
                "{tokens} tokens but {activations} activations; tokens and activations must have the same length",
                {"tokens": len(self.tokens), "activations": len(self.activations)},
            )
        return self

    def record(self) -> ActivationRecord:
        return ActivationRecord(tuple(self.tokens), tuple(self.activations))


def _few_shot_cutoff(value: Any) -> Cutoff | None:
    if value is None:
        return None
    if not isinstance(value, dict) or "mode" not in value:
        raise PydanticCustomError("cutoff", 'expected an object like {"mode": "relative", "value": 0.5}')
    try:
        cutoff = Cutoff.parse(value["mode"], value.get("value"))
    except InputError as exc:
        raise PydanticCustomError("cutoff", str(exc)) from None
    if cutoff.mode == "quantile":
        raise PydanticCustomError("cutoff", "few-shot examples have no corpus stats; use relative or absolute")
    return cutoff


class FewShotData(DataModel):
    """One few-shot neuron of an explanation few-shot file (the bundled core/data/few_shot.json)."""

    records: list[RecordData] = Field(min_length=1)
    explanation: StrictStr
    cutoff: Annotated[InstanceOf[Cutoff] | None, BeforeValidator(_few_shot_cutoff)] = None

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data: Any) -> Any:
        return an_object(data, "'records' and 'explanation'")

    @field_validator("explanation")
    @classmethod
    def _explanation(cls, text: str) -> str:
        text = text.strip()
        text = text[:-1].rstrip() if text.endswith(".") else text  # the prompt adds the final period itself
        if not any(ch.isalnum() for ch in text):
            raise PydanticCustomError("explanation", "expected a non-empty string")
        return text


class FewShotFile(DataModel):
    """An explanation few-shot file: a list of `{"records": [...], "explanation": "...", "cutoff"?: {...}}`."""

    few_shot: list[FewShotData]

    @model_validator(mode="before")
    @classmethod
    def _the_list(cls, data: Any) -> Any:
        return {"few_shot": data}  # the file is the list; naming it puts `few_shot[i]` in every error

    def examples(self) -> tuple[FewShotExample, ...]:
        return tuple(
            FewShotExample(tuple(r.record() for r in item.records), item.explanation, item.cutoff)
            for item in self.few_shot
        )


@lru_cache(maxsize=16)
def _read_data_file(path: str, stamp: int | None, model: type[DataModel], what: str) -> DataModel:
    del stamp  # part of the cache key only: an edited file is read again
    return parse(model, read_json(path, what), path)


def read_data_file(path: str | Path, model: type[FileModel], what: str) -> FileModel:
    """The JSON data file at `path` validated as `model` (core.datafiles): an InputError names the file and the
    field. Kept in memory while the file is unchanged. `what` names the kind of file in errors ("few-shot")."""
    resolved = Path(path).expanduser().resolve()
    try:
        stamp: int | None = resolved.stat().st_mtime_ns
    except OSError:
        stamp = None  # read_json says what is wrong
    found = _read_data_file(str(resolved), stamp, model, what)
    assert isinstance(found, model)
    return found


def few_shot_from_json(data: Any, where: str = "few-shot examples") -> tuple[FewShotExample, ...]:
    """Parse `[{"records": [{"tokens", "activations"}], "explanation": "..."}]`, naming the bad field on error."""
    return parse(FewShotFile, data, where).examples()


def load_few_shot(source: str | Path | None = None) -> tuple[FewShotExample, ...]:
    """Few-shot examples: None → our bundled core/data/few_shot.json; "none" → no examples; else a JSON file."""
    if isinstance(source, str) and source.strip().lower() == "none":
        return ()
    return read_data_file(BUNDLED_FEW_SHOT if source is None else source, FewShotFile, "few-shot").examples()


# ---------------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------------


def user_message(neuron_number: int, body: str) -> str:
    """The user message for neuron k (docs/METHOD.md §2); the model's continuation is the explanation."""
    return (
        f"\n\nNeuron {neuron_number}\nActivations:{body}"
        f"\nExplanation of neuron {neuron_number} behavior: {EXPLANATION_PREFIX}"
    )


def resolve_threshold(
    format_name: str,
    records: Sequence[ActivationRecord],
    cutoff: Cutoff = DEFAULT_CUTOFF,
    stats: NeuronStats | None = None,
) -> float | None:
    """The raw threshold a format applies to the target's records; None for formats that use no cutoff."""
    fmt = get_format(format_name)
    return cutoff.threshold(records, stats) if fmt.uses_cutoff else None


def _neuron_body(
    fmt: PromptFormat, records: Sequence[ActivationRecord], threshold: float | None, options: FormatOptions
) -> str:
    # M is taken over this neuron's records shown here (docs/METHOD.md §1).
    return fmt.body(records, normalize(records), math.nan if threshold is None else threshold, options)


def build_messages(
    format_name: str,
    records: Sequence[ActivationRecord],
    *,
    few_shot: Sequence[FewShotExample] | None = None,
    cutoff: Cutoff = DEFAULT_CUTOFF,
    stats: NeuronStats | None = None,
    options: FormatOptions = PAPER_OPTIONS,
) -> Messages:
    """The chat for explaining one neuron: system, few-shot user/assistant pairs, the target's user message.

    `few_shot=None` uses our bundled examples; pass `()` for none. `cutoff` and `stats` apply to the target only;
    few-shot examples use their own cutoff or FEW_SHOT_CUTOFF. `options` picks a rendering variant of the natural
    formats (default: the paper's). Inputs are never modified.
    """
    fmt = get_format(format_name)
    records = tuple(records)
    if not records:
        raise InputError("no activation records to show: give at least one record")
    examples = load_few_shot(None) if few_shot is None else tuple(few_shot)
    messages: Messages = [{"role": "system", "content": fmt.system_message}]
    for number, example in enumerate(examples, start=1):
        example_cutoff = example.cutoff or FEW_SHOT_CUTOFF
        threshold = example_cutoff.threshold(example.records, None) if fmt.uses_cutoff else None
        body = _neuron_body(fmt, example.records, threshold, options)
        messages.append({"role": "user", "content": user_message(number, body)})
        messages.append({"role": "assistant", "content": f" {example.explanation}."})
    threshold = resolve_threshold(format_name, records, cutoff, stats)
    body = _neuron_body(fmt, records, threshold, options)
    messages.append({"role": "user", "content": user_message(len(examples) + 1, body)})
    return messages


def render_messages(messages: Sequence[dict[str, str]]) -> str:
    """A chat as plain text for reading and golden files: each message under a `=== role ===` line."""
    return "".join(f"=== {m['role']} ===\n{m['content']}\n" for m in messages)


def clean_explanation(completion: str | None) -> str:
    """The explanation from the model's raw continuation: first line, trimmed, one final period dropped.

    A restated prefix ("The main thing this neuron does is find …"), which chat models sometimes write, is removed.
    Raises LLMError when nothing usable is left.
    """
    if not isinstance(completion, str):
        raise LLMError(f"the explainer returned no text ({completion!r}); retry or use another explainer model")
    text = completion.strip().split("\n", 1)[0].strip()
    if text.lower().startswith(EXPLANATION_PREFIX):
        text = text[len(EXPLANATION_PREFIX) :].strip()
    if text.endswith("."):
        text = text[:-1].rstrip()
    if not any(ch.isalnum() for ch in text):
        raise LLMError(
            f"the explainer's reply {completion[:80]!r} holds no explanation (empty after cleaning); "
            "retry, raise max_tokens, or use another explainer model"
        )
    return text
