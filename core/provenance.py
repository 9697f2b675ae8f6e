"""Where an explanation came from: its source, so that arms, tables and exports never pool two sets as one.

An explanation set is a format, an explainer (as written, never aliased) and a source (docs/METHOD.md §9):
- imported from a CSV (`import-explanations`): `file:` and the first 12 hex digits of the file's SHA-256, so the
  same file imported twice is one source and an edited copy another; its name is the `origin`;
- generated here (`explain`, `run`, the Explain page): `run:` and a 12-digit hash of the run's settings (sampling,
  few-shot examples, cutoff, records shown), with `/sample<k>` for sample k > 0; the same command on other neurons
  adds to the same source;
- OpenAI's published explanations (`import-openai --explanations`): `reference`;
- rows stored before a file or run was recorded: their `source` column alone (`imported`, `generated`).

Pure functions on explanation rows (dicts as core.db returns them); no database access.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

# The params of a generated row that describe the run rather than the single job (seed, threshold and the
# answer's own fields differ per neuron or sample).
RUN_SETTINGS = ("sampling", "few_shot", "cutoff", "records")
SOURCE_DIGITS = 12


def _params(row: Mapping[str, Any]) -> dict[str, Any]:
    params = row.get("params")
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            return {}
    return params if isinstance(params, dict) else {}


def source_key(row: Mapping[str, Any]) -> str:
    """The source of one explanation row: `file:<sha256>`, `run:<settings hash>[/sample<k>]`, `reference`, or
    the row's bare `source` when it carries nothing more."""
    kind = row.get("source") or "generated"
    params = _params(row)
    if kind == "imported":
        sha = params.get("sha256")
        return f"file:{str(sha)[:SOURCE_DIGITS]}" if sha else "imported"
    if kind == "reference":
        return "reference"
    settings = {key: params[key] for key in RUN_SETTINGS if key in params}
    if not settings:
        return str(kind)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    sample = int(row.get("sample") or 0)
    return f"run:{digest[:SOURCE_DIGITS]}" + (f"/sample{sample}" if sample else "")


def origin(row: Mapping[str, Any]) -> str:
    """A person's name for a row's source: the imported file's name, or the generating run's main settings."""
    kind = row.get("source") or "generated"
    params = _params(row)
    if kind == "imported":
        return str(params.get("file") or params.get("path") or "an import of unknown file")
    if kind == "reference":
        return "OpenAI's published explanations"
    sampling = params.get("sampling") if isinstance(params.get("sampling"), dict) else {}
    if not sampling:
        return f"{kind} (settings not recorded)"
    parts = [f"temperature {sampling.get('temperature')}"] if sampling else []
    few_shot = params.get("few_shot") if isinstance(params.get("few_shot"), dict) else {}
    if few_shot:
        parts.append(f"few-shot {few_shot.get('source')}")
    cutoff = params.get("cutoff") if isinstance(params.get("cutoff"), dict) else None
    if cutoff:
        parts.append(f"cutoff {cutoff.get('mode')} {cutoff.get('value')}")
    if row.get("sample"):
        parts.append(f"sample {row['sample']}")
    return f"{kind}: " + ", ".join(parts) if parts else str(kind)


def names_source(written: str, row: Mapping[str, Any]) -> bool:
    """Whether `written` (what follows `#` in an arm) names this row's source: the source key itself, a prefix of
    it of at least 8 hex digits, or, for an imported row, the file's name or path."""
    written = written.strip()
    key = source_key(row)
    if written == key:
        return True
    kind, _, rest = key.partition(":")
    wanted_kind, _, wanted_rest = written.partition(":")
    if rest and wanted_kind == kind and len(wanted_rest) >= 8 and rest.startswith(wanted_rest):
        return True
    if row.get("source") == "imported":
        params = _params(row)
        return written in {str(params.get("file")), str(params.get("path"))}
    return False


def with_sources(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copies of `rows` with `source_key` and `origin` added (rows need source, params and sample)."""
    return [{**row, "source_key": source_key(row), "origin": origin(row)} for row in rows]
