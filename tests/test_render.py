"""The one renderer of token text and explanations (core/render.py): hostile text comes out as literal text,
whitespace is visible, colours follow activations and every token's title carries its exact value."""

from __future__ import annotations

import math
import re
import unicodedata
from html.parser import HTMLParser

import numpy as np
import pytest

from core import render
from core.records import ActivationRecord

HOSTILE = (
    "<script>alert(1)</script>",
    "&amp;",
    "**bold**",
    "# heading",
    "[x](y)",
    "$x$",
    "\n",
    "\t",
    "\"double\" 'single'",
    "<img src=x onerror=alert(2)>",
    ":red[colour] :smile:",
    "`code` _under_ ~strike~ |pipe|",
    "\\(a\\) $$\\frac{1}{2}$$",
    "<!-- comment -->",
    "\r\n",
    " ",
    "  ",
)


class _Parsed(HTMLParser):
    """Tags, attributes and the text a browser would show."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attrs: list[dict[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs.append(dict(attrs))
        if tag == "br":
            self.text.append("\n")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        raise AssertionError(f"a comment got through: {data!r}")


def parse(markup: str) -> _Parsed:
    parser = _Parsed()
    parser.feed(markup)
    parser.close()
    return parser


def shown(token: str) -> str:
    """What a reader sees for a token: whitespace-only tokens as marks, newlines as ⏎ plus a line break."""
    if token.isspace():
        marks = {"\n": "⏎\n", "\t": "⇥", "\r": "␍", " ": "·"}
        return "".join(marks.get(ch, "·") for ch in token)
    return token.replace("\t", "⇥").replace("\r", "␍").replace("\n", "⏎\n")


def _no_markup_syntax(markup: str) -> None:
    """No character of the text that markdown, LaTeX or Streamlit directives read as syntax survives outside an
    entity (our own tags and their attributes aside)."""
    without_entities = re.sub(r"&#\d+;", "", re.sub(r"<[^<>]*>", "", markup))
    for ch in "*$[]`_~|\\:":
        assert ch not in without_entities, ch
    assert "#" not in without_entities
    assert "\n" not in markup and "\r" not in markup  # one raw HTML block: markdown never parses inside it


@pytest.mark.parametrize("token", HOSTILE)
def test_hostile_tokens_come_out_as_literal_text(token: str) -> None:
    markup = render.record_html(ActivationRecord(("a", token, "b"), (0.0, 1.0, 0.5)))
    parsed = parse(markup)
    assert set(parsed.tags) <= {"div", "span", "br"}
    assert "".join(parsed.text) == "a" + shown(token) + "b"
    for attrs in parsed.attrs:
        assert set(attrs) <= {"class", "style", "title"}
    assert "<script" not in markup and "<img" not in markup and "<!--" not in markup
    _no_markup_syntax(markup)


def test_hostile_explanation_is_escaped_and_one_block() -> None:
    text = "finds <script>alert(1)</script> &amp; **bold** # heading [x](y) $x$\n\"quotes\" 'and' :smile: `c`"
    markup = render.text_html(text)
    parsed = parse(markup)
    assert parsed.tags == ["div", "br"]
    assert "".join(parsed.text) == text
    _no_markup_syntax(markup)


def test_escape_text_escapes_each_character_once() -> None:
    assert render.escape_text("&amp;") == "&#38;amp;"
    assert "".join(parse(render.escape_text("&lt;&#42;")).text) == "&lt;&#42;"


def test_escape_markdown_is_one_literal_line() -> None:
    assert render.escape_markdown("bad *x*\n  [y](z) $1") == "bad \\*x\\* \\[y\\]\\(z\\) \\$1"
    assert render.escape_markdown(":red[x] <b>") == "\\:red\\[x\\] \\<b\\>"
    assert render.escape_markdown("a\u202eb") == "a⟨U\\+202E⟩b"  # named, never reversing the text after it


def test_escape_plot_label_escapes_the_tags_plotly_reads() -> None:
    assert render.escape_plot_label("<b>arm</b> & co") == "&lt;b&gt;arm&lt;/b&gt; &amp; co"
    assert render.escape_plot_label(3) == "3"


def test_visible_whitespace() -> None:
    assert render.visible_token(" ") == '<span class="nw-ws">·</span>'
    assert render.visible_token("\n") == '<span class="nw-ws">⏎</span><br>'
    assert render.visible_token("\t") == '<span class="nw-ws">⇥</span>'
    # A leading space of an ordinary token stays a real space (the block keeps it with white-space: pre-wrap).
    assert render.visible_token(" the") == " the"
    assert "".join(parse(render.visible_token("a\nb")).text) == "a⏎\nb"
    assert "".join(parse(render.visible_token("\x00")).text) == "␀"
    assert "pre-wrap" in render.STYLE


def test_colour_of_zero_max_and_negative() -> None:
    assert render.activation_color(0.0, 4.0) == "transparent"
    assert render.activation_color(4.0, 4.0) == "rgba(255, 145, 0, 1.000)"
    assert render.activation_color(9.0, 4.0) == "rgba(255, 145, 0, 1.000)"  # beyond the scale: clipped
    assert render.activation_color(2.0, 4.0) == "rgba(255, 145, 0, 0.500)"
    negative = render.activation_color(-2.0, 4.0)
    assert negative == "rgba(45, 125, 255, 0.500)"
    assert negative.split(",")[:3] != render.activation_color(2.0, 4.0).split(",")[:3]
    assert render.activation_color(1.0, 0.0) == "transparent"
    assert render.activation_color(math.nan, 4.0) == "transparent"


def test_colour_is_monotonic_in_activation() -> None:
    alphas = [float(render.activation_color(v, 10.0).rsplit(",", 1)[1].rstrip(")")) for v in (1, 3, 5, 8, 10)]
    assert alphas == sorted(alphas) and alphas[-1] == 1.0


def test_strong_backgrounds_get_dark_text() -> None:
    assert render.DARK_TEXT in render.token_span("x", 4.0, 4.0)
    assert render.DARK_TEXT not in render.token_span("x", 1.0, 4.0)


@pytest.mark.parametrize("value", [0.0, 1.5, -0.1700000017881393, 0.123456789, float(np.float32(2.71828)), 1e-7])
def test_title_carries_the_exact_value(value: float) -> None:
    parsed = parse(render.token_span("tok", value, 3.0))
    title = parsed.attrs[0]["title"]
    assert title == render.exact_value(value)
    # float32 values (as stored) read back exactly through float32; others exactly as doubles.
    if float(np.float32(value)) == value:
        assert np.float32(title) == np.float32(value)
    else:
        assert float(title) == value


def test_common_scale_across_records() -> None:
    weak = ActivationRecord(("a",), (1.0,))
    strong = ActivationRecord(("b",), (4.0,))
    markup = render.records_html([weak, strong], labels=["first", "second"])
    styles = [attrs.get("style") for attrs in parse(markup).attrs if attrs.get("class") == "nw-tok"]
    assert "0.250" in styles[0] and "1.000" in styles[1]
    assert render.default_scale([weak, strong]) == 4.0
    with pytest.raises(ValueError):
        render.records_html([weak], labels=[])


def test_comparison_shows_both_values_on_hover() -> None:
    record = ActivationRecord(("<b>", " x"), (2.0, 0.0))
    markup = render.comparison_html(record, [7.5, 0.25])
    parsed = parse(markup)
    titles = [attrs["title"] for attrs in parsed.attrs if attrs.get("class") == "nw-tok"]
    assert titles == ["real 2.0 · simulated 7.5", "real 0.0 · simulated 0.25"] * 2
    assert "<b>" not in markup
    with pytest.raises(ValueError):
        render.comparison_html(record, [1.0])


def test_styled_prepends_the_style_sheet_once() -> None:
    markup = render.styled(render.text_html("x"), render.text_html("y"))
    assert markup.startswith("<style>") and markup.count("<style>") == 1


# A WordPiece (BERT) excerpt as stored: every word and every punctuation mark carries a leading space.
WORDPIECE = (" you", " '", " ll", " call", " f", " (", " x", " )", " .", " co", " _", " file", "name", " ,", " ok")


def _text(markup: str) -> str:
    return "".join(parse(markup).text)


def test_lost_spacing_is_closed_up_for_reading_only() -> None:
    record = ActivationRecord(WORDPIECE, tuple(float(i) for i in range(len(WORDPIECE))))
    assert render.spacing_lost([record])
    markup = render.record_html(record)
    assert _text(markup) == " you'll call f (x). co_filename, ok"
    # Each token keeps its own span and its exact value, in order.
    titles = [attrs["title"] for attrs in parse(markup).attrs if attrs.get("class") == "nw-tok"]
    assert titles == [render.exact_value(float(i)) for i in range(len(WORDPIECE))]
    assert _text(render.record_html(record, tidy=False)) == "".join(WORDPIECE)
    assert _text(render.records_html([record])) == " you'll call f (x). co_filename, ok"
    # The comparison of real and simulated values reads the same way on both lines.
    assert _text(render.comparison_html(record, [0.0] * len(WORDPIECE))).count("you'll call f (x).") == 2


def test_real_spacing_is_kept() -> None:
    # Byte-level text: "," follows its word directly, so a spaced " ." is what the text really had.
    record = ActivationRecord(("Hello", ",", " world", " .", "NET", " (", " x", " )"), (0.0,) * 8)
    assert not render.spacing_lost([record])
    assert _text(render.record_html(record)) == "Hello, world .NET ( x )"
    assert not render.spacing_lost([ActivationRecord((" just", " words"), (0.0, 0.0))])
    assert render.attached([" '", " s"]) == [False, False]  # no word before the apostrophe: left alone
    assert render.attached([" it", " '", " x"]) == [False, False, False]  # not a contraction


def test_positive_only_colours_leave_negatives_plain_but_keep_their_value() -> None:
    record = ActivationRecord((" a", " b", " c"), (-2.0, 0.0, 2.0))
    spans = [a for a in parse(render.record_html(record, negatives=False)).attrs if a.get("class") == "nw-tok"]
    assert [span["style"] for span in spans] == [
        "unicode-bidi: isolate; background-color: transparent",
        "unicode-bidi: isolate; background-color: transparent",
        "unicode-bidi: isolate; background-color: rgba(255, 145, 0, 1.000); color: rgb(17, 17, 17)",
    ]
    assert [span["title"] for span in spans] == ["-2.0", "0.0", "2.0"]
    assert "45, 125, 255" in render.record_html(record)  # the default shows negatives in blue


# Characters that draw nothing or reorder the text around them: zero-width space, non-joiner and joiner, word joiner,
# BOM, bidi embeddings and overrides, isolates and marks, the Arabic letter mark, a soft hyphen, a C1 control (NEL),
# a tag character, the line separator, a Hangul filler and a lone surrogate.
INVISIBLE = (
    "\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066",
    "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\u061c", "\u00ad", "\x85", "\U000e0041", "\u2028", "\u3164",
    "\ud800",
)  # fmt: skip


def _unseen(markup: str) -> list[str]:
    """Characters of the markup that a browser would not draw, or that would steer the text around them."""
    steering = {"Cc", "Cf", "Cs", "Zl", "Zp"}
    unseen = [ch for ch in markup if unicodedata.category(ch) in steering or ch == "\u3164"]
    return [f"U+{ord(ch):04X}" for ch in unseen if ch != "\t"]  # a tab is a gap one can see


@pytest.mark.parametrize("invisible", INVISIBLE, ids=lambda ch: f"U+{ord(ch):04X}")
def test_invisible_characters_in_tokens_are_shown_by_code_point(invisible: str) -> None:
    mark = f"⟨U+{ord(invisible):04X}⟩"
    for token in (invisible, f"ab{invisible}c", f" {invisible}"):
        markup = render.record_html(ActivationRecord(("x", token, "y"), (0.0, 1.0, 0.5)))
        assert _unseen(markup) == [], token
        # A space of a token made only of whitespace shows as a dot, as always.
        spaces = "·" if invisible.isspace() else " "
        assert _text(markup) == "x" + token.replace(" ", spaces).replace(invisible, mark) + "y"
        _no_markup_syntax(markup)
    # A whitespace-only token that is also invisible (the line separator, NEL) is named, not shown as a dot.
    assert _text(render.visible_token(invisible * 2)) == mark * 2


def test_a_token_cannot_reverse_the_text_around_it() -> None:
    """An override inside a token is shown, not obeyed; and every token is a bidi isolate (inline, and in the
    style sheet), so even a character the marks missed could not reorder its neighbours."""
    tokens = ("left", "\u202eevil", "\u2067", "right")
    markup = render.records_html([ActivationRecord(tokens, (0.0, 1.0, 2.0, 0.5))])
    assert _text(markup) == "left⟨U+202E⟩evil⟨U+2067⟩right"
    spans = [attrs for attrs in parse(markup).attrs if attrs.get("class") == "nw-tok"]
    assert len(spans) == 4 and all("unicode-bidi: isolate" in (span["style"] or "") for span in spans)
    assert re.search(r"\.nw-tok \{[^}]*unicode-bidi: isolate", render.STYLE)
    comparison = render.comparison_html(ActivationRecord(tokens, (0.0,) * 4), [0.0] * 4)
    assert _unseen(comparison) == [] and _text(comparison).count("⟨U+202E⟩evil") == 2


def test_invisible_characters_in_explanations_and_labels_are_shown() -> None:
    text = "dates\u200b and \u202eyears\u202c, \u2066isolated\u2069 \ufeffwords\u2060\nnext line\ttab"
    for markup in (render.text_html(text), render.label_html(text)):
        assert _unseen(markup) == []
        assert _text(markup) == (
            "dates⟨U+200B⟩ and ⟨U+202E⟩years⟨U+202C⟩, ⟨U+2066⟩isolated⟨U+2069⟩ ⟨U+FEFF⟩words⟨U+2060⟩\nnext line\ttab"
        )
        _no_markup_syntax(markup)
    # Text without invisible characters is unchanged, emoji, accents and no-break spaces included.
    plain = "café 😀 a\u00a0b — ✓"
    assert _text(render.text_html(plain)) == plain
    assert render.mark_invisible("a\u202eb\tc") == "a⟨U+202E⟩b\tc"
