"""Choosing neurons: one typed or uploaded list, and the labels of the neuron picker."""

from __future__ import annotations

import math
import re

from core.errors import InputError
from core.records import NeuronId, neurons_from_csv

_NEURON_TOKEN = re.compile(r"[^\s,;]+")


def neurons_from_text(text: str) -> list[NeuronId]:
    """Neurons written `layer:index`, separated by commas, semicolons, spaces or new lines; `#` starts a comment."""
    lines = [line.split("#", 1)[0] for line in text.splitlines()]
    found = [NeuronId.parse(token) for line in lines for token in _NEURON_TOKEN.findall(line)]
    if not found:
        raise InputError("no neurons given: write them as layer:index, e.g. 3:17, 3:42")
    return list(dict.fromkeys(found))


def neurons_from_upload(name: str, data: bytes) -> list[NeuronId]:
    """Neurons from an uploaded file: a CSV with columns layer,neuron (as the CLI's --neuron-file), or text with
    layer:index entries."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{name} is not UTF-8 text; upload a CSV with columns layer,neuron") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    if "layer" not in first.lower():
        return neurons_from_text(text)
    return neurons_from_csv(text, name)


def neuron_label(index: int, best_score: float | None) -> str:
    """A neuron in the picker: its index, and its best score when it has one."""
    if best_score is None or not math.isfinite(best_score):
        return str(index)
    return f"{index}  (best score {best_score:.2f})"
