"""Text normalization for matching: every step is linear in the input length.

The normalized form is only ever used for matching; the user's message is never rewritten.
"""

from __future__ import annotations

import collections
import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import regex

_TAGS = re.compile("[\U000E0000-\U000E007F]")
# Characters that render as nothing: every format control (zero-width spaces and joiners, BOM,
# soft hyphen, bidi embeddings, overrides, isolates and marks) and the Hangul fillers.
_INVISIBLE = regex.compile(r"[\p{Cf}\u115F\u1160\u3164\uFFA0]")
# The 72 code points whose NFKC form is longer than three characters (U+FDFA becomes 18):
# squared CJK words, Arabic ligatures, parenthesized numbers. None can be part of a phrase the
# rules look for, and dropping them first keeps NFKC from multiplying an input's length.
_LONG_EXPANSIONS = regex.compile(
    "[\u2057\u2152\u2167\u2177\u247d-\u2487\u2a0c\u321d\u321e\u3300-\u33d8\ufdf2-\ufdf8\ufdfa-\ufdfc]"
)
# Combining marks stack on a letter without changing what a reader takes it for (accents,
# variation selectors, the grapheme joiner, floods of diacritics).
_MARKS = regex.compile(r"\p{Mn}+")

# Letters from other scripts that render like Latin ones; NFKC leaves them alone. Applied
# after casefolding, so only lower-case forms are needed.
_HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "һ": "h", "ԛ": "q", "ԝ": "w", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x",
    # Latin look-alikes outside ASCII
    "ı": "i", "ȷ": "j", "ℓ": "l",
}
_FOLD = str.maketrans(_HOMOGLYPHS)

# Spaced-out letters ("i g n o r e", "i.g.n.o.r.e", "i  g  n"): three or more single letters, one
# separator after each. The gap that comes up most in a run is the one inside words; any other
# (wider, or another sign: "i g n o r e   a l l", "i-g-n / a-l-l") is the gap between two words.
_SPACED = re.compile(r"(?<![^\W\d_])[^\W\d_](?:(?:[ \t._\-*]{1,8}|[ \t]*[/|][ \t]*)[^\W\d_](?![^\W\d_])){2,}")
_LETTER = re.compile(r"([^\W\d_])")
_SPACE_RUN = re.compile(r"\s+")
# What hides or overwrites text on a terminal or a page, and a reader never sees: escape
# sequences (CSI, OSC up to its terminator, two-character ones), C1 controls, backspace, delete,
# a carriage return that does not end a line, and every other C0 control but tab and line breaks.
_CONTROLS = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]?|\x1b\][^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?|\x1b[ -~]?"
    r"|[\x00-\x08\x0e-\x1f\x7f-\x9f]|\r(?!\n)"
)


@dataclass(frozen=True)
class Normalized:
    text: str
    hidden_chars: int
    invisible_chars: int
    control_chars: int = 0  # escape sequences and control characters, each counted once


def _collapse(match: re.Match[str]) -> str:
    parts = _LETTER.split(match.group(0))  # "", letter, gap, letter, ..., letter, ""
    letters, gaps = parts[1::2], parts[2:-1:2]
    inside, count = collections.Counter(gaps).most_common(1)[0]
    if count < 2:  # no gap repeats ("x. y-z"): not a spaced-out word
        return match.group(0)
    return letters[0] + "".join(("" if gap == inside else " ") + letter for gap, letter in zip(gaps, letters[1:]))


def normalize(raw: str) -> Normalized:
    """Control characters and escape sequences turned to spaces, NFKC, invisible characters and
    combining marks removed, homoglyphs folded, spaced-out letters joined, whitespace collapsed;
    a ``FieldText`` field by field.

    Unicode tag characters (U+E0000..U+E007F) are counted and removed: they carry hidden
    ASCII that a model reads and a person does not see.
    """
    if isinstance(raw, FieldText):
        return raw.normalized()
    # A space, not nothing: "ignore<BS><BS>all" must not read as one word to the rules.
    raw, controls = _CONTROLS.subn(" ", raw)
    if raw.isascii():
        # Every step before the letter spacing is a no-op on ASCII (NFKC, casefolding and the
        # character classes above all concern other code points), and the step-by-step path
        # costs ~20 us per call: a request holds hundreds of short fields (a tool schema's).
        text = _SPACE_RUN.sub(" ", _SPACED.sub(_collapse, raw.lower())).strip()
        return Normalized(text=text, hidden_chars=0, invisible_chars=0, control_chars=controls)
    raw, hidden = _TAGS.subn("", raw)
    text, invisible = _INVISIBLE.subn("", raw)
    text = unicodedata.normalize("NFKC", _LONG_EXPANSIONS.sub(" ", text)).casefold()
    text = _MARKS.sub("", text).translate(_FOLD)
    text = _SPACE_RUN.sub(" ", _SPACED.sub(_collapse, text)).strip()
    return Normalized(text=text, hidden_chars=hidden, invisible_chars=invisible, control_chars=controls)


# Between two fields' normalized texts. Normalized text is case-folded, so no input yields an
# upper-case "X"; and six words are more than any default rule, phrase or topic term lets stand
# between two of its words (at most four), so no match spans two fields. Short, because every
# cheap rule scans it once per field.
_FIELD_BREAK = "\n" + " ".join("X" * 6) + "\n"


class FieldText(str):
    """The texts of several fields of a request joined into the one text a rail checks. Rails see
    a plain string; ``normalize`` keeps the fields apart, so a cheap rail never matches a phrase
    that starts in one field and ends in the next, and ``fields`` says where each text came from
    (``("tools[0].function.description", text)``). ``paths()`` gives the texts' paths, in order:
    only a blocked request asks, so a passing one never builds them. ``third_party`` holds the
    indices of the texts that came from neither the client nor the model (tool results): rails
    that judge data more strictly than the client's own words read them apart."""

    def __new__(
        cls, texts: Sequence[str], paths: Callable[[], Sequence[str]], third_party: frozenset[int] = frozenset()
    ) -> "FieldText":
        self = super().__new__(cls, "\n\n".join(text for text in texts if text))
        self._texts = texts
        self._paths = paths
        self.third_party = third_party
        self._normalized: Optional[Normalized] = None
        return self

    def __reduce__(self) -> tuple:
        # A copy (deepcopy of a context that holds it) must keep the fields, not re-split the text.
        return FieldText, (self._texts, self._paths, self.third_party)

    @functools.cached_property
    def fields(self) -> tuple[tuple[str, str], ...]:
        return tuple((path, text) for path, text in zip(self._paths(), self._texts) if text)

    def alone(self) -> Iterator["FieldText"]:
        """Each field with text as a ``FieldText`` of its own (its path and party kept)."""
        for i, (path, text) in enumerate(zip(self._paths(), self._texts)):
            if text:
                yield FieldText([text], functools.partial(list, [path]), frozenset({0}) if i in self.third_party else frozenset())

    def parties(self) -> tuple[str, list[str]]:
        """The client's (and the model's) texts joined, and the third-party texts one by one."""
        own = "\n\n".join(t for i, t in enumerate(self._texts) if t and i not in self.third_party)
        return own, [t for i, t in enumerate(self._texts) if t and i in self.third_party]

    def normalized(self) -> Normalized:
        # Every cheap rail normalizes the same text: once is enough.
        if self._normalized is None:
            # A schema repeats its keywords ("type", "string", "description"): each text once.
            each = {text: normalize(text) for text in dict.fromkeys(self._texts)}
            counts = [each[text] for text in self._texts]
            self._normalized = Normalized(
                text=_FIELD_BREAK.join(n.text for n in each.values() if n.text),
                hidden_chars=sum(n.hidden_chars for n in counts),
                invisible_chars=sum(n.invisible_chars for n in counts),
                control_chars=sum(n.control_chars for n in counts),
            )
        return self._normalized


class Unreadable(ValueError):
    """Message content that is neither text nor a list of content parts."""


def message_text(content: Any) -> str:
    """The text of an OpenAI message's content: a string, or the text parts of a parts list."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # non-text parts (images, audio) carry no text
        parts = [p for p in content if not (isinstance(p, dict) and p.get("type") != "text")]
        if all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts):
            return "\n".join(p["text"] for p in parts)
    raise Unreadable(type(content).__name__)


def dialogue_of(messages: list[dict]) -> tuple[tuple[str, str], ...]:
    """The user and assistant turns of a chat request, in order, as (role, text)."""
    return tuple((m["role"], message_text(m.get("content"))) for m in messages if m.get("role") in ("user", "assistant"))


def phrase_pattern(phrase: str) -> str:
    """A phrase as a regex over normalized text: words in order, any separators between."""
    words = normalize(phrase).text.split()
    return r"(?<!\w)" + r"[\W_]*".join(re.escape(w) for w in words) + r"(?!\w)"
