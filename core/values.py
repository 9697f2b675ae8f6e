"""Numbers and JSON at module boundaries: one home for "NaN means missing" and for turning results into JSON.

A score, a correlation or a rate that is undefined is stored and shown as missing, never as 0 or NaN
(docs/METHOD.md §4). Results cross module boundaries as dataclasses; `to_jsonable` is the one place that turns them
(and the numpy scalars inside them) into plain JSON values for `--json` output and files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# A long job's progress callback: (done, total) in explanations or scores (collection counts tokens with a total that
# may be unknown: core.activations.TokenProgress).
Progress = Callable[[int, int], None]


class JsonFields:
    """Mixin of result dataclasses: `to_json()` is their fields in order as plain JSON values (nested results by
    their own `to_json`, tuples as lists, NaN as None)."""

    def to_json(self) -> dict[str, Any]:
        assert dataclasses.is_dataclass(self), "JsonFields is for dataclasses"
        return {field.name: to_jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)}


def finite_or_none(value: Any) -> float | None:
    """A float, or None for missing, NaN, infinities and booleans."""
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def to_jsonable(value: Any) -> Any:
    """Plain JSON values for nested dataclasses, mappings, sequences and numpy scalars; NaN and infinity: None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_json = getattr(value, "to_json", None)
        if callable(to_json):
            return to_jsonable(to_json())
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return finite_or_none(value)
    return value
