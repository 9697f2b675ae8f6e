"""What keeps a pairwise study blind: study names that cannot be confused, pairs worth showing, and the text
tells that would let a rater guess an arm without reading the neuron (docs/METHOD.md, human evaluation).

Pure functions: no database, no user interface. core.human_eval applies them when a study is created, and the Results
page shows the same report for a study that exists.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from core.errors import InputError

# A mean length that differs by more than this share between two arms is a tell.
LENGTH_TELL = 0.20
# A word is a tell when it appears in at least this many explanations of one arm (and this share of them) and at
# least WORD_RATIO times as often there as in the other arm (counts smoothed by one).
WORD_MIN_COUNT = 3
WORD_MIN_SHARE = 0.2
WORD_RATIO = 3.0
MAX_WORD_TELLS = 5
MAX_NAME_CHARS = 100

_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def normalise_name(name: str) -> str:
    """A study name as stored: NFKC, without invisible or control characters, trimmed, inner spaces collapsed."""
    text = unicodedata.normalize("NFKC", str(name))
    text = "".join(" " if ch.isspace() else ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc", "Co"))
    return " ".join(text.split())


def name_key(name: str) -> str:
    """What two names must not share: the normalised name without case."""
    return normalise_name(name).casefold()


def check_new_name(name: str, existing: Sequence[str]) -> str:
    """The normalised name of a new study; InputError if it is empty, too long, or differs from an existing name
    only by case, width, spacing or invisible characters."""
    normal = normalise_name(name)
    if not normal:
        raise InputError("a study needs a name of visible characters: pass --name")
    if len(normal) > MAX_NAME_CHARS:
        raise InputError(f"a study name has at most {MAX_NAME_CHARS} characters, not {len(normal)}")
    clash = next((other for other in existing if name_key(other) == name_key(normal)), None)
    if clash is not None:
        same = "already exists" if clash == normal else f"is too close to the existing study {clash!r}"
        raise InputError(f"a study named {normal!r} {same}; choose another --name")
    return normal


def same_text(left: str, right: str) -> bool:
    """Whether two explanations read the same to a rater (equal up to spacing and case), so a pair of them
    measures nothing."""
    return " ".join(left.split()).casefold() == " ".join(right.split()).casefold()


@dataclass(frozen=True)
class ArmTexts:
    """The explanations one pair of arms puts side by side: texts_a[i] and texts_b[i] are one item's two sides."""

    arm_a: str
    arm_b: str
    texts_a: tuple[str, ...]
    texts_b: tuple[str, ...]


@dataclass(frozen=True)
class TextTell:
    """One systematic difference between two arms' explanations that a rater could use to tell them apart."""

    arm_a: str
    arm_b: str
    kind: str  # "length" or "word"
    message: str


def _words(text: str) -> set[str]:
    return {word.casefold() for word in _WORD.findall(text)}


def _mean_words(texts: Sequence[str]) -> float:
    return sum(len(_WORD.findall(text)) for text in texts) / len(texts) if texts else 0.0


def text_tells(pair: ArmTexts) -> list[TextTell]:
    """The tells between two arms: a mean length that differs by more than LENGTH_TELL, and words far more common
    in one arm (at most MAX_WORD_TELLS, strongest first)."""
    tells: list[TextTell] = []
    n = len(pair.texts_a)
    if n == 0:
        return tells
    mean_a, mean_b = _mean_words(pair.texts_a), _mean_words(pair.texts_b)
    shorter, longer = sorted((mean_a, mean_b))
    if longer > 0 and (longer - shorter) / max(shorter, 1e-9) > LENGTH_TELL:
        long_arm, short_arm = (pair.arm_a, pair.arm_b) if mean_a > mean_b else (pair.arm_b, pair.arm_a)
        share = (longer - shorter) / max(shorter, 1e-9)
        tells.append(
            TextTell(
                pair.arm_a,
                pair.arm_b,
                "length",
                f"{long_arm} explanations are {share:.0%} longer than {short_arm} ones "
                f"({longer:.1f} vs {shorter:.1f} words on average): raters may tell the arms apart by length",
            )
        )
    counts_a: dict[str, int] = {}
    counts_b: dict[str, int] = {}
    for texts, counts in ((pair.texts_a, counts_a), (pair.texts_b, counts_b)):
        for text in texts:
            for word in _words(text):
                counts[word] = counts.get(word, 0) + 1
    found = []
    for word in set(counts_a) | set(counts_b):
        a, b = counts_a.get(word, 0), counts_b.get(word, 0)
        high, low = max(a, b), min(a, b)
        if high >= max(WORD_MIN_COUNT, WORD_MIN_SHARE * n) and (high + 1) / (low + 1) >= WORD_RATIO:
            found.append((high - low, word, a, b))
    for _, word, a, b in sorted(found, key=lambda row: (-row[0], row[1]))[:MAX_WORD_TELLS]:
        arm, other = (pair.arm_a, pair.arm_b) if a > b else (pair.arm_b, pair.arm_a)
        tells.append(
            TextTell(
                pair.arm_a,
                pair.arm_b,
                "word",
                f"the word {word!r} appears in {max(a, b)} of {n} {arm} explanations but {min(a, b)} of {n} "
                f"{other} ones: raters may tell the arms apart by it",
            )
        )
    return tells


def pairs_from_items(items: Sequence[dict]) -> list[ArmTexts]:
    """The arm pairs of a study's regular items (gold items left out), each item's texts put on its arms' sides.
    Items carry left_arm, right_arm, left_text, right_text and is_gold, as stored."""
    grouped: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for item in items:
        if item.get("is_gold"):
            continue
        sides = sorted([(item["left_arm"], item["left_text"]), (item["right_arm"], item["right_text"])])
        texts = grouped.setdefault((sides[0][0], sides[1][0]), ([], []))
        texts[0].append(sides[0][1])
        texts[1].append(sides[1][1])
    return [ArmTexts(a, b, tuple(ta), tuple(tb)) for (a, b), (ta, tb) in sorted(grouped.items())]


def study_tells(items: Sequence[dict]) -> list[TextTell]:
    """Every text tell of a study's items, pair by pair."""
    return [tell for pair in pairs_from_items(items) for tell in text_tells(pair)]
