"""Scoring: correlation / R² / absdev of simulated activations, calibration and per-format statistics
(docs/METHOD.md §3–§4), all pure functions of their arguments. Explanation similarity is in core/similarity.py.

Undefined values are `None`, never NaN and never 0 (docs/METHOD.md §4: NaN is stored as missing, never as 0).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd

from core.errors import InputError
from core.records import ActivationRecord
from core.tokens import TOKEN_UNITS, token_unit
from core.values import finite_or_none

# ---------------------------------------------------------------------------------------------------------------
# Formulas (docs/METHOD.md §4)
# ---------------------------------------------------------------------------------------------------------------

# Activations or predictions: a list of floats or a 1-d float array.
FloatValues = Sequence[float] | npt.NDArray[np.floating]


def _as_pair(y: FloatValues, y_hat: FloatValues) -> tuple[np.ndarray, np.ndarray]:
    true = np.asarray(y, dtype=float).ravel()
    predicted = np.asarray(y_hat, dtype=float).ravel()
    if true.shape != predicted.shape:
        raise InputError(f"{true.size} true activations but {predicted.size} predictions: they must align one to one")
    for name, values in (("true activations", true), ("predictions", predicted)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise InputError(
                f"{name} hold a non-finite value at position {int(bad[0])}; record a failed simulation as a failure "
                "instead of passing NaN or infinity"
            )
    return true, predicted


def correlation(y: FloatValues, y_hat: FloatValues) -> float | None:
    """Pearson correlation; None when either side is constant or there are fewer than 2 values."""
    true, predicted = _as_pair(y, y_hat)
    # max == min is an exact constancy test; a computed std can be a tiny non-zero for repeated decimals.
    if true.size < 2 or np.ptp(true) == 0 or np.ptp(predicted) == 0:
        return None
    centred_true = true - true.mean()
    centred_predicted = predicted - predicted.mean()
    denominator = math.sqrt(float(centred_true @ centred_true) * float(centred_predicted @ centred_predicted))
    if denominator == 0:
        return None
    return finite_or_none(min(1.0, max(-1.0, float(centred_true @ centred_predicted) / denominator)))


def rsquared(y: FloatValues, y_hat: FloatValues) -> float | None:
    """1 − mean((y−ŷ)²)/mean(y²); None when mean(y²) = 0 or there are no values."""
    true, predicted = _as_pair(y, y_hat)
    scale = float(np.mean(true**2)) if true.size else 0.0
    if scale == 0:
        return None
    return finite_or_none(1.0 - float(np.mean((true - predicted) ** 2)) / scale)


def absdev(y: FloatValues, y_hat: FloatValues) -> float | None:
    """1 − mean|y−ŷ|/mean|y|; None when mean|y| = 0 or there are no values."""
    true, predicted = _as_pair(y, y_hat)
    scale = float(np.mean(np.abs(true))) if true.size else 0.0
    if scale == 0:
        return None
    return finite_or_none(1.0 - float(np.mean(np.abs(true - predicted))) / scale)


@dataclass(frozen=True)
class Scores:
    """Pooled scores over all records plus the same three numbers per excerpt. None means undefined.

    `raw_score` is set for calibrated scores only: the correlation of the uncalibrated EVs, kept beside `score`,
    which follows the sign of the calibration's slope (see `score_calibrated`).
    """

    score: float | None
    rsquared: float | None
    absdev: float | None
    per_excerpt: tuple[dict, ...]
    raw_score: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "score": self.score,
            "raw_score": self.raw_score,
            "rsquared": self.rsquared,
            "absdev": self.absdev,
            "per_excerpt": [dict(item) for item in self.per_excerpt],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scores:
        return cls(
            score=data.get("score"),
            rsquared=data.get("rsquared"),
            absdev=data.get("absdev"),
            per_excerpt=tuple(dict(item) for item in data.get("per_excerpt", [])),
            raw_score=data.get("raw_score"),
        )


def _aligned(
    true_records: Sequence[ActivationRecord], predictions: Sequence[Sequence[float]]
) -> list[tuple[np.ndarray, np.ndarray]]:
    if len(true_records) != len(predictions):
        raise InputError(
            f"{len(true_records)} records but {len(predictions)} prediction lists: pass one list of predictions "
            "per record, in the same order"
        )
    if not true_records:
        raise InputError("no records to score: pass at least one record with its predictions")
    pairs = []
    for i, (record, predicted) in enumerate(zip(true_records, predictions, strict=True)):
        if len(record.activations) != len(predicted):
            raise InputError(
                f"record {i} has {len(record.activations)} tokens but {len(predicted)} predictions: "
                "predict one value per token"
            )
        pairs.append(_as_pair(record.activations, predicted))
    return pairs


def score_records(true_records: Sequence[ActivationRecord], predictions: Sequence[Sequence[float]]) -> Scores:
    """Score predictions pooled over the concatenation of all records (docs/METHOD.md §4), not as a mean of per-excerpt
    correlations; per-excerpt values are kept alongside for inspection."""
    pairs = _aligned(true_records, predictions)
    true = np.concatenate([t for t, _ in pairs])
    predicted = np.concatenate([p for _, p in pairs])
    per_excerpt = tuple(
        {
            "index": i,
            "n_tokens": int(t.size),
            "score": correlation(t, p),
            "rsquared": rsquared(t, p),
            "absdev": absdev(t, p),
        }
        for i, (t, p) in enumerate(pairs)
    )
    return Scores(
        score=correlation(true, predicted),
        rsquared=rsquared(true, predicted),
        absdev=absdev(true, predicted),
        per_excerpt=per_excerpt,
    )


def fit_calibration(
    true_records: Sequence[ActivationRecord], predictions: Sequence[Sequence[float]]
) -> tuple[float, float]:
    """Least-squares `y ≈ a·EV + b` over the pooled tokens (docs/METHOD.md §3, calibration split).

    Constant predictions carry no slope information, so the fit is then a = 0, b = mean(y).
    """
    pairs = _aligned(true_records, predictions)
    true = np.concatenate([t for t, _ in pairs])
    predicted = np.concatenate([p for _, p in pairs])
    if np.ptp(predicted) == 0:
        return 0.0, float(true.mean())
    centred = predicted - predicted.mean()
    slope = float(centred @ (true - true.mean())) / float(centred @ centred)
    return slope, float(true.mean() - slope * predicted.mean())


def apply_calibration(predictions: Sequence[Sequence[float]], a: float, b: float) -> list[list[float]]:
    """`a·EV + b` for every prediction, keeping the per-record structure; the input is not modified."""
    return [[a * float(value) + b for value in record] for record in predictions]


def _slope_sign(predictions: Sequence[Sequence[float]], calibrated: Sequence[Sequence[float]]) -> float:
    """The sign of a in `calibrated = a·predictions + b`, read back from the two (0 when predictions are constant)."""
    x = np.concatenate([np.asarray(p, dtype=float).ravel() for p in predictions]) if predictions else np.zeros(0)
    y = np.concatenate([np.asarray(c, dtype=float).ravel() for c in calibrated]) if calibrated else np.zeros(0)
    if x.size < 2 or x.size != y.size:
        return 0.0
    return float(np.sign((x - x.mean()) @ (y - y.mean())))


def _flipped(value: float | None, sign: float) -> float | None:
    return None if value is None else (-value if sign < 0 else value)


def score_calibrated(
    true_records: Sequence[ActivationRecord],
    predictions: Sequence[Sequence[float]],
    calibrated: Sequence[Sequence[float]],
    slope: float | None = None,
) -> Scores:
    """Scores of calibrated predictions (docs/METHOD.md §3): R² and absdev of `calibrated`; the score is the
    correlation of the calibrated values, as OpenAI's code reports it, and `raw_score` that of the raw EVs.

    A linear calibration leaves the correlation's size alone, but a negative slope flips its sign: the score is then
    −raw, as in OpenAI's code. A zero slope (constant calibration-split EVs) would make it undefined; we keep the
    raw correlation then. `slope` is the fitted a; without it, its sign is read back from the two prediction sets.
    Per excerpt alike, each item keeping its `raw_score`.
    """
    raw = score_records(true_records, predictions)
    fitted = score_records(true_records, calibrated)
    sign = _slope_sign(predictions, calibrated) if slope is None else float(np.sign(slope))
    per_excerpt = tuple(
        {**item, "score": _flipped(plain["score"], sign), "raw_score": plain["score"]}
        for plain, item in zip(raw.per_excerpt, fitted.per_excerpt, strict=True)
    )
    return Scores(
        score=_flipped(raw.score, sign),
        rsquared=fitted.rsquared,
        absdev=fitted.absdev,
        per_excerpt=per_excerpt,
        raw_score=raw.score,
    )


# ---------------------------------------------------------------------------------------------------------------
# Statistics for per-format tables
# ---------------------------------------------------------------------------------------------------------------


class Estimate(NamedTuple):
    """A mean with its percentile-bootstrap interval over `n` defined values; all None when n = 0, and no
    interval when n = 1."""

    mean: float | None
    lo: float | None
    hi: float | None
    n: int


def _finite_values(values: Iterable[float | None]) -> np.ndarray:
    kept = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return np.asarray(kept, dtype=float)


def _check_bootstrap(n_resamples: int, level: float) -> None:
    if n_resamples < 1:
        raise InputError(f"n_resamples={n_resamples}: use at least 1 resample (2000 is usual)")
    if not 0 < level < 1:
        raise InputError(f"level={level}: a confidence level is a fraction strictly between 0 and 1, e.g. 0.95")


def _bootstrap_interval(values: np.ndarray, n_resamples: int, level: float, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    # Chunks bound memory at ~1M indices for large samples.
    chunk = max(1, 1_000_000 // values.size)
    for start in range(0, n_resamples, chunk):
        stop = min(n_resamples, start + chunk)
        means[start:stop] = values[rng.integers(0, values.size, size=(stop - start, values.size))].mean(axis=1)
    tail = (1.0 - level) / 2
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Iterable[float | None], *, n_resamples: int = 2000, level: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean and percentile-bootstrap CI of the mean, ignoring None/NaN; deterministic for a given seed."""
    _check_bootstrap(n_resamples, level)
    kept = _finite_values(values)
    if kept.size == 0:
        return Estimate(None, None, None, 0)
    mean = float(kept.mean())
    if kept.size == 1:
        return Estimate(mean, None, None, 1)
    lo, hi = _bootstrap_interval(kept, n_resamples, level, seed)
    return Estimate(mean, lo, hi, int(kept.size))


def _sort_key(key: Hashable) -> tuple[str, str]:
    return (type(key).__name__, str(key))


def paired_difference(
    a: Mapping[Hashable, float | None],
    b: Mapping[Hashable, float | None],
    *,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """Mean of a[k] − b[k] over keys defined in both, with a paired bootstrap CI and, when n ≥ 5, a Wilcoxon
    signed-rank p-value (two-sided, zero differences dropped as scipy does by default)."""
    from scipy import stats

    _check_bootstrap(n_resamples, level)
    keys = sorted((k for k in a if k in b), key=_sort_key)
    # A missing or NaN score on either side drops the key: NaN − x is NaN, which _finite_values skips.
    pairs = [(a[k], b[k]) for k in keys]
    differences = _finite_values(float(x) - float(y) for x, y in pairs if x is not None and y is not None)
    n = int(differences.size)
    result: dict[str, Any] = {"n": n, "mean_diff": None, "ci_lo": None, "ci_hi": None, "p_value": None}
    if n == 0:
        return result
    result["mean_diff"] = float(differences.mean())
    if n >= 2:
        result["ci_lo"], result["ci_hi"] = _bootstrap_interval(differences, n_resamples, level, seed)
    if n >= 5:
        if not differences.any():
            result["p_value"] = 1.0  # no non-zero difference at all: no evidence either way
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                result["p_value"] = finite_or_none(float(stats.wilcoxon(differences).pvalue))
    return result


_REQUIRED_COLUMNS = ("format", "neuron", "score")

_SUMMARY_COLUMNS = [
    "format",
    "n",
    "mean_score",
    "score_ci_lo",
    "score_ci_hi",
    "mean_similarity",
    "n_similarity",
]


def _score_rows(rows: pd.DataFrame | Sequence[Mapping[str, Any]], simulator: str | None) -> pd.DataFrame:
    """Check columns and keep the rows of one simulator; means over several simulators are meaningless."""
    if not isinstance(rows, pd.DataFrame):
        rows = pd.DataFrame(list(rows))
    missing = [c for c in _REQUIRED_COLUMNS if c not in rows.columns]
    if missing:
        raise InputError(f"rows lack the column(s) {', '.join(missing)}; need format, neuron, score and simulator")
    rows = rows.copy()
    for column in ("simulator", "similarity", "input_tokens"):
        if column not in rows.columns:
            rows[column] = None
    present = sorted({str(s) for s in rows["simulator"].dropna().unique()})
    if simulator is None:
        if len(present) > 1:
            raise InputError(
                f"rows hold scores from {len(present)} simulators ({', '.join(present)}); scores of different "
                "simulators cannot share one mean: pass simulator= one of them"
            )
        chosen = present[0] if present else None
    else:
        if simulator not in present:
            raise InputError(f"no scores from simulator {simulator!r}; the rows have: {', '.join(present) or 'none'}")
        chosen = simulator
    # Unscored explanations (no simulator) still count for similarity and token cost.
    keep = rows["simulator"].isna() | (rows["simulator"].astype(str) == str(chosen))
    rows = rows[keep].copy()
    # One simulator name is not enough: its methods, splits and calibration each give other scores.
    scored = rows[rows["simulator"].notna()]
    for column in ("method", "split", "calibrated"):
        if column in scored.columns:
            values = sorted({str(v) for v in scored[column].dropna().unique()})
            if len(values) > 1:
                raise InputError(
                    f"the scores of simulator {chosen!r} mix {column} values ({', '.join(values)}), which cannot "
                    f"share one mean: pass the rows of one {column}"
                )
    for column in ("score", "similarity", "input_tokens"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    rows["_neuron_key"] = (
        rows["model"].astype(str) + "/" + rows["neuron"].astype(str)
        if "model" in rows.columns
        else rows["neuron"].astype(str)
    )
    # Input tokens under their unit (core.tokens.TOKEN_UNITS): an API's count and an offline count never share a mean.
    counted_by = rows["tokenizer"] if "tokenizer" in rows.columns else pd.Series(None, index=rows.index, dtype=object)
    units = counted_by.map(lambda name: token_unit(name if isinstance(name, str) else None))
    for unit in TOKEN_UNITS:
        rows[f"input_tokens_{unit}"] = rows["input_tokens"].where(units == unit)
    return rows


def _token_columns(rows: pd.DataFrame) -> list[str]:
    """The `input_tokens_<unit>` columns of `_score_rows` output that hold a count."""
    return [f"input_tokens_{unit}" for unit in TOKEN_UNITS if rows[f"input_tokens_{unit}"].notna().any()]


def _numeric(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    # Tables use pandas' missing value (NaN) so a column stays numeric; None is for scalars and dataclasses.
    for column in columns:
        table[column] = pd.to_numeric(table[column], errors="coerce")
    return table


def _per_neuron(rows: pd.DataFrame) -> pd.DataFrame:
    # Several samples of one neuron under one format are averaged first, so the bootstrap resamples neurons.
    columns = ["score", "similarity", *(f"input_tokens_{unit}" for unit in TOKEN_UNITS)]
    return rows.groupby(["format", "_neuron_key"], sort=False)[columns].mean()


def format_summary(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    *,
    simulator: str | None = None,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Per-format table: neurons scored (n), mean score with bootstrap CI, mean similarity, mean input tokens per
    unit (`mean_input_tokens_cl100k`, `_server`…: core.tokens.TOKEN_UNITS, only the units the rows have).

    Rows need format, neuron ("layer:index"), score, simulator; similarity, input_tokens, tokenizer (what counted
    them; without it the unit is `unknown`) and model are optional. Formats appear in the order they first occur in
    `rows`; undefined values in the table are NaN.
    """
    rows = _score_rows(rows, simulator)
    per_neuron = _per_neuron(rows)
    token_columns = _token_columns(rows)
    table = []
    for format_name in rows["format"].drop_duplicates():
        group = per_neuron.loc[format_name]
        estimate = bootstrap_ci(group["score"].tolist(), n_resamples=n_resamples, level=level, seed=seed)
        similarity = group["similarity"].dropna()
        row = {
            "format": format_name,
            "n": estimate.n,
            "mean_score": estimate.mean,
            "score_ci_lo": estimate.lo,
            "score_ci_hi": estimate.hi,
            "mean_similarity": float(similarity.mean()) if len(similarity) else None,
            "n_similarity": len(similarity),
        }
        for column in token_columns:
            tokens = group[column].dropna()
            row[f"mean_{column}"] = float(tokens.mean()) if len(tokens) else None
        table.append(row)
    columns = [*_SUMMARY_COLUMNS, *(f"mean_{column}" for column in token_columns)]
    return _numeric(pd.DataFrame(table, columns=columns), columns[1:])


def paired_format_differences(
    rows: pd.DataFrame | Sequence[Mapping[str, Any]],
    baseline: str = "original",
    *,
    simulator: str | None = None,
    n_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """For each other format: mean (format − baseline) score on the neurons both have, with CI and p-value."""
    rows = _score_rows(rows, simulator)
    formats = list(rows["format"].drop_duplicates())
    if baseline not in formats:
        raise InputError(f"baseline format {baseline!r} has no rows; formats present: {', '.join(map(str, formats))}")
    scores = _per_neuron(rows)["score"]
    baseline_scores = scores.loc[baseline].to_dict()
    table = []
    for format_name in formats:
        if format_name == baseline:
            continue
        difference = paired_difference(
            scores.loc[format_name].to_dict(), baseline_scores, n_resamples=n_resamples, level=level, seed=seed
        )
        table.append({"format": format_name, "baseline": baseline, **difference})
    columns = ["format", "baseline", "n", "mean_diff", "ci_lo", "ci_hi", "p_value"]
    return _numeric(pd.DataFrame(table, columns=columns), columns[2:])
