import dataclasses
import json
import math

import numpy as np
import pytest

from core.values import finite_or_none, to_jsonable


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (True, None),
        (float("nan"), None),
        (math.inf, None),
        (-math.inf, None),
        (np.float32(0.5), 0.5),
        (3, 3.0),
        (0.0, 0.0),
    ],
)
def test_finite_or_none_keeps_finite_numbers_only(value, expected):
    assert finite_or_none(value) == expected


def test_to_jsonable_walks_dataclasses_and_numpy():
    @dataclasses.dataclass(frozen=True)
    class Inner:
        score: float
        counts: tuple[int, ...]

    @dataclasses.dataclass(frozen=True)
    class Outer:
        name: str
        inner: Inner
        extra: dict

    outer = Outer("x", Inner(np.float64("nan"), (np.int64(2), 3)), {"ok": np.bool_(True), "v": np.arange(2)})
    plain = to_jsonable(outer)
    assert plain == {"name": "x", "inner": {"score": None, "counts": [2, 3]}, "extra": {"ok": True, "v": [0, 1]}}
    json.dumps(plain, allow_nan=False)
