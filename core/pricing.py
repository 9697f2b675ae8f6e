"""Optional per-model prices, so that runs report money next to tokens: cost per neuron and score per 1k tokens.

Prices change and differ between providers, so none are built in. A small TOML file lists the models you pay for
(`prices.toml` at the repo root, or the file named by $EVAL_PRICES; `prices.example.toml` shows the shape):

    [models."gpt-4o-mini"]
    input_per_million = 0.15
    output_per_million = 0.60

A model is looked up by its full spec (`openai:gpt-4o-mini`) first, then by its name alone (`gpt-4o-mini`). A model
the file does not list has no cost (None), never a cost of 0: local `hf:` models cost compute, not tokens.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from core import config
from core.errors import InputError


@dataclass(frozen=True)
class ModelPrice:
    """US dollars per million input and output tokens."""

    input_per_million: float
    output_per_million: float

    def __post_init__(self) -> None:
        for name in ("input_per_million", "output_per_million"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise InputError(f"{name} must be a non-negative number of dollars, got {value!r}")

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_million + output_tokens * self.output_per_million) / 1e6


@dataclass(frozen=True)
class Prices:
    """The price list; `source` is the file it came from (None: no file, so no costs)."""

    models: Mapping[str, ModelPrice] = field(default_factory=dict)
    source: str | None = None

    def price(self, model: str | None) -> ModelPrice | None:
        if not model:
            return None
        found = self.models.get(model)
        if found is None and ":" in model:
            found = self.models.get(model.partition(":")[2])
        return found

    def cost(self, model: str | None, input_tokens: int | None, output_tokens: int | None) -> float | None:
        """Dollars for these tokens of `model`, or None when the model has no price or a count is unknown."""
        price = self.price(model)
        if price is None or input_tokens is None or output_tokens is None:
            return None
        return price.cost(input_tokens, output_tokens)


def parse_prices(text: str, source: str) -> Prices:
    """The price list in TOML `text`; an error names the file and the model."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"price file {source}: not valid TOML: {error}") from None
    unknown = sorted(set(data) - {"models"})
    if unknown:
        raise InputError(f"price file {source}: unknown section(s) {', '.join(unknown)}; prices go under [models.NAME]")
    models = {}
    for name, entry in (data.get("models") or {}).items():
        if not isinstance(entry, dict) or set(entry) != {"input_per_million", "output_per_million"}:
            raise InputError(
                f"price file {source}: [models.{name!r}] needs exactly input_per_million and output_per_million"
            )
        try:
            models[name] = ModelPrice(entry["input_per_million"], entry["output_per_million"])
        except InputError as error:
            raise InputError(f"price file {source}: [models.{name!r}]: {error}") from None
    return Prices(models, source)


def load_prices(path: str | Path | None = None) -> Prices:
    """The price list at `path` (default: config.prices_path()); no file means no prices, not an error."""
    path = Path(path) if path else config.prices_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Prices()
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read price file {path}: {error}") from None
    return parse_prices(text, str(path))
