"""A study's analysis plan, fixed before the first rating (docs/METHOD.md, human evaluation).

The plan names the primary comparison and its test, how many neurons the study needs, which ratings are excluded
and why, and when to stop. It is stored once with its SHA-256 and time, can never change afterwards, and travels
with every summary and export, so that a reader can check that the analysis they see is the one planned.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from core.datafiles import DataModel, parse
from core.errors import InputError

PRIMARY_TEST = "neuron-level exact sign test, cluster-bootstrap CI over neurons"
INTERIM_CHOICES = ("banner", "hide")
# Straight-lining: the same side on at least this share of a rater's items, once they have rated this many.
STRAIGHT_LINE_SHARE = 0.9
STRAIGHT_LINE_MIN_ITEMS = 10
# Continuous gold checks pause a rater only once this many of their gold answers are in.
MIN_GOLD_FOR_PAUSE = 3


@dataclass(frozen=True)
class StudyPlan:
    """What the analysis of a study will be, decided before any rating.

    `primary_pair`: the arms of the primary test (arm A first). `target_neurons`: neurons with decisive ratings the
    primary test needs (`study power` says how many). Exclusions: raters below `min_gold_accuracy` on gold items,
    ratings faster than `min_seconds`, raters who straight-line, ratings beyond `rater_cap` per rater. A rater's
    first `qualification_items` items are gold items, and one who fails them is paused. `interim`: before the
    target is reached the primary p-value and CI are shown under a banner, or hidden.
    """

    primary_pair: tuple[str, str]
    target_neurons: int
    ratings_per_item: int
    alpha: float = 0.05
    test: str = PRIMARY_TEST
    min_gold_accuracy: float | None = None
    qualification_items: int = 0
    min_seconds: float | None = None
    exclude_straight_lining: bool = True
    rater_cap: int | None = None
    stopping_rule: str = "stop when target_neurons neurons have decisive ratings"
    interim: str = "banner"

    def __post_init__(self) -> None:
        if len(self.primary_pair) != 2 or self.primary_pair[0] == self.primary_pair[1]:
            raise InputError(f"the plan's primary pair needs two different arms, not {list(self.primary_pair)}")
        if not 0 < self.alpha < 0.5:
            raise InputError(f"the plan's alpha must be between 0 and 0.5, not {self.alpha}")
        if self.target_neurons < 1 or self.ratings_per_item < 1:
            raise InputError("the plan needs a target of at least 1 neuron and at least 1 rating per item")
        if self.min_gold_accuracy is not None and not 0 <= self.min_gold_accuracy <= 1:
            raise InputError(f"min_gold_accuracy must be between 0 and 1, not {self.min_gold_accuracy}")
        if self.qualification_items < 0 or (self.rater_cap is not None and self.rater_cap < 1):
            raise InputError("qualification_items must be ≥ 0 and rater_cap ≥ 1")
        if self.min_seconds is not None and not (math.isfinite(self.min_seconds) and self.min_seconds >= 0):
            raise InputError(f"min_seconds must be a finite number ≥ 0, not {self.min_seconds}")
        if self.interim not in INTERIM_CHOICES:
            raise InputError(f"interim must be one of {', '.join(INTERIM_CHOICES)}, not {self.interim!r}")

    @property
    def qualification_threshold(self) -> float:
        """The share of qualification items a rater must get right: min_gold_accuracy, else all of them."""
        return 1.0 if self.min_gold_accuracy is None else self.min_gold_accuracy

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "primary_pair": list(self.primary_pair)}

    @classmethod
    def from_json(cls, value: Any, where: str = "the plan") -> StudyPlan:
        """A plan from its JSON (a plan file, or as stored); InputError naming `where` and the field otherwise."""
        if isinstance(value, dict):
            known = {field.name for field in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise InputError(
                    f"{where}: unknown plan field(s): {', '.join(unknown)}; a plan has {', '.join(sorted(known))}"
                )
        checked = parse(PlanFile, value, where)
        return cls(**{name: getattr(checked, name) for name in PlanFile.model_fields})

    def canonical(self) -> str:
        """The plan as the exact text that is hashed: sorted keys, no spaces."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    def sha256(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()


def check_against_study(plan: StudyPlan, arms: tuple[str, ...], ratings_per_item: int) -> None:
    """InputError unless the plan's primary pair are arms of the study and its ratings per item match."""
    missing = [arm for arm in plan.primary_pair if arm not in arms]
    if missing:
        raise InputError(
            f"the plan's primary pair names {', '.join(missing)}, not an arm of the study ({', '.join(arms)})"
        )
    if plan.ratings_per_item != ratings_per_item:
        raise InputError(
            f"the plan says {plan.ratings_per_item} ratings per item but the study asks for {ratings_per_item}"
        )


@dataclass(frozen=True)
class StoredPlan:
    """A plan as stored: frozen, with its hash and the time it was fixed."""

    plan: StudyPlan
    sha256: str
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {"plan": self.plan.to_json(), "sha256": self.sha256, "created_at": self.created_at}

    @classmethod
    def from_json(cls, value: Any, where: str = "the stored plan") -> StoredPlan:
        """A stored plan from its JSON (`to_json`), e.g. in an export's summary."""
        checked = parse(StoredPlanFile, value, where)
        return cls(StudyPlan.from_json(checked.plan, f"{where}: plan"), checked.sha256, checked.created_at)


# A plan's numbers are hashed as written (StudyPlan.canonical): an int stays an int and a float a float, so that a
# plan read back hashes as it did when it was fixed.
Number = int | float


class PlanFile(DataModel):
    """A plan's JSON, as a file or the database holds it: StudyPlan's fields and defaults; StudyPlan.__post_init__
    then checks their values (the primary pair is read as a list so that it says what a pair needs)."""

    primary_pair: tuple[str, ...]
    target_neurons: int
    ratings_per_item: int
    alpha: Number = StudyPlan.alpha
    test: str = StudyPlan.test
    min_gold_accuracy: Number | None = StudyPlan.min_gold_accuracy
    qualification_items: int = StudyPlan.qualification_items
    min_seconds: Number | None = StudyPlan.min_seconds
    exclude_straight_lining: bool = StudyPlan.exclude_straight_lining
    rater_cap: int | None = StudyPlan.rater_cap
    stopping_rule: str = StudyPlan.stopping_rule
    interim: str = StudyPlan.interim


class StoredPlanFile(DataModel):
    """A StoredPlan's JSON (as an export's summary carries it); its plan is read by StudyPlan.from_json."""

    plan: dict[str, Any]
    sha256: str
    created_at: str
