"""Blinded pairwise human evaluation: studies, items, assignment and ratings (docs/METHOD.md §9).

A study compares two or more arms (sets of explanations: a format, an explainer and a source, `FORMAT[@EXPLAINER]
[#SOURCE]`, each resolving to exactly one set; core.provenance) on the same neurons.
Each item shows one neuron with explanations from two arms; which arm is on the left is drawn with the study's seed
and balanced within each pair of arms. Raters only ever receive `RaterItem`s, which name no arm, format or
explainer. All SQL is in core.db; raters are in core.raters; the statistics are in core.stats; exports are in
core.export.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import sqlite_utils

from core import blinding, provenance, quality
from core import db as dbmod
from core import plan as plan_module
from core.db import RATING_CHOICES
from core.errors import InputError, NotFoundError
from core.plan import StoredPlan, StudyPlan
from core.records import NeuronId

log = logging.getLogger(__name__)

# An assignment left unrated this long stops counting toward its item's fill, so a rater who walks away does not
# hold items back from the others (the item stays theirs to rate).
RESERVATION_SECONDS = 30 * 60
MAX_COMMENT_CHARS = 5000
# The reason given for a skipped pair whose two explanations read the same.
IDENTICAL = "explanations are identical"
# What the rater sees for each choice; left is shown first as "Explanation 1".
CHOICE_LABELS = {"left": "Explanation 1", "right": "Explanation 2", "tie": "Equally good", "both_bad": "Both bad"}


# --- studies and items -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """A set of explanations: a format, optionally of one explainer (exactly as stored) and one source
    (core.provenance), written `summary`, `summary@gpt-4` or `summary@gpt-4#file:3fa9c2d1e0b4`. Whatever is left
    out must still resolve to one explainer and one source for the study's neurons (`resolve_arms`)."""

    format: str
    explainer: str | None = None
    source: str | None = None

    def __str__(self) -> str:
        explainer = f"@{self.explainer}" if self.explainer else ""
        return f"{self.format}{explainer}" + (f"#{self.source}" if self.source else "")

    @classmethod
    def parse(cls, text: str) -> Arm:
        head, hash_sep, source = text.strip().partition("#")
        name, sep, explainer = head.partition("@")
        if not name.strip() or (sep and not explainer.strip()) or (hash_sep and not source.strip()):
            raise InputError(
                f"arm {text!r} is not of the form FORMAT[@EXPLAINER][#SOURCE], e.g. summary@gpt-4 or "
                "summary@gpt-4#file:3fa9c2d1e0b4 (`python -m core explanations` lists explainers and sources)"
            )
        return cls(name.strip(), explainer.strip() or None, source.strip() or None)

    def matches(self, explanation: dict[str, Any]) -> bool:
        """Whether a stored explanation belongs to this arm as written. Explainer names are compared as written:
        `gpt-4` (an import's label) and `openai:gpt-4` (generated here) are different explainers."""
        if explanation["format"] != self.format or not (explanation.get("explanation") or "").strip():
            return False
        if self.explainer is not None and explanation["explainer"] != self.explainer:
            return False
        return self.source is None or provenance.names_source(self.source, explanation)


def parse_arms(text: str | Sequence[str]) -> list[Arm]:
    """Arms from `summary,original@gpt-4` (or a list of such strings); at least two, all different."""
    parts = text.split(",") if isinstance(text, str) else list(text)
    arms = [Arm.parse(part) for part in parts if part.strip()]
    if len(arms) < 2 or len(set(arms)) != len(arms):
        raise InputError(f"a study needs at least two different arms, e.g. --arms summary,original (got {text!r})")
    return arms


@dataclass(frozen=True)
class ArmSource:
    """One explanation set an arm resolved to: its explainer and source (core.provenance), a person's name for the
    source, and how many of the study's explanations come from it."""

    arm: str
    format: str
    explainer: str
    source: str
    origin: str
    n_explanations: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _set_of(row: dict[str, Any]) -> tuple[str, str]:
    return row["explainer"], provenance.source_key(row)


def resolve_arms(
    model: str, explanations: dict[NeuronId, list[dict]], arms: Sequence[Arm]
) -> dict[Arm, tuple[str, str]]:
    """Each arm's one (explainer, source) among these neurons' explanations. InputError, in one line, when an arm
    matches nothing, or matches explanations of several explainers or sources: it lists the candidates, each
    written as an arm that names exactly it."""
    rows = [row for found in explanations.values() for row in found]
    resolved = {}
    for arm in arms:
        neurons: dict[tuple[str, str], set[tuple[int, int]]] = {}
        origins: dict[tuple[str, str], str] = {}
        for row in rows:
            if arm.matches(row):
                neurons.setdefault(_set_of(row), set()).add((row["layer"], row["neuron"]))
                origins.setdefault(_set_of(row), provenance.origin(row))
        if not neurons:
            there = sorted({f"{row['format']}@{row['explainer']}#{provenance.source_key(row)}" for row in rows})
            raise InputError(
                f"arm {arm} matches no explanation of {model} for these neurons; there are: "
                f"{', '.join(there) or 'none'}"
            )
        if len(neurons) > 1:
            ordered = sorted(neurons, key=lambda key: (-len(neurons[key]), key))
            written = [f"{arm.format}@{explainer}#{source}" for explainer, source in ordered]
            candidates = "; ".join(
                f"{name} ({origins[key]}, {len(neurons[key])} neurons)"
                for name, key in zip(written, ordered, strict=True)
            )
            raise InputError(
                f"arm {arm} matches explanations of {len(neurons)} explainers or sources for these neurons, which a "
                f"study must not mix: {candidates}; name one as FORMAT@EXPLAINER#SOURCE in --arms, e.g. {written[0]}"
            )
        resolved[arm] = next(iter(neurons))
    return resolved


def arm_sources(
    arms: Sequence[str], items: Sequence[dict[str, Any]], explanations: dict[int, dict[str, Any]]
) -> list[ArmSource]:
    """Per arm (in `arms` order), the explanation sets its side of the regular items comes from, each with the
    number of distinct explanations: one per arm for a study created by this version, possibly several for an
    older study that mixed them. `explanations` maps explanation id → stored row (db.explanations_by_ids)."""
    found: dict[str, dict[tuple[str, str], set[int]]] = {arm: {} for arm in arms}
    origins: dict[tuple[str, str], str] = {}
    for item in items:
        if item["is_gold"]:
            continue
        for side in ("left", "right"):
            row = explanations.get(item[f"{side}_explanation_id"])
            if row is None:
                continue
            key = _set_of(row)
            origins.setdefault(key, provenance.origin(row))
            found.setdefault(item[f"{side}_arm"], {}).setdefault(key, set()).add(row["id"])
    return [
        ArmSource(arm, Arm.parse(arm).format, explainer, source, origins[explainer, source], len(ids))
        for arm, sets in found.items()
        for (explainer, source), ids in sorted(sets.items(), key=lambda pair: (-len(pair[1]), pair[0]))
    ]


@dataclass(frozen=True)
class Study:
    """A study's configuration, as stored."""

    id: int
    name: str
    instructions: str
    model: str
    arms: tuple[str, ...]
    neurons: tuple[str, ...]
    ratings_per_item: int
    allow_tie: bool
    allow_both_bad: bool
    overlap_share: float
    gold_share: float
    seed: int
    created_at: str
    state: str = "open"
    allow_admin_ratings: bool = False

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Study:
        fields = {name: row[name] for name in cls.__dataclass_fields__}
        fields.update(arms=tuple(row["arms"]), neurons=tuple(row["neurons"]))
        fields.update(allow_tie=bool(row["allow_tie"]), allow_both_bad=bool(row["allow_both_bad"]))
        fields.update(allow_admin_ratings=bool(row["allow_admin_ratings"]))
        return cls(**fields)

    @property
    def is_open(self) -> bool:
        return self.state == "open"

    @property
    def choices(self) -> tuple[str, ...]:
        """The choices a rater may make in this study."""
        return ("left", "right", *(["tie"] if self.allow_tie else []), *(["both_bad"] if self.allow_both_bad else []))

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "arms": list(self.arms), "neurons": list(self.neurons)}


@dataclass(frozen=True)
class StudyCreated:
    """A new study, its item counts, what was skipped (for want of an explanation, or because both sides read the
    same), and the text tells between its arms (core.blinding)."""

    study: Study
    n_items: int
    n_gold: int
    skipped: tuple[str, ...]
    n_identical: int = 0
    tells: tuple[blinding.TextTell, ...] = ()
    arms: tuple[ArmSource, ...] = ()


def get_study(db: sqlite_utils.Database, name: str) -> Study:
    return Study.from_row(dbmod.get_study(db, blinding.normalise_name(name)))


def list_studies(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Each study's name, state, model, arms, item and rating counts, creation time and assigned raters."""
    keys = ("name", "state", "model", "arms", "ratings_per_item", "n_items", "n_ratings", "created_at")
    raters = dbmod.study_rater_names(db)
    return [{**{key: row[key] for key in keys}, "raters": raters.get(row["id"], [])} for row in dbmod.list_studies(db)]


def set_state(db: sqlite_utils.Database, study: str, state: str) -> Study:
    """Open or close a study. While it is open its neurons' explanations and scores are shown to admins only, and
    raters may rate it; once closed, nobody rates it and its neurons are visible to everyone again."""
    record = get_study(db, study)
    dbmod.set_study_state(db, record.id, state)
    return get_study(db, record.name)


def set_plan(db: sqlite_utils.Database, study: str, plan: StudyPlan) -> StoredPlan:
    """Fix a study's analysis plan: once, and before its first rating."""
    record = get_study(db, study)
    plan_module.check_against_study(plan, record.arms, record.ratings_per_item)
    dbmod.store_plan(db, record.id, plan.canonical(), plan.sha256())
    stored = get_plan(db, record.name)
    assert stored is not None
    return stored


def get_plan(db: sqlite_utils.Database, study: str) -> StoredPlan | None:
    """A study's fixed plan with its hash and time, or None when it has none."""
    row = dbmod.get_plan(db, get_study(db, study).id)
    if row is None:
        return None
    # The hash is of the text as stored (StudyPlan.canonical when it was fixed), so it is checked on that text.
    if hashlib.sha256(row["plan"].encode()).hexdigest() != row["sha256"]:
        raise InputError(f"the stored plan of study {study!r} does not match its hash; the database was altered")
    plan = StudyPlan.from_json(json.loads(row["plan"]), f"the stored plan of study {study!r}")
    return StoredPlan(plan, row["sha256"], row["created_at"])


def set_admin_ratings(db: sqlite_utils.Database, study: str, allow: bool) -> Study:
    """Let admins (who can see unblinded results) rate this study, or stop them."""
    record = get_study(db, study)
    dbmod.set_allow_admin_ratings(db, record.id, allow)
    return get_study(db, record.name)


def _study_model(db: sqlite_utils.Database, neurons: Sequence[NeuronId], model: str | None) -> str:
    if model is not None:
        return model
    models = dbmod.explanation_models(db, neurons)
    if not models:
        raise NotFoundError(
            "none of these neurons has an explanation yet; explain them first (`python -m core explain`)"
        )
    if len(models) > 1:
        raise InputError(
            f"these neurons have explanations of several models ({', '.join(models)}); pick one with --model"
        )
    return models[0]


def _balanced_sides(count: int, rng: random.Random) -> list[bool]:
    """`count` flags, half True (the first arm goes left), shuffled; an odd one out is a coin flip."""
    flags = [i % 2 == 0 for i in range(count)]
    if count % 2:
        flags[-1] = rng.random() < 0.5
    rng.shuffle(flags)
    return flags


def _item(model: str, neuron: NeuronId, left: tuple[str, dict], right: tuple[str, dict]) -> dict[str, Any]:
    (left_arm, left_row), (right_arm, right_row) = left, right
    return {
        "model": model,
        "layer": neuron.layer,
        "neuron": neuron.index,
        "left_arm": left_arm,
        "right_arm": right_arm,
        "left_explanation_id": left_row["id"],
        "right_explanation_id": right_row["id"],
        "left_text": left_row["explanation"].strip(),
        "right_text": right_row["explanation"].strip(),
        "is_gold": 0,
        "gold_choice": None,
    }


# Picks a gold item's decoy among candidate explanations: given the truth's text and the candidates' texts, the
# index of the decoy.
DecoyChooser = Callable[[str, Sequence[str]], int]


def least_similar(embedder: Any) -> DecoyChooser:
    """A decoy chooser that takes the candidate whose text is least similar to the truth's under `embedder`
    (core.similarity), so that an attention check has one clearly wrong answer."""

    def choose(truth: str, candidates: Sequence[str]) -> int:
        vectors = embedder.embed([truth, *candidates])
        return int(np.argmin(vectors[1:] @ vectors[0]))

    return choose


def _gold_items(
    model: str,
    picked: dict[NeuronId, dict[Arm, dict]],
    count: int,
    rng: random.Random,
    choose_decoy: DecoyChooser | None = None,
) -> list[dict[str, Any]]:
    """Attention checks: a neuron's own explanation against another neuron's explanation of the same arm, the
    one `choose_decoy` picks (default: a seeded random one)."""
    truths = [neuron for neuron in picked if picked[neuron]]
    rng.shuffle(truths)
    items = []
    for neuron, truth_left in zip(truths, _balanced_sides(min(count, len(truths)), rng), strict=False):
        arm = rng.choice(sorted(picked[neuron], key=str))
        truth = picked[neuron][arm]
        decoys = [
            rows[arm] for other, rows in picked.items() if other != neuron and arm in rows
            and rows[arm]["explanation"].strip() != truth["explanation"].strip()
        ]  # fmt: skip
        if not decoys:
            continue
        texts = [row["explanation"] for row in decoys]
        decoy = decoys[choose_decoy(truth["explanation"], texts)] if choose_decoy else rng.choice(decoys)
        pair = [(f"truth:{arm}", truth), (f"decoy:{arm}", decoy)]
        item = _item(model, neuron, *(pair if truth_left else pair[::-1]))
        items.append({**item, "is_gold": 1, "gold_choice": "left" if truth_left else "right"})
    return items


def plan_items(
    model: str,
    explanations: dict[NeuronId, list[dict]],
    arms: Sequence[Arm],
    seed: int,
    gold_share: float = 0.0,
    choose_decoy: DecoyChooser | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The items of a study (with positions) and the skipped (neuron, arm)s, from each neuron's explanations.

    Each arm resolves to one explainer and source (`resolve_arms`, which refuses an ambiguous arm); per neuron the
    newest ok explanation of that set is used (`explanations` lists rows newest first, as `db.list_explanations`
    does). Every pair of arms gives one item per neuron that has both; the first arm is on the left in half of
    each pair's items. A pair whose two texts read the same (blinding.same_text) is skipped.
    """
    rng = random.Random(seed)
    resolved = resolve_arms(model, explanations, arms)
    picked: dict[NeuronId, dict[Arm, dict]] = {}
    skipped = []
    for neuron, rows in explanations.items():
        found = {
            arm: next((row for row in rows if arm.matches(row) and _set_of(row) == resolved[arm]), None) for arm in arms
        }
        skipped += [f"{neuron}: no {arm} explanation" for arm, row in found.items() if row is None]
        picked[neuron] = {arm: row for arm, row in found.items() if row is not None}
    items = []
    for arm_a, arm_b in itertools.combinations(arms, 2):
        both = [n for n in picked if arm_a in picked[n] and arm_b in picked[n]]
        for neuron, a_left in zip(both, _balanced_sides(len(both), rng), strict=True):
            sides = [(str(arm_a), picked[neuron][arm_a]), (str(arm_b), picked[neuron][arm_b])]
            if sides[0][1]["id"] == sides[1][1]["id"]:
                skipped.append(f"{neuron}: {arm_a} and {arm_b} select the same explanation")
                continue
            if blinding.same_text(sides[0][1]["explanation"], sides[1][1]["explanation"]):
                skipped.append(f"{neuron}: {arm_a} and {arm_b} {IDENTICAL}")
                continue
            items.append(_item(model, neuron, *(sides if a_left else sides[::-1])))
    if gold_share > 0:
        items += _gold_items(model, picked, math.ceil(gold_share * len(items)), rng, choose_decoy)
    rng.shuffle(items)
    return [{**item, "position": position} for position, item in enumerate(items)], skipped


def create_study(
    db: sqlite_utils.Database,
    name: str,
    arms: str | Sequence[str],
    neurons: str | Sequence[str | NeuronId],
    ratings_per_item: int,
    seed: int,
    model: str | None = None,
    instructions: str = "",
    allow_tie: bool = True,
    allow_both_bad: bool = True,
    overlap_share: float = 0.2,
    gold_share: float = 0.0,
    allow_admin_ratings: bool = False,
    plan: StudyPlan | None = None,
    decoy_embedder: Any = "minilm",
) -> StudyCreated:
    """Create a study (open) and its blinded items. Neurons missing an arm's explanation, and pairs whose two
    explanations read the same, are skipped and listed; text tells between the arms are reported. Gold items'
    decoys are the least similar explanations under `decoy_embedder`. A `plan` is fixed with the study."""
    name = blinding.check_new_name(name, dbmod.study_name_keys(db))
    if ratings_per_item < 1:
        raise InputError(f"--ratings-per-item must be at least 1, not {ratings_per_item}")
    for flag, share in (("--overlap-share", overlap_share), ("--gold-share", gold_share)):
        if not 0 <= share <= 1:
            raise InputError(f"{flag} must be between 0 and 1, not {share}")
    arm_list = parse_arms(arms)
    if plan is not None:
        plan_module.check_against_study(plan, tuple(str(arm) for arm in arm_list), ratings_per_item)
    texts = neurons.split(",") if isinstance(neurons, str) else neurons
    ids = list(dict.fromkeys(n if isinstance(n, NeuronId) else NeuronId.parse(n) for n in texts if str(n).strip()))
    if not ids:
        raise InputError("a study needs neurons: pass --neurons as layer:index, comma-separated, e.g. 0:426,0:722")
    model = _study_model(db, ids, model)
    explanations = {neuron: dbmod.list_explanations(db, model, neuron) for neuron in ids}
    resolve_arms(model, explanations, arm_list)  # an arm that matches nothing, or several sets, stops here
    choose_decoy = None
    if gold_share > 0:
        from core import similarity

        choose_decoy = least_similar(similarity.get_embedder(decoy_embedder))
    items, skipped = plan_items(model, explanations, arm_list, seed, gold_share, choose_decoy)
    if not any(not item["is_gold"] for item in items):
        raise InputError("no neuron has explanations for two of the arms, so the study would have no items")
    if skipped:
        log.info("study %s: skipped %s", name, "; ".join(skipped))
    config = {
        "name": name,
        "instructions": instructions,
        "model": model,
        "arms": [str(arm) for arm in arm_list],
        "neurons": [str(neuron) for neuron in ids],
        "ratings_per_item": ratings_per_item,
        "allow_tie": int(allow_tie),
        "allow_both_bad": int(allow_both_bad),
        "overlap_share": overlap_share,
        "gold_share": gold_share,
        "seed": seed,
        "allow_admin_ratings": int(allow_admin_ratings),
    }
    dbmod.insert_study(db, config, items, (plan.canonical(), plan.sha256()) if plan is not None else None)
    n_gold = sum(item["is_gold"] for item in items)
    n_identical = sum(reason.endswith(IDENTICAL) for reason in skipped)
    tells = tuple(blinding.study_tells(items))
    by_id = {row["id"]: row for rows in explanations.values() for row in rows}
    sources = tuple(arm_sources([str(arm) for arm in arm_list], items, by_id))
    study = get_study(db, name)
    return StudyCreated(study, len(items) - n_gold, n_gold, tuple(skipped), n_identical, tells, sources)


def study_arm_sources(db: sqlite_utils.Database, study: str) -> list[ArmSource]:
    """Per arm of a stored study, the explainer and source its explanations come from, with their count."""
    record = get_study(db, study)
    items = dbmod.list_items(db, record.id)
    ids = [item[f"{side}_explanation_id"] for item in items for side in ("left", "right")]
    return arm_sources(record.arms, items, dbmod.explanations_by_ids(db, ids))


def show_study(db: sqlite_utils.Database, study: str) -> dict[str, Any]:
    """A study as JSON: its configuration, state, item and rating counts, and per arm what it resolved to."""
    record = get_study(db, study)
    listed = next(row for row in list_studies(db) if row["name"] == record.name)
    status = study_status(db, record.name)
    return {
        **record.to_json(),
        "raters": listed["raters"],
        "n_items": status["n_items"],
        "n_gold_items": status["n_gold_items"],
        "n_ratings": status["n_ratings"],
        "arm_sources": [source.to_json() for source in study_arm_sources(db, record.name)],
    }


def study_items(db: sqlite_utils.Database, study: str, rater: str | None = None) -> list[dict[str, Any]]:
    """The admin's unblinded view of a study's items, by position, in each item's default layout (the one
    imported ratings without `shown_left` assume); with `rater`, as that rater sees them: items handed to them
    show their layout and `assigned` true, the others their default layout and `assigned` false (a rater's layout
    is drawn when the item is handed out)."""
    record = get_study(db, study)
    items = _default_items(db, record)
    if rater is None:
        return items
    rater_id = _rater_row(db, rater)["id"]
    for item in items:
        item["assigned"] = dbmod.is_assigned(db, item["item_id"], rater_id)
        if item["assigned"]:
            item.update(as_seen(item, dbmod.shown_layout(db, item["item_id"], rater_id)[0]))
    return items


def as_seen(item: dict[str, Any], shown_left: str) -> dict[str, Any]:
    """An admin-view item (study_items) laid out with `shown_left` on the left: arms, explanation ids, texts and
    the gold choice follow."""
    if shown_left == item["left_arm"]:
        return dict(item)
    seen = dict(item)
    for name in ("{}_arm", "{}_explanation_id", "{}_text"):
        left, right = name.format("left"), name.format("right")
        seen[left], seen[right] = item[right], item[left]
    if item["is_gold"]:
        seen["gold_choice"] = "left" if item["gold_choice"] == "right" else "right"
    return seen


def _default_items(db: sqlite_utils.Database, record: Study) -> list[dict[str, Any]]:
    return [
        {
            "item_id": row["id"],
            "position": row["position"],
            "neuron": f"{row['layer']}:{row['neuron']}",
            "left_arm": row["left_arm"],
            "right_arm": row["right_arm"],
            "left_explanation_id": row["left_explanation_id"],
            "right_explanation_id": row["right_explanation_id"],
            "left_text": row["left_text"],
            "right_text": row["right_text"],
            "is_gold": bool(row["is_gold"]),
            "gold_choice": row["gold_choice"],
            "n_ratings": row["n_ratings"],
        }
        for row in dbmod.list_items(db, record.id)
    ]


# --- raters ------------------------------------------------------------------------------------------------------
# Raters and their access codes are in core/raters.py; the lookup below is what assignment and ratings need.


def _rater_row(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    row = dbmod.get_rater(db, name)
    if row is None:
        raise NotFoundError(f"no rater named {name!r}; add one with `python -m core rater add --name NAME`")
    return row


def why_not_rate(db: sqlite_utils.Database, study: Study, rater: dict[str, Any]) -> str | None:
    """None when this rater may rate the study now; else the reason, for the rater to read. A rater rates only
    the open studies they are assigned to; an admin, who can see unblinded results, only where the study allows
    admin ratings."""
    if not study.is_open:
        return f"study {study.name!r} is closed: it takes no more ratings"
    if rater["role"] == "admin" and not study.allow_admin_ratings:
        return (
            f"admins can see unblinded results, so they do not rate study {study.name!r}; "
            "allow it with `python -m core study set --name NAME --allow-admin-ratings`"
        )
    if study.id not in dbmod.rater_study_ids(db, rater["id"]):
        return f"{rater['name']} is not assigned to study {study.name!r}; ask the study's admin"
    return None


def _rater_for(db: sqlite_utils.Database, study: Study, name: str) -> int:
    """The id of a rater who may rate `study`; InputError saying why not otherwise."""
    row = _rater_row(db, name)
    reason = why_not_rate(db, study, row)
    if reason is not None:
        raise InputError(reason)
    return row["id"]


def studies_for_rater(db: sqlite_utils.Database, name: str) -> list[Study]:
    """The studies this rater may rate now, oldest first."""
    row = _rater_row(db, name)
    studies = [Study.from_row(study) for study in dbmod.list_studies(db)]
    return [study for study in studies if why_not_rate(db, study, row) is None]


def assign_studies(db: sqlite_utils.Database, rater: str, studies: Sequence[str], remove: bool = False) -> list[str]:
    """Give a rater these studies (or, with `remove`, take them away; ratings already made stay). Returns the
    rater's studies afterwards, by name."""
    row = _rater_row(db, rater)
    ids = [get_study(db, name).id for name in studies if name.strip()]
    if not ids:
        raise InputError("name one or more studies, comma-separated: --studies S1,S2")
    (dbmod.unassign_rater_studies if remove else dbmod.assign_rater_studies)(db, row["id"], ids)
    names = {study["id"]: study["name"] for study in dbmod.list_studies(db)}
    return [names[study_id] for study_id in dbmod.rater_study_ids(db, row["id"])]


# --- assignment --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaterProgress:
    """A rater's progress in a study: items rated, and items still open to them (the current one included)."""

    rated: int
    remaining: int


@dataclass(frozen=True)
class RaterItem:
    """Everything a rater may see of an item, and nothing that reveals an arm, format or explainer.

    `explanation_1` is the left one: choice `left` means explanation 1 (see CHOICE_LABELS).
    """

    item_id: int
    model: str
    neuron: str
    explanation_1: str
    explanation_2: str
    choices: tuple[str, ...]
    progress: RaterProgress
    previous_choice: str | None = None


def item_targets(regular_ids: Sequence[int], study: Study) -> dict[int, int]:
    """Wanted ratings per item: ratings_per_item, and at least 2 on a seeded overlap_share of the items so that
    agreement can be measured even when one rating per item is wanted."""
    order = sorted(regular_ids)
    random.Random(study.seed).shuffle(order)
    overlap = set(order[: math.ceil(study.overlap_share * len(order))])
    wanted = study.ratings_per_item
    return {item_id: max(wanted, 2) if item_id in overlap else wanted for item_id in order}


def _shuffle_key(seed: int, rater_id: int, item_id: int) -> bytes:
    # A per-rater order among equally filled items, so raters do not all walk the items in the same order.
    return hashlib.sha256(f"{seed}/{rater_id}/{item_id}".encode()).digest()


def _open_items(state: dict[str, list[dict]], study: Study) -> tuple[list[dict], list[dict], dict[int, int]]:
    """(regular items this rater may still get, unseen gold items, targets) from an assignment state."""
    seen = {row["item_id"] for row in state["assigned"]}
    regular = [item for item in state["items"] if not item["is_gold"]]
    targets = item_targets([item["id"] for item in regular], study)
    eligible = [item for item in regular if item["id"] not in seen and item["filled"] < targets[item["id"]]]
    gold = [item for item in state["items"] if item["is_gold"] and item["id"] not in seen]
    return eligible, gold, targets


def choose_item(state: dict[str, list[dict]], study: Study, rater_id: int, plan: StudyPlan | None = None) -> int | None:
    """The item to show next: the rater's unrated one if any; else a gold item while the rater is within the
    plan's qualification items or has seen fewer than gold_share gold items per regular one; else the least filled
    item they have not seen. An agreement item with one rating counts as unfilled and goes first, so that the
    overlap holds at every point of a study."""
    unrated = [row["item_id"] for row in state["assigned"] if not row["rated"]]
    if unrated:
        return unrated[0]
    eligible, gold, targets = _open_items(state, study)
    if not eligible:
        return None
    seen = {row["item_id"] for row in state["assigned"]}
    seen_gold = sum(item["is_gold"] and item["id"] in seen for item in state["items"])
    qualifying = plan is not None and len(seen) < plan.qualification_items
    if gold and (qualifying or seen_gold < study.gold_share * (len(seen) - seen_gold)):
        return min(gold, key=lambda item: _shuffle_key(study.seed, rater_id, item["id"]))["id"]

    def priority(item: dict) -> tuple[int, int, bytes]:
        pairing = targets[item["id"]] >= 2 and item["filled"] == 1
        return item["filled"] - pairing, 0 if pairing else 1, _shuffle_key(study.seed, rater_id, item["id"])

    return min(eligible, key=priority)["id"]


def first_arm(study: Study, left_arm: str, right_arm: str) -> str:
    """Arm A of an item's pair: the one listed first in the study's arms; a gold item's truth."""
    if left_arm.startswith("truth:") or right_arm.startswith("truth:"):
        return left_arm if left_arm.startswith("truth:") else right_arm
    order = {arm: index for index, arm in enumerate(study.arms)}
    return min((left_arm, right_arm), key=lambda arm: order.get(arm, len(order)))


def place_left(study: Study, rater_id: int, item_id: int, state: dict[str, Any]) -> str:
    """The arm this rater sees on the left of this item, chosen so that arm A is on the left for about half of
    each rater's items and half of each item's raters: the side that evens out the two counts so far, and a
    seeded coin when they are even. `state` is db.layout_state's."""
    arm_a = first_arm(study, state["left_arm"], state["right_arm"])
    arm_b = state["right_arm"] if arm_a == state["left_arm"] else state["left_arm"]
    rater_lean = sum(
        1 if row["shown"] == first_arm(study, row["left_arm"], row["right_arm"]) else -1 for row in state["rater"]
    )
    item_lean = sum(1 if shown == arm_a else -1 for shown in state["item"])
    lean = rater_lean + item_lean
    if lean == 0:
        coin = hashlib.sha256(f"{study.seed}/layout/{rater_id}/{item_id}".encode()).digest()[0] & 1
        return arm_a if coin else arm_b
    return arm_b if lean > 0 else arm_a


def _reserved_since() -> str:
    return (datetime.now(UTC) - timedelta(seconds=RESERVATION_SECONDS)).isoformat(timespec="milliseconds")


def _progress(state: dict[str, list[dict]], study: Study) -> RaterProgress:
    rated = sum(bool(row["rated"]) for row in state["assigned"])
    eligible, gold, _ = _open_items(state, study)
    seen = {row["item_id"] for row in state["assigned"]}
    seen_gold = sum(item["is_gold"] and item["id"] in seen for item in state["items"])
    # choose_item draws a gold item while seen_gold < gold_share × seen regular items and a regular item is left,
    # so a session of R regular items holds ceil(gold_share × (R − 1)) of them: count those still to come, so that
    # "item 3 of N" keeps its N.
    regular_total = len(seen) - seen_gold + len(eligible)
    gold_total = math.ceil(study.gold_share * (regular_total - 1)) if eligible else seen_gold
    upcoming_gold = min(len(gold), max(0, gold_total - seen_gold))
    return RaterProgress(rated=rated, remaining=len(eligible) + upcoming_gold + len(state["assigned"]) - rated)


def rater_progress(db: sqlite_utils.Database, study: str, rater: str) -> RaterProgress:
    record, rater_id = get_study(db, study), _rater_row(db, rater)["id"]
    return _progress(dbmod.assignment_state(db, record.id, rater_id, _reserved_since()), record)


def next_item(db: sqlite_utils.Database, study: str, rater: str) -> RaterItem | None:
    """The item this rater should rate now (the same one until it is rated), or None when they are done or the
    plan pauses or caps them (rater_standing says which)."""
    record = get_study(db, study)
    rater_id = _rater_for(db, record, rater)
    stored = get_plan(db, record.name)
    plan = stored.plan if stored else None
    if not _standing(db, record, rater_id, plan).may_rate:
        return None
    item_id = dbmod.assign_item(
        db,
        record.id,
        rater_id,
        _reserved_since(),
        lambda state: choose_item(state, record, rater_id, plan),
        lambda state: place_left(record, rater_id, int(state["item_id"]), state),
    )
    return None if item_id is None else item_for_rater(db, study, rater, item_id)


def _standing(db: sqlite_utils.Database, record: Study, rater_id: int, plan: StudyPlan | None) -> quality.Standing:
    rows = [row for row in dbmod.study_ratings(db, record.id) if row["rater_id"] == rater_id]
    return quality.standing(rows, plan)


def rater_standing(db: sqlite_utils.Database, study: str, rater: str) -> quality.Standing:
    """Whether the plan lets this rater go on: paused after failing the qualification or the gold checks, or
    capped, each with a message for the rater."""
    record = get_study(db, study)
    stored = get_plan(db, record.name)
    return _standing(db, record, _rater_row(db, rater)["id"], stored.plan if stored else None)


def item_for_rater(db: sqlite_utils.Database, study: str, rater: str, item_id: int) -> RaterItem:
    """The rater's view of an item that was assigned to them (to show it again or change their rating)."""
    record = get_study(db, study)
    rater_id = _rater_for(db, record, rater)
    item = dbmod.get_item(db, item_id)
    if item is None or item["study_id"] != record.id or not dbmod.is_assigned(db, item_id, rater_id):
        raise InputError(f"item {item_id} was not assigned to {rater} in study {study!r}")
    previous = dbmod.get_rating(db, item_id, rater_id)
    texts = {item["left_arm"]: item["left_text"], item["right_arm"]: item["right_text"]}
    shown_left, shown_right = dbmod.shown_layout(db, item_id, rater_id)
    return RaterItem(
        item_id=item_id,
        model=item["model"],
        neuron=f"{item['layer']}:{item['neuron']}",
        explanation_1=texts[shown_left],
        explanation_2=texts[shown_right],
        choices=record.choices,
        progress=rater_progress(db, study, rater),
        previous_choice=previous["choice"] if previous else None,
    )


# --- ratings -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmittedRating:
    rating_id: int
    replaced: bool


def parse_number(value: Any, name: str, cast: type) -> Any:
    """`value` as an int or float (`cast`); None when empty; InputError naming `name` when it is not one."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise InputError(f"{name} {value!r} is not a number")
    try:
        number = cast(float(value)) if cast is int and isinstance(value, str) else cast(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} {value!r} is not a number") from None
    if cast is int and number != float(value):
        raise InputError(f"{name} {value!r} is not a whole number")
    return number


def validate_rating(
    study: Study, choice: str, confidence: Any = None, comment: str | None = None, seconds: Any = None
) -> dict[str, Any]:
    """The rating's values, checked against the study's allowed choices: choice, confidence 1–5, comment, seconds."""
    normal = str(choice).strip().lower().replace("-", "_").replace(" ", "_")
    if normal not in study.choices:
        extra = "" if normal not in RATING_CHOICES else " in this study"
        raise InputError(f"choice {choice!r} is not allowed{extra}; use one of {', '.join(study.choices)}")
    confidence = parse_number(confidence, "confidence", int)
    if confidence is not None and not 1 <= confidence <= 5:
        raise InputError(f"confidence {confidence} is outside 1–5")
    seconds = parse_number(seconds, "seconds", float)
    if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
        raise InputError(f"seconds {seconds} must be a finite number ≥ 0")
    comment = (comment or "").strip() or None
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise InputError(f"the comment has {len(comment)} characters; keep it under {MAX_COMMENT_CHARS}")
    return {"choice": normal, "confidence": confidence, "comment": comment, "seconds": seconds}


def submit_rating(
    db: sqlite_utils.Database,
    study: str,
    rater: str,
    item_id: int,
    choice: str,
    confidence: Any = None,
    comment: str | None = None,
    seconds: Any = None,
) -> SubmittedRating:
    """Record (or replace, keeping an audit row) the rater's rating of an item assigned to them."""
    record = get_study(db, study)
    rater_id = _rater_for(db, record, rater)
    values = validate_rating(record, choice, confidence, comment, seconds)
    rating_id, replaced = dbmod.write_rating(db, record.id, int(item_id), rater_id, values, require_assignment=True)
    return SubmittedRating(rating_id, replaced)


def study_status(db: sqlite_utils.Database, study: str) -> dict[str, Any]:
    """Progress of a study: items filled toward their wanted counts, and per rater what they rated."""
    record = get_study(db, study)
    items = dbmod.list_items(db, record.id)
    regular = [item for item in items if not item["is_gold"]]
    targets = item_targets([item["id"] for item in regular], record)
    fill: dict[str, int] = {}
    for item in regular:
        fill[str(item["n_ratings"])] = fill.get(str(item["n_ratings"]), 0) + 1
    assigned = dbmod.study_assignment_counts(db, record.id)
    per_rater = {
        row["id"]: {
            "rater": row["name"],
            "assigned": assigned[row["id"]],
            "rated": 0,
            "gold_rated": 0,
            "gold_correct": 0,
        }
        for row in dbmod.list_raters(db)
        if row["id"] in assigned
    }
    for rating in dbmod.study_ratings(db, record.id):
        row = per_rater[rating["rater_id"]]
        row["rated"] += 1
        row["gold_rated"] += bool(rating["is_gold"])
        row["gold_correct"] += bool(rating["is_gold"] and rating["choice"] == rating["gold_choice"])
    return {
        "study": record.name,
        "n_items": len(regular),
        "n_gold_items": len(items) - len(regular),
        "ratings_per_item": record.ratings_per_item,
        "wanted_ratings": sum(targets.values()),
        "n_ratings": sum(item["n_ratings"] for item in regular),
        "n_gold_ratings": sum(item["n_ratings"] for item in items if item["is_gold"]),
        "complete_items": sum(item["n_ratings"] >= targets[item["id"]] for item in regular),
        "items_by_rating_count": dict(sorted(fill.items(), key=lambda pair: int(pair[0]))),
        "raters": sorted(per_rater.values(), key=lambda row: row["rater"]),
    }
