"""Reading the project's JSON data files (few-shot examples, scorer prompts, plans, imports) through pydantic models.

Each file format is a pydantic model next to the code that uses it; `parse` is the one place that turns a
validation failure into an InputError that names the file and the field, so every data file fails the same way.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import InputError

Model = TypeVar("Model", bound=BaseModel)


class DataModel(BaseModel):
    """Base of the data-file models: frozen, and a key the format does not know is an error, not silently dropped."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)


def _where(location: tuple[Any, ...]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in location).lstrip(".")


def parse(model: type[Model], data: Any, where: str) -> Model:
    """`data` validated as `model`; the error says where (`where`, then the field path) and what was wrong."""
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = _where(tuple(first.get("loc", ())))
        more = f" (and {error.error_count() - 1} more problem(s))" if error.error_count() > 1 else ""
        raise InputError(f"{where}{': ' + field if field else ''}: {first['msg']}{more}") from None


def read_json(path: str | Path, what: str) -> Any:
    """The JSON value in `path`; a missing or unreadable file is an InputError that says which and why."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read {what} file {str(path)!r}: {error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{what} file {str(path)!r} is not valid JSON: {error}") from None
