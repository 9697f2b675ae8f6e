"""The one renderer of token text and explanations as HTML, used by every page, and the home of display escaping.

Token text and explanations are untrusted: corpora hold `<script>`, HTML entities, markdown and `$…$` LaTeX. Every
string that reaches the page passes through one of the escapers here, each named for where its output goes:

- `escape_text`: HTML for st.html (excerpts, explanations, labels above them). It HTML-escapes the text and turns
  every character that markdown, LaTeX or the app's markdown directives (`:red[…]`, `:smile:`) could read as syntax
  into a numeric character reference. The output holds no newline either (line breaks are `<br>`), so even if it
  went through st.markdown(unsafe_allow_html=True) it would stay one raw HTML block that markdown never parses. The
  pages pass it to `st.html`, which renders HTML without markdown or LaTeX.
- `escape_markdown`: one line of markdown that shows literally, for messages, captions, headers and widget labels.
- `escape_plot_label`: names (arms, formats) in a figure's labels, where plotly reads a few HTML tags.
- `mark_invisible`: plain text (the terminal, one-line messages).

Visible whitespace: a token made only of whitespace shows each space as a faint "·"; a newline shows as "⏎"
followed by a real line break; a tab as "⇥"; other control characters as their Unicode control pictures. Leading
spaces of ordinary tokens stay real spaces (the container keeps them with `white-space: pre-wrap`), since marking
every word boundary would bury the text in dots.

Visible invisibles: characters that draw nothing or steer the text around them (zero-width spaces and joiners, the
BOM, bidirectional embeddings, overrides and isolates: Unicode's format and control categories, lone surrogates,
line and paragraph separators, and a few blank letters) are shown by their code point, as "⟨U+202E⟩", in tokens,
explanations, labels and messages alike. So a token can never be invisible, and never reverse the text around it;
as a second line of defence every token span is also a bidi isolate (`unicode-bidi: isolate`).

Lost spacing: WordPiece tokenizers (BERT) split off punctuation and keep no trace of the spaces around it, so the
stored tokens read "don ' t", "( x ) ." (docs/METHOD.md §1 keeps them as the tokenizer renders them). When the records
show that loss (`spacing_lost`), the renderer drops the leading space of a token where prose and code almost never
have one (closing punctuation, after an opening bracket, apostrophe contractions, underscores in names), so the
text reads "don't", "(x).". Only the shown text changes: every token keeps its own span, colour and exact value.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections.abc import Sequence

import numpy as np

from core.records import ActivationRecord

# Colours: warm for positive activations, cool for negative; the alpha carries the magnitude.
POSITIVE_RGB = (255, 145, 0)
NEGATIVE_RGB = (45, 125, 255)
# Above this background strength the theme's text colour (light in the dark theme) would be hard to read.
DARK_TEXT_FROM = 0.55
DARK_TEXT = "rgb(17, 17, 17)"
# Predictions of the all-at-once simulator are expected values on the 0..10 scale (docs/METHOD.md §3).
SIMULATION_SCALE = 10.0

NEWLINE_MARK = "⏎"
TAB_MARK = "⇥"
SPACE_MARK = "·"

# Characters that markdown, GitHub-flavoured markdown, LaTeX ($), the :colour[...] directives and emoji shortcodes
# treat as syntax. As numeric character references they can only ever be text.
_SYNTAX_CHARS = "\\`*_{}[]()#+-.!|~$:=^@%"
# Unicode categories of characters that draw nothing, or reorder or join their neighbours: controls, format
# characters (zero-width spaces and joiners, BOM, bidi marks, embeddings, overrides, isolates, tags), surrogates
# (a lone one is not even encodable), line and paragraph separators.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Letters and marks that are blank by design: the combining grapheme joiner and the Hangul fillers.
_BLANK_LETTERS = frozenset({0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0})
# Whitespace that shows as what it is (a line break, a tab's gap), so it is no invisible.
_SHOWN_CONTROLS = frozenset({ord("\t"), ord("\n"), ord("\r")})


def is_invisible(ch: str) -> bool:
    """Whether the character draws nothing or steers its neighbours (see the module docstring); tab, newline and
    carriage return do not count, since they show as space and line breaks."""
    code = ord(ch)
    if code in _SHOWN_CONTROLS:
        return False
    return code in _BLANK_LETTERS or unicodedata.category(ch) in _INVISIBLE_CATEGORIES


def code_point_mark(ch: str) -> str:
    """The visible stand-in of an invisible character: "⟨U+202E⟩"."""
    return f"⟨U+{ord(ch):04X}⟩"


def mark_invisible(text: str) -> str:
    """Plain `text` with every invisible character replaced by its code point mark, for plain-text places (the
    terminal); HTML goes through `escape_text` and markdown through `escape_markdown`, which do the same."""
    return "".join(code_point_mark(ch) if is_invisible(ch) else ch for ch in str(text))


# What a markdown renderer (with LaTeX, directives and raw HTML) may read as syntax; each is escaped with a backslash.
_MARKDOWN_SYNTAX = re.compile(r"([\\`*_{}\[\]()#+\-.!|~$<>:])")


def escape_markdown(text: str) -> str:
    """`text` as one line of markdown that shows exactly these characters (messages, captions, headers, widget
    labels): whitespace runs as one space, markdown characters escaped with a backslash, invisible characters named
    ("⟨U+202E⟩"), so a message can neither hide nor reverse text."""
    return _MARKDOWN_SYNTAX.sub(r"\\\1", mark_invisible(" ".join(str(text).split())))


def escape_plot_label(text: object) -> str:
    """A name chosen by a user (an arm, a format) for a figure's labels, which read a few HTML tags: HTML-escaped."""
    return html.escape(str(text), quote=False)


class _Escapes(dict[int, str]):
    """The translation table of `escape_text`: syntax characters as numeric references, line breaks as `<br>`,
    invisible characters as their code point mark (worked out on first sight, then kept)."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        shown = ch  # itself: translate would delete a character mapped to None
        if is_invisible(ch):
            mark = code_point_mark(ch).replace("+", "&#43;")
            shown = f'<span class="nw-cf">{mark}</span>'
        self[code] = shown
        return shown


_ESCAPES = _Escapes(
    {
        **{ord(ch): f"&#{ord(ch)};" for ch in _SYNTAX_CHARS},
        **{ord(ch): f"&#{ord(ch)};" for ch in "&<>\"'"},
        ord("\r"): "<br>",
        ord("\n"): "<br>",
    }
)

STYLE = """<style>
.nw-excerpt { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.86rem;
  line-height: 1.9; white-space: pre-wrap; word-break: break-word; margin: 0 0 0.6rem 0; }
.nw-tok { border-radius: 3px; padding: 1px 0; unicode-bidi: isolate; }
.nw-ws { opacity: 0.45; }
.nw-cf { opacity: 0.6; font-size: 0.8em; unicode-bidi: isolate; }
.nw-label { font-size: 0.75rem; opacity: 0.7; margin: 0.2rem 0 0.1rem 0; unicode-bidi: isolate; }
.nw-text { white-space: pre-wrap; word-break: break-word; padding: 0.6rem 0.8rem; border-radius: 6px;
  border: 1px solid rgba(128, 128, 128, 0.35); margin-bottom: 0.5rem; unicode-bidi: isolate; }
.nw-row { display: block; }
</style>"""


def escape_text(text: str) -> str:
    """`text` as HTML that shows exactly these characters: escaped, markdown/LaTeX-neutral, newlines as `<br>`,
    invisible characters as their code point ("⟨U+200B⟩")."""
    # One pass over the characters, so that no escape is escaped again. \r\n counts as one line break.
    return str(text).replace("\r\n", "\n").translate(_ESCAPES)


def _control_picture(ch: str) -> str:
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)
    return "␡" if code == 0x7F else ch


def visible_token(token: str) -> str:
    """The HTML of one token's text with whitespace made visible (see the module docstring)."""
    whitespace_only = token != "" and token.isspace()
    parts = []
    for ch in token:
        if ch == "\n":
            parts.append(f'<span class="nw-ws">{NEWLINE_MARK}</span><br>')
        elif ch == "\r":
            parts.append(f'<span class="nw-ws">{_control_picture(ch)}</span>')
        elif ch == "\t":
            parts.append(f'<span class="nw-ws">{TAB_MARK}</span>')
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            parts.append(f'<span class="nw-ws">{_control_picture(ch)}</span>')
        elif is_invisible(ch):  # before the whitespace marks: U+2028 or U+0085 are "space" yet must be named
            parts.append(escape_text(ch))
        elif whitespace_only:
            parts.append(f'<span class="nw-ws">{SPACE_MARK}</span>')
        else:
            parts.append(escape_text(ch))
    return "".join(parts)


# Tokens (without their leading space) that attach to the token before them when spacing was lost.
_CLOSING = frozenset({".", ",", ";", ":", "!", "?", ")", "]", "}", "%"})
_OPENING = frozenset({"(", "[", "{"})
# Contraction suffixes that WordPiece splits off as " don", " '", " t".
_CONTRACTIONS = frozenset({"s", "t", "ll", "re", "ve", "d", "m"})


def _is_punctuation(token: str) -> bool:
    text = token.strip()
    return bool(text) and not any(ch.isalnum() for ch in text)


def spacing_lost(records: Sequence[ActivationRecord]) -> bool:
    """Whether these records come from a tokenizer that drops the spaces around punctuation (WordPiece): they
    hold punctuation tokens and every one of them starts with a space. Byte-level and SentencePiece text always
    has punctuation right after a word somewhere ("word" then ",")."""
    punctuation = [token for record in records for token in record.tokens if _is_punctuation(token)]
    return bool(punctuation) and all(token.startswith(" ") for token in punctuation)


def attached(tokens: Sequence[str]) -> list[bool]:
    """For tokens whose spacing was lost: whether to drop each one's leading space in display, because it closes
    ("." or ")"), follows an opening bracket, belongs to a contraction ("don", "'", "t") or joins a name with
    underscores ("co", "_", "filename")."""
    cores = [token[1:] if token.startswith(" ") else None for token in tokens]
    joined = [False] * len(tokens)
    for i in range(1, len(tokens)):
        core = cores[i]
        if not core or core.isspace():
            continue
        previous = tokens[i - 1].strip()
        following = cores[i + 1] if i + 1 < len(tokens) else None
        if core in _CLOSING or core == "_" or previous in _OPENING or previous == "_":
            joined[i] = True
        elif core == "'" and previous.isalpha() and following in _CONTRACTIONS:
            joined[i] = joined[i + 1] = True
    return joined


def exact_value(value: float) -> str:
    """The activation as stored: the shortest text that reads back to the same float32 (activations are kept as
    float32), or the full float repr for a value that float32 cannot hold exactly."""
    value = float(value)
    if not math.isfinite(value):
        return str(value)
    single = np.float32(value)
    if float(single) == value:
        return str(single)
    return repr(value)


def activation_strength(value: float, scale: float) -> float:
    """|value| / scale clipped to [0, 1]; 0 for a non-finite value or a scale ≤ 0."""
    if not math.isfinite(value) or not math.isfinite(scale) or scale <= 0:
        return 0.0
    return min(1.0, abs(value) / scale)


def activation_color(value: float, scale: float) -> str:
    """The background of a token: transparent at 0, full warm colour at `scale`, cool colour for negatives."""
    alpha = round(activation_strength(value, scale), 3)
    if alpha == 0:
        return "transparent"
    red, green, blue = POSITIVE_RGB if value > 0 else NEGATIVE_RGB
    return f"rgba({red}, {green}, {blue}, {alpha:.3f})"


def default_scale(records: Sequence[ActivationRecord]) -> float:
    """The largest |activation| over the records: a common scale, so colours compare across excerpts."""
    values = [abs(a) for record in records for a in record.activations if math.isfinite(a)]
    return max(values, default=0.0)


def token_span(
    token: str, value: float, scale: float, title: str | None = None, attach: bool = False, negatives: bool = True
) -> str:
    """One token coloured by its activation; the title (hover text) defaults to the exact value. `attach` drops
    the token's leading space from the shown text (lost spacing); `negatives=False` leaves negatives uncoloured."""
    shade = value if negatives or not value < 0 else 0.0
    # Isolated inline too, not only by the style sheet: no token may reorder the text around it.
    style = f"unicode-bidi: isolate; background-color: {activation_color(shade, scale)}"
    if activation_strength(shade, scale) >= DARK_TEXT_FROM:
        style += f"; color: {DARK_TEXT}"
    hover = html.escape(exact_value(value) if title is None else title, quote=True)
    text = token[1:] if attach and token.startswith(" ") else token
    return f'<span class="nw-tok" style="{style}" title="{hover}">{visible_token(text)}</span>'


def tokens_html(
    tokens: Sequence[str],
    values: Sequence[float],
    scale: float,
    titles: Sequence[str] | None = None,
    tidy: bool = False,
    negatives: bool = True,
) -> str:
    """One excerpt: every token coloured by its value on `scale`, in a block that keeps whitespace. `tidy` closes
    up the spaces a WordPiece tokenizer lost (see `attached`); `negatives=False` colours positive values only."""
    if len(tokens) != len(values) or (titles is not None and len(titles) != len(tokens)):
        raise ValueError(f"{len(tokens)} tokens need as many values and titles")
    joined = attached(tokens) if tidy else [False] * len(tokens)
    spans = (
        token_span(token, value, scale, None if titles is None else titles[i], joined[i], negatives)
        for i, (token, value) in enumerate(zip(tokens, values, strict=True))
    )
    return f'<div class="nw-excerpt">{"".join(spans)}</div>'


def record_html(
    record: ActivationRecord, scale: float | None = None, tidy: bool | None = None, negatives: bool = True
) -> str:
    """One activation record; `scale` defaults to the record's own largest |activation|, `tidy` to whether the
    record shows lost spacing."""
    scale = default_scale([record]) if scale is None else scale
    tidy = spacing_lost([record]) if tidy is None else tidy
    return tokens_html(record.tokens, record.activations, scale, tidy=tidy, negatives=negatives)


def label_html(text: str) -> str:
    """A small caption line above an excerpt."""
    return f'<div class="nw-label">{escape_text(text)}</div>'


def records_html(
    records: Sequence[ActivationRecord],
    scale: float | None = None,
    labels: Sequence[str] | None = None,
    tidy: bool | None = None,
    negatives: bool = True,
) -> str:
    """Several excerpts on one common scale (default: their largest |activation|), each under an optional label;
    `tidy` defaults to whether these records together show lost spacing."""
    if labels is not None and len(labels) != len(records):
        raise ValueError(f"{len(records)} records need as many labels")
    scale = default_scale(records) if scale is None else scale
    tidy = spacing_lost(records) if tidy is None else tidy
    parts = []
    for i, record in enumerate(records):
        if labels is not None:
            parts.append(label_html(labels[i]))
        parts.append(record_html(record, scale, tidy, negatives))
    return f'<div class="nw-records">{"".join(parts)}</div>'


def comparison_html(
    record: ActivationRecord,
    predictions: Sequence[float],
    real_scale: float | None = None,
    predicted_scale: float = SIMULATION_SCALE,
    tidy: bool | None = None,
) -> str:
    """A record's real activations and a simulator's predictions, token by token: two aligned lines, each token's
    hover text giving both values; `tidy` defaults to whether the record shows lost spacing."""
    if len(predictions) != len(record.tokens):
        raise ValueError(f"{len(predictions)} predictions for {len(record.tokens)} tokens")
    real_scale = default_scale([record]) if real_scale is None else real_scale
    tidy = spacing_lost([record]) if tidy is None else tidy
    titles = [
        f"real {exact_value(real)} · simulated {exact_value(predicted)}"
        for real, predicted in zip(record.activations, predictions, strict=True)
    ]
    return (
        '<div class="nw-row">'
        + label_html("real")
        + tokens_html(record.tokens, record.activations, real_scale, titles, tidy)
        + label_html("simulated (0–10)")
        + tokens_html(record.tokens, [float(p) for p in predictions], predicted_scale, titles, tidy)
        + "</div>"
    )


def text_html(text: str) -> str:
    """An explanation (or any untrusted prose) as a boxed block that shows the literal text."""
    return f'<div class="nw-text">{escape_text(text)}</div>'


def styled(*parts: str) -> str:
    """The page fragment to hand to st.html: our style sheet followed by the given renderer outputs."""
    return STYLE + "".join(parts)


def excerpt_lines(record: ActivationRecord, width: int = 150, indent: str = "    ") -> list[str]:
    """An excerpt for a terminal: its peak token marked ⟦so⟧, line breaks as ⏎, invisible characters by their code
    point, wrapped at `width` characters (at least 20) instead of cut."""
    import textwrap

    activations = record.activations
    peak = max(range(len(activations)), key=lambda i: activations[i]) if len(activations) else -1
    shown = "".join(f"⟦{token}⟧" if i == peak else token for i, token in enumerate(record.tokens))
    shown = mark_invisible(shown.replace("\n", "⏎"))
    wrapped = textwrap.wrap(
        shown, width=max(20, width), initial_indent=indent, subsequent_indent=indent, drop_whitespace=False
    )
    return wrapped or [indent]
