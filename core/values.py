"""Numbers and JSON at module boundaries: one home for "NaN means missing" and for turning results into JSON.

A score, a correlation or a rate that is undefined is stored and shown as missing, never as 0 or NaN
(docs/METHOD.md §4). Results cross module boundaries as dataclasses; `to_jsonable` is the one place that turns them
(and the numpy scalars inside them) into plain JSON values for `--json` output and files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


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
