"""Properties of blinding on its pure functions, as mutation testing (`make mutation MODULE=blinding`,
tests/README.md) asked for: study names at their length limit and what each refusal says, and every threshold of
the text tells (how many uses make a word a tell, how much more often, how many are reported and in which order)."""

from __future__ import annotations

import pytest

from core import blinding
from core.errors import InputError

A, B, C = "summary", "original", "highlight"

# --- names ---------------------------------------------------------------------------------------------------------


def test_a_study_name_may_have_100_characters_and_the_errors_say_why() -> None:
    assert blinding.check_new_name("x" * 100, []) == "x" * 100
    with pytest.raises(InputError, match=r"^a study name has at most 100 characters, not 101$"):
        blinding.check_new_name("x" * 101, [])
    with pytest.raises(InputError, match=r"^a study named 'pilot' already exists; choose another --name$"):
        blinding.check_new_name("pilot", ["other", "pilot"])
    with pytest.raises(InputError, match=r"^a study named 'Pilot' is too close to the existing study 'pilot'"):
        blinding.check_new_name("Pilot", ["pilot"])
    with pytest.raises(InputError, match=r"^a study needs a name of visible characters: pass --name$"):
        blinding.check_new_name("\u200b", [])
    # Control, format and private-use characters go; other spacing becomes one space.
    assert blinding.normalise_name("a\x07b\u00a0\u2003c\ue000d") == "ab cd"
    assert blinding.name_key("ＡＢ c") == "ab c"


# --- identical pairs and text tells ---------------------------------------------------------------------------------


def test_same_text_ignores_spacing_and_case_only() -> None:
    assert blinding.same_text("  Token\tIN lists ", "token in\nlists")
    assert not blinding.same_text("token in lists", "token in list")
    assert not blinding.same_text("tokenin lists", "token in lists")


def pair(texts_a: list[str], texts_b: list[str]) -> blinding.ArmTexts:
    return blinding.ArmTexts("original", "summary", tuple(texts_a), tuple(texts_b))


def word_tells(texts_a: list[str], texts_b: list[str]) -> list[str]:
    return [tell.message for tell in blinding.text_tells(pair(texts_a, texts_b)) if tell.kind == "word"]


def test_a_word_is_a_tell_from_three_uses_and_three_times_the_other_arms() -> None:
    filler = [f"plain {i}" for i in range(10)]
    # 3 of 10 with the word against 0: (3 + 1)/(0 + 1) ≥ 3, and 3 ≥ max(3, 0.2 × 10).
    three = word_tells(["marker"] * 3 + filler[3:], filler)
    assert three == ["the word 'marker' appears in 3 of 10 original explanations but 0 of 10 summary ones: raters "
                     "may tell the arms apart by it"]  # fmt: skip
    assert word_tells(["marker"] * 2 + filler[2:], filler) == []  # 2 uses: too rare
    # 5 uses against 1: (5 + 1)/(1 + 1) = 3, a tell; 4 against 1: 5/2, not one.
    assert len(word_tells(["marker"] * 5 + filler[5:], ["marker", *filler[1:]])) == 1
    assert word_tells(["marker"] * 4 + filler[4:], ["marker", *filler[1:]]) == []
    # With 20 explanations a word needs 0.2 × 20 = 4 uses; the arm it belongs to may be either.
    many = [f"plain {i}" for i in range(20)]
    assert word_tells(many, ["marker"] * 3 + many[3:]) == []
    (message,) = word_tells(many, ["marker"] * 4 + many[4:])
    assert message.startswith("the word 'marker' appears in 4 of 20 summary explanations but 0 of 20 original ones")
    tell = next(tell for tell in blinding.text_tells(pair(many, ["marker"] * 4 + many[4:])) if tell.kind == "word")
    assert (tell.arm_a, tell.arm_b) == ("original", "summary")


def test_at_most_five_word_tells_strongest_first_then_by_word() -> None:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]
    texts_a = [" ".join(words[: 7 - i % 4]) for i in range(12)]  # alpha–gamma in all 12, the rest in fewer
    texts_b = [f"{i}" for i in range(12)]  # no words
    messages = word_tells(texts_a, texts_b)
    assert len(messages) == 5
    found = [message.split("'")[1] for message in messages]
    assert found == ["alpha", "beta", "delta", "gamma", "epsilon"]  # 12, 12, 12, 12 and 9 uses against 0
    counts = [int(message.split(" appears in ")[1].split(" of ")[0]) for message in messages]
    assert counts == sorted(counts, reverse=True)
    # Strength is the difference between the arms: 9 against 0 comes before 10 against 2.
    strong = ["weak strong"] * 2 + ["strong"] * 7 + ["weak"] * 8 + ["1", "2", "3"]
    weak = ["weak"] * 2 + [str(i) for i in range(18)]
    assert [message.split("'")[1] for message in word_tells(strong, weak)] == ["strong", "weak"]


def test_word_tells_of_equal_strength_are_ordered_by_word_whichever_arm_holds_them() -> None:
    # "alpha" only in the first arm, "zeta" only in the second, 5 uses each: equally strong, so alphabetical.
    texts_a = ["alpha"] * 5 + [str(i) for i in range(5)]
    texts_b = ["zeta"] * 5 + [str(i) for i in range(5)]
    assert [message.split("'")[1] for message in word_tells(texts_a, texts_b)] == ["alpha", "zeta"]
    assert [message.split("'")[1] for message in word_tells(texts_b, texts_a)] == ["alpha", "zeta"]


def test_a_length_tell_between_arms_of_less_than_one_word_on_average() -> None:
    # 10 of 20 explanations are one word against 13 of 20: 0.50 vs 0.65 words, 30% longer, above LENGTH_TELL (20%).
    shorter = ["word"] * 10 + [""] * 10
    longer = ["word"] * 13 + [""] * 7
    (tell,) = blinding.text_tells(pair(shorter, longer))
    assert tell.kind == "length"
    assert tell.message.startswith("summary explanations are 30% longer than original ones (0.7 vs 0.5 words")


def test_a_length_tell_names_the_longer_arm_with_both_means() -> None:
    tells = blinding.text_tells(pair(["a b c"] * 4, ["a b c a b c"] * 4))
    assert [tell.kind for tell in tells] == ["length"]
    assert (tells[0].arm_a, tells[0].arm_b) == ("original", "summary")
    assert tells[0].message == (
        "summary explanations are 100% longer than original ones (6.0 vs 3.0 words on average): raters may tell "
        "the arms apart by length"
    )
    assert blinding.text_tells(pair([], [])) == []
    assert [tell.kind for tell in blinding.text_tells(pair(["a b c"], ["a b c a b c"]))] == ["length"]  # one item
    assert blinding.text_tells(pair(["", ""], ["", ""])) == []  # no words on either side: no tell
    assert [t.kind for t in blinding.text_tells(pair(["", ""], ["word", "word"]))] == ["length"]


def test_pairs_from_items_group_regular_items_by_their_pair_of_arms_sorted() -> None:
    items = [
        {"left_arm": B, "right_arm": A, "left_text": "o1", "right_text": "s1", "is_gold": 0},
        {"left_arm": A, "right_arm": B, "left_text": "s2", "right_text": "o2", "is_gold": 0},
        {"left_arm": "truth:summary", "right_arm": "decoy:summary", "left_text": "t", "right_text": "d", "is_gold": 1},
        {"left_arm": C, "right_arm": A, "left_text": "h3", "right_text": "s3"},
    ]
    assert blinding.pairs_from_items(items) == [
        blinding.ArmTexts(C, A, ("h3",), ("s3",)),
        blinding.ArmTexts(B, A, ("o1", "o2"), ("s1", "s2")),
    ]
    long_items = [{"left_arm": A, "right_arm": B, "left_text": "a b c a b c", "right_text": "a b c"}] * 3
    assert [tell.kind for tell in blinding.study_tells(long_items)] == ["length"]
