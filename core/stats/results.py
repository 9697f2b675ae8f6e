"""What the statistics return: frozen dataclasses that turn into JSON field by field through core.values."""

from __future__ import annotations

import dataclasses
from typing import Any

from core.values import to_jsonable


class JsonFields:
    """Mixin of the result dataclasses: `to_json()` is their fields in order as plain JSON values (nested results by
    their own `to_json`, tuples as lists, NaN as None)."""

    def to_json(self) -> dict[str, Any]:
        return {field.name: to_jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)}  # type: ignore[arg-type]
