"""The classifier scorers, detection and fuzzing (docs/METHOD.md §10): an LLM reads an explanation and a shuffled
batch of excerpts and answers, as a list of 0s and 1s, which ones the neuron activates on (detection) or which are
highlighted correctly (fuzzing). The score is the balanced accuracy of its answers; where the server returns
`top_logprobs`, the probability of each "1" gives an AUC too.

Prompts are our own, kept as replaceable data (core/data/detection_prompt.json, fuzzing_prompt.json), read through
pydantic models (`PromptFile`). Building and parsing are pure functions; the LLM is any `openai:MODEL` (chat
completions, with logprobs when the server has them) or `hf:ID_OR_PATH` (a local chat model through core.llm; text
only, so no AUC), run as a `core.simulate.SimulatorOptions` says: the flags of `--simulator` describe it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydantic import Field, StrictStr, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.datafiles import DataModel, parse
from core.errors import InputError, LLMError
from core.llm import (
    ApiOptions,
    Sampling,
    UnreadableAnswer,
    cache_key,
    call_api,
    get_backend,
    is_openai_host,
    openai_client,
    parse_backend_spec,
    public_url,
)
from core.llm.api import base_url, logprob_token_offsets
from core.prompts import an_object, escape_brackets, escape_token, read_data_file
from core.records import NeuronRecord
from core.scorers.base import (
    ExcerptPrediction,
    MissingExcerpts,
    ScorerOptions,
    ScorerResult,
    ScoringExcerpt,
    auroc,
    balanced_accuracy,
    batches,
    classified_excerpts,
    fuzzing_excerpts,
    neuron_seed,
)
from core.simulate.base import SimulatorOptions

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
DATA = Path(__file__).resolve().parent.parent / "data"
BUNDLED_PROMPTS = {"detection": DATA / "detection_prompt.json", "fuzzing": DATA / "fuzzing_prompt.json"}
DEFAULT_TOP_LOGPROBS = 5
METHOD = "balanced_accuracy"
# What a reply may write for an excerpt; digits are what the prompt asks for, the words are read too.
VALUE_WORDS = {"1": 1, "0": 0, "yes": 1, "no": 0, "true": 1, "false": 0}


# --- The prompt (data and pure functions) --------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptExample:
    explanation: str
    excerpts: tuple[str, ...]
    answer: tuple[int, ...]


@dataclass(frozen=True)
class ClassifierPrompt:
    """A scorer's system message and few-shot examples, and where they came from."""

    system: str
    examples: tuple[PromptExample, ...]
    source: str = "bundled"


class PromptExampleData(DataModel):
    """A few-shot example of a prompt file: an explanation, excerpts as the scorer shows them, one 0/1 each."""

    explanation: StrictStr
    excerpts: list[StrictStr] = Field(min_length=1)
    answer: list[int]

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data: Any) -> Any:
        return an_object(data, "'explanation', 'excerpts' and 'answer'")

    @field_validator("answer")
    @classmethod
    def _one_per_excerpt(cls, answer: list[int], info: ValidationInfo) -> list[int]:
        excerpts = info.data.get("excerpts")
        if excerpts is None or len(answer) != len(excerpts) or any(a not in (0, 1) for a in answer):
            raise PydanticCustomError("answer", "expected one 0 or 1 per excerpt")
        return answer


class PromptFile(DataModel):
    """A scorer's prompt file: `{"description"?, "system": "...", "examples": [...]}`."""

    description: str | None = None
    system: StrictStr
    examples: list[PromptExampleData] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _object(cls, data: Any) -> Any:
        return an_object(data, "a non-empty 'system' message and 'examples'")

    @field_validator("system")
    @classmethod
    def _not_blank(cls, system: str) -> str:
        if not system.strip():
            raise PydanticCustomError("system", "expected a non-empty system message")
        return system

    def prompt(self, source: str) -> ClassifierPrompt:
        examples = tuple(PromptExample(e.explanation, tuple(e.excerpts), tuple(e.answer)) for e in self.examples)
        return ClassifierPrompt(self.system, examples, source)


def prompt_from_json(data: Any, where: str) -> tuple[str, tuple[PromptExample, ...]]:
    """The system message and examples of a prompt file; InputError naming the bad field."""
    prompt = parse(PromptFile, data, where).prompt(where)
    return prompt.system, prompt.examples


def load_prompt(kind: str, source: str | Path | None = None) -> ClassifierPrompt:
    """The bundled prompt of `kind` (detection, fuzzing), or the one in the JSON file `source`."""
    if kind not in BUNDLED_PROMPTS:
        raise InputError(f"no prompt for scorer {kind!r}; the classifier scorers are {', '.join(BUNDLED_PROMPTS)}")
    path = Path(source) if source else BUNDLED_PROMPTS[kind]
    return read_data_file(path, PromptFile, f"{kind} prompt").prompt("bundled" if not source else str(path))


def excerpt_text(excerpt: ScoringExcerpt) -> str:
    """An excerpt on one line as the scorer shows it: control characters escaped (as in every prompt here), and for
    fuzzing each highlighted token in its own brackets, with the text's own brackets escaped (docs/METHOD.md §7)."""
    tokens = [escape_token(t) for t in excerpt.record.tokens]
    if excerpt.marked is None:
        return "".join(tokens).strip()
    return "".join(
        f"[{escape_brackets(t)}]" if marked else escape_brackets(t)
        for t, marked in zip(tokens, excerpt.marked, strict=True)
    ).strip()


def user_message(explanation: str, texts: Sequence[str]) -> str:
    lines = "\n".join(f"Excerpt {number}: {text}" for number, text in enumerate(texts, start=1))
    return f"Explanation: {explanation.strip()}\n\n{lines}"


def answer_text(labels: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(label)) for label in labels) + "]"


def build_messages(prompt: ClassifierPrompt, explanation: str, texts: Sequence[str]) -> Messages:
    """The chat for one call: system, each few-shot example answered, then the target batch. Inputs unchanged."""
    messages: Messages = [{"role": "system", "content": prompt.system}]
    for example in prompt.examples:
        messages.append({"role": "user", "content": user_message(example.explanation, example.excerpts)})
        messages.append({"role": "assistant", "content": answer_text(example.answer)})
    messages.append({"role": "user", "content": user_message(explanation, texts)})
    return messages


# --- Reading the answer ----------------------------------------------------------------------------------------------


def scorer_excerpts(kind: str, record: NeuronRecord, options: ScorerOptions) -> list[ScoringExcerpt]:
    """The excerpts `kind` (detection, fuzzing) shows for a neuron, in a fixed order before shuffling."""
    if kind == "detection":
        activating, quiet = classified_excerpts(record, options)
        return [*activating, *quiet]
    return fuzzing_excerpts(record, options)


def classifier_calls(
    kind: str, prompt: ClassifierPrompt, options: ScorerOptions, explanation: str, record: NeuronRecord
) -> list[tuple[list[int], Messages]]:
    """Every call of scorer `kind` for one explanation of a neuron: the excerpt indices it shows and its chat. Pure:
    the scorer sends exactly these, and cost estimates (core/costs.py) count them without an LLM."""
    excerpts = scorer_excerpts(kind, record, options)
    calls = []
    for batch in batches(excerpts, options.excerpts_per_call, neuron_seed(options.seed, record)):
        texts = [excerpt_text(excerpt) for _, excerpt in batch]
        calls.append(([index for index, _ in batch], build_messages(prompt, explanation, texts)))
    return calls


class AnswerUnreadable(Exception):
    """The answer does not hold one 0/1 per excerpt."""


@dataclass(frozen=True)
class ParsedValue:
    value: int
    start: int  # character offset of the value in the answer


_VALUE = r"(?<![\w.])(1|0|yes|no|true|false)(?![\w.])"
_LIST = re.compile(r"\[([^\[\]]*)\]")
_NUMBERED = re.compile(r"(?:excerpt\s*)?(\d+)\s*[:.)=-]\s*" + _VALUE, re.IGNORECASE)
_COMPACT = re.compile(r"(?<!\d)([01]+)(?!\d)")


def _values_in(text: str, offset: int, labels: frozenset[int] = frozenset()) -> list[ParsedValue]:
    """The values in `text` (which starts at `offset` of the answer), but not those at `labels`: offsets of excerpt
    numbers, so that the "1" of "Excerpt 1: 0" is never read as an answer."""
    found = (
        ParsedValue(VALUE_WORDS[m.group(1).lower()], offset + m.start(1))
        for m in re.finditer(_VALUE, text, re.IGNORECASE)
    )
    return [value for value in found if value.start not in labels]


def parse_answer(answer: str | None, count: int) -> list[ParsedValue]:
    """One value per excerpt from a reply, in excerpt order, with its offset. Read, in this order: the last
    bracketed list with exactly `count` values (`[1, 0, 1]`, `["1","0","1"]`, yes/no and true/false too); numbered
    lines (`Excerpt 2: 1`, `2) no`) covering 1..count, or 0..count − 1; exactly `count` bare values, where no line
    is numbered; one run of `count` digits (`101`). AnswerUnreadable otherwise."""
    if not isinstance(answer, str) or not answer.strip():
        raise AnswerUnreadable("the answer is empty")
    numbered_matches = list(_NUMBERED.finditer(answer))
    labels = frozenset(match.start(1) for match in numbered_matches)
    for match in reversed(list(_LIST.finditer(answer))):
        found = _values_in(match.group(1), match.start(1), labels)
        if len(found) == count:
            return found
    numbered: dict[int, ParsedValue] = {}
    for match in numbered_matches:
        number = int(match.group(1))
        if 0 <= number <= count and number not in numbered:
            numbered[number] = ParsedValue(VALUE_WORDS[match.group(2).lower()], match.start(2))
    for first in (1, 0):  # numbered from 1, else from 0
        if all(number in numbered for number in range(first, first + count)):
            return [numbered[number] for number in range(first, first + count)]
    if numbered_matches:
        # Numbered lines that do not cover the excerpts: a line short must not shift every later answer onto the
        # excerpt before it, as reading the values bare would (the "1" of "Excerpt 1: 0" passes for a value).
        raise AnswerUnreadable(_unreadable(answer, count))
    bare = _values_in(answer, 0)
    if len(bare) == count:
        return bare
    runs = [m for m in _COMPACT.finditer(answer) if len(m.group(1)) == count]
    if len(runs) == 1:
        return [ParsedValue(int(ch), runs[0].start(1) + i) for i, ch in enumerate(runs[0].group(1))]
    raise AnswerUnreadable(_unreadable(answer, count))


def _unreadable(answer: str, count: int) -> str:
    shown = answer.strip().replace("\n", " ")[:80]
    return f"the answer {shown!r} does not hold one 0 or 1 for each of the {count} excerpts"


def probabilities(answer: str, content: Sequence[Mapping[str, Any]] | None, parsed: Sequence[ParsedValue]) -> list:
    """P(1) at each parsed value from the chat logprobs (`choices[0].logprobs.content`): the probability mass of "1"
    over that of "1" and "0" among the value token's top_logprobs (after any text the token carries before the
    value, e.g. "[" in "[1"). None where the logprobs are missing, do not spell the answer, or hold neither."""
    if not content:
        return [None] * len(parsed)
    starts, data = logprob_token_offsets(content)
    if data.decode("utf-8", errors="replace") != answer:
        return [None] * len(parsed)
    found: list[float | None] = []
    for value in parsed:
        at = len(answer[: value.start].encode("utf-8"))
        index = max(i for i, start in enumerate(starts) if start <= at)
        prefix = data[starts[index] : at].decode("utf-8", errors="replace")
        mass = {0: 0.0, 1: 0.0}
        for alternative in content[index].get("top_logprobs") or []:
            token = str(alternative.get("token", ""))
            if not token.startswith(prefix) or alternative.get("logprob") is None:
                continue
            word = token[len(prefix) :].strip().lower()
            if word in VALUE_WORDS:
                mass[VALUE_WORDS[word]] += math.exp(float(alternative["logprob"]))
        total = mass[0] + mass[1]
        found.append(mass[1] / total if total > 0 else None)
    return found


# --- The LLM ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One answer: its text, its chat logprobs (None when the server sent none), and the tokens it cost."""

    text: str
    logprobs: list[dict[str, Any]] | None
    input_tokens: int | None
    output_tokens: int | None
    cached: bool = False


class ClassifierLLM(Protocol):
    @property
    def name(self) -> str: ...

    def ask(self, requests: Sequence[Messages], max_tokens: int) -> list[Reply | LLMError]: ...

    def forget(self, messages: Messages, max_tokens: int) -> None: ...


@dataclass
class OpenAIClassifierLLM:
    """Chat completions at temperature 0 with `logprobs` and `top_logprobs` (0: none asked), retried by the openai
    SDK, answers cached in the database like the explainer's (core.llm)."""

    model: str
    options: ApiOptions = field(default_factory=ApiOptions)
    top_logprobs: int = DEFAULT_TOP_LOGPROBS
    db: Any = None
    use_cache: bool = True

    def __post_init__(self) -> None:
        self.base_url = base_url(self.options)
        self.client = openai_client(self.options)

    @property
    def name(self) -> str:
        return f"openai:{self.model}"

    def _key(self, messages: Messages, max_tokens: int) -> str:
        endpoint = {} if is_openai_host(self.base_url) else {"endpoint": public_url(self.base_url)}
        sampling = Sampling(temperature=0.0, max_tokens=max_tokens)
        return cache_key("openai", self.model, messages, sampling, 0, scorer_logprobs=self.top_logprobs, **endpoint)

    def forget(self, messages: Messages, max_tokens: int) -> None:
        from core import db as dbmod

        if self.db is not None:
            dbmod.cache_delete(self.db, self._key(messages, max_tokens))

    def ask(self, requests: Sequence[Messages], max_tokens: int) -> list[Reply | LLMError]:
        from core import db as dbmod

        caching = self.use_cache and self.db is not None
        results: list[Reply | LLMError | None] = [None] * len(requests)
        pending = []
        for index, messages in enumerate(requests):
            hit = dbmod.cache_get(self.db, self._key(messages, max_tokens)) if caching else None
            if hit is not None:
                results[index] = Reply(hit["text"], hit.get("logprobs"), hit.get("input_tokens"),
                                       hit.get("output_tokens"), cached=True)  # fmt: skip
            else:
                pending.append(index)
        if pending:
            with ThreadPoolExecutor(max_workers=max(1, min(self.options.concurrency, len(pending)))) as pool:
                answers = list(pool.map(lambda i: self._call(requests[i], max_tokens), pending))
            for index, answer in zip(pending, answers, strict=True):
                results[index] = answer
                if caching and isinstance(answer, Reply):
                    request = {"messages": requests[index], "max_tokens": max_tokens, "top_logprobs": self.top_logprobs}
                    response = {"text": answer.text, "logprobs": answer.logprobs, "input_tokens": answer.input_tokens,
                                "output_tokens": answer.output_tokens}  # fmt: skip
                    dbmod.cache_put(self.db, self._key(requests[index], max_tokens), "openai", self.model, request,
                                    response)  # fmt: skip
        return [r if r is not None else LLMError("no answer was produced") for r in results]

    def _call(self, messages: Messages, max_tokens: int) -> Reply | LLMError:
        params: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": max_tokens}
        if self.top_logprobs > 0:
            params.update(logprobs=True, top_logprobs=self.top_logprobs)
        try:
            response = call_api(f"scorer {self.name}", self.client.chat.completions.create, params, self.options)
        except UnreadableAnswer as exc:
            # An answer that arrived but cannot be read fails this call only (a note), not the run.
            return LLMError(f"scorer {self.name}: the server's answer is not valid JSON ({exc})")
        choices = getattr(response, "choices", None)
        if not choices:
            return LLMError(f"scorer {self.name}: the server returned no choices")
        choice = choices[0]
        text = getattr(choice.message, "content", None)
        if not isinstance(text, str):
            return LLMError(f"scorer {self.name}: the answer has no text")
        usage = getattr(response, "usage", None)
        content = getattr(choice.logprobs, "content", None)
        logprobs = [item.model_dump() for item in content] if content else None
        return Reply(text, logprobs, getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))


@dataclass
class BackendClassifierLLM:
    """A core.llm backend (e.g. `hf:PATH`) at temperature 0: text only, so no probabilities and no AUC."""

    backend: Any

    @property
    def name(self) -> str:
        return str(self.backend.name)

    def _sampling(self, max_tokens: int) -> Sampling:
        return Sampling(temperature=0.0, max_tokens=max_tokens)

    def forget(self, messages: Messages, max_tokens: int) -> None:
        self.backend.forget(messages, self._sampling(max_tokens))

    def ask(self, requests: Sequence[Messages], max_tokens: int) -> list[Reply | LLMError]:
        answers = self.backend.complete(list(requests), self._sampling(max_tokens))
        return [
            a if isinstance(a, LLMError) else Reply(a.text, None, a.input_tokens, a.output_tokens, a.cached)
            for a in answers
        ]


def classifier_llm(spec: str, options: SimulatorOptions, db: Any = None, use_cache: bool = True) -> ClassifierLLM:
    """The LLM of a classifier scorer from `openai:MODEL` (the options' `api` part and `top_logprobs`, default 5) or
    `hf:ID_OR_PATH` (their `local` part)."""
    kind, model = parse_backend_spec(spec)
    if kind == "openai":
        top_logprobs = DEFAULT_TOP_LOGPROBS if options.top_logprobs is None else options.top_logprobs
        return OpenAIClassifierLLM(model, options.api, top_logprobs, db, use_cache)
    return BackendClassifierLLM(get_backend(spec, options.local, db=db, use_cache=use_cache))


# --- The scorers -----------------------------------------------------------------------------------------------------


@dataclass
class ClassifierScorer:
    """Detection or fuzzing (`kind`) with one LLM: each neuron's excerpts, shuffled with a per-neuron seed, go to the
    LLM `options.excerpts_per_call` at a time."""

    kind: str
    llm: ClassifierLLM
    options: ScorerOptions = field(default_factory=ScorerOptions)
    prompt: ClassifierPrompt | None = None

    def __post_init__(self) -> None:
        if self.kind not in BUNDLED_PROMPTS:
            raise InputError(f"{self.kind!r} is not a classifier scorer; choose one of {', '.join(BUNDLED_PROMPTS)}")
        self.prompt = self.prompt or load_prompt(self.kind)

    @property
    def name(self) -> str:
        return self.kind

    @property
    def model(self) -> str:
        return self.llm.name

    @property
    def method(self) -> str:
        return METHOD

    def settings(self) -> dict[str, Any]:
        assert self.prompt is not None
        return {
            "model": self.model,
            **self.options.to_json(),
            "prompt": self.prompt.source,
            "top_logprobs": getattr(self.llm, "top_logprobs", None),
        }

    def excerpts(self, record: NeuronRecord) -> list[ScoringExcerpt]:
        return scorer_excerpts(self.kind, record, self.options)

    def messages(self, explanation: str, record: NeuronRecord) -> list[tuple[list[int], Messages]]:
        """Every call for one explanation: the excerpt indices it shows and its chat."""
        assert self.prompt is not None
        return classifier_calls(self.kind, self.prompt, self.options, explanation, record)

    def score(self, explanation: str, record: NeuronRecord) -> ScorerResult:
        started = time.perf_counter()
        try:
            excerpts = self.excerpts(record)
        except MissingExcerpts as exc:
            return ScorerResult(self.name, self.model, self.method, "failed", error=str(exc))
        labels = [e.label for e in excerpts]
        if len(set(labels)) < 2:
            reason = (
                f"neuron {record.neuron} has {labels.count(1)} excerpts of one kind and {labels.count(0)} of the other "
                "above/below the activating threshold; lower --activating-quantile or collect more text"
            )
            return ScorerResult(self.name, self.model, self.method, "failed", error=reason,
                                seconds=time.perf_counter() - started)  # fmt: skip
        calls = self.messages(explanation, record)
        max_tokens = 4 * self.options.excerpts_per_call + 16
        replies = self.llm.ask([messages for _, messages in calls], max_tokens)
        predictions: list[int | None] = [None] * len(excerpts)
        chances: list[float | None] = [None] * len(excerpts)
        shown_in: list[int | None] = [None] * len(excerpts)
        notes: list[str] = []
        input_tokens = output_tokens = 0
        counted = True
        for number, ((indices, messages), reply) in enumerate(zip(calls, replies, strict=True)):
            for index in indices:
                shown_in[index] = number
            if isinstance(reply, LLMError):
                notes.append(f"call {number}: {reply}")
                continue
            if reply.input_tokens is None or reply.output_tokens is None:
                counted = False
            input_tokens += reply.input_tokens or 0
            output_tokens += reply.output_tokens or 0
            try:
                parsed = parse_answer(reply.text, len(indices))
            except AnswerUnreadable as exc:
                notes.append(f"call {number}: {exc}")
                self.llm.forget(messages, max_tokens)  # asked again on the next run, not read from the cache
                continue
            chance = probabilities(reply.text, reply.logprobs, parsed)
            for index, value, p in zip(indices, parsed, chance, strict=True):
                predictions[index], chances[index] = value.value, p
        per_excerpt = tuple(
            ExcerptPrediction(
                index=i, kind=e.kind, label=e.label, max_activation=e.record.max_activation, level=e.level,
                prediction=predictions[i], probability=chances[i], call=shown_in[i],
            )
            for i, e in enumerate(excerpts)
        )  # fmt: skip
        score = balanced_accuracy(labels, predictions)
        area = auroc(labels, chances)
        # Why there is no AUC: answers without a probability (some, or all of them with logprobs sent or not), or
        # every answer with one but some excerpts without an answer.
        answers_without = any(chances[i] is None for i, value in enumerate(predictions) if value is not None)
        some_chances = any(p is not None for p in chances)
        if area is None and answers_without:
            if some_chances:
                notes.append("logprobs were missing for some answers: no AUC")
            elif any(isinstance(r, Reply) and r.logprobs for r in replies):
                notes.append("the logprobs did not spell the answers: no AUC")
            else:
                notes.append("the server returned no logprobs: no AUC")
        elif area is None and some_chances:
            notes.append("no AUC: it needs an answer for every excerpt")
        unread = sum(p is None for p in predictions)
        if unread:
            notes.append(f"{unread} of {len(excerpts)} excerpts had no readable answer and are left out")
        status = "ok" if score is not None else "failed"
        error = None if score is not None else "; ".join(notes) or "no readable answer"
        return ScorerResult(
            self.name, self.model, self.method, status, score, area, per_excerpt,
            input_tokens if counted else None, output_tokens if counted else None,
            time.perf_counter() - started, error, tuple(notes),
        )  # fmt: skip
