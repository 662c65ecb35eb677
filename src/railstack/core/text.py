"""Text normalization for matching: every step is linear in the input length.

The normalized form is only ever used for matching; the user's message is never rewritten.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

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

# Three or more single letters each followed by one separator ("i g n o r e", "i.g.n.o.r.e").
_SPACED = re.compile(r"(?<![^\W\d_])(?:[^\W\d_][ ._\-*]){2,}[^\W\d_](?![^\W\d_])")
_SPACE_RUN = re.compile(r"\s+")
_SEPARATORS = re.compile(r"[ ._\-*]")


@dataclass(frozen=True)
class Normalized:
    text: str
    hidden_chars: int
    invisible_chars: int


def _collapse(match: re.Match[str]) -> str:
    return _SEPARATORS.sub("", match.group(0))


def normalize(raw: str) -> Normalized:
    """NFKC, invisible characters and combining marks removed, homoglyphs folded, whitespace
    collapsed, spaced-out letters joined; a ``FieldText`` field by field.

    Unicode tag characters (U+E0000..U+E007F) are counted and removed: they carry hidden
    ASCII that a model reads and a person does not see.
    """
    if isinstance(raw, FieldText):
        return raw.normalized()
    if raw.isascii():
        # Every step before the whitespace is a no-op on ASCII (NFKC, casefolding and the
        # character classes above all concern other code points), and the step-by-step path
        # costs ~20 us per call: a request holds hundreds of short fields (a tool schema's).
        return Normalized(text=_SPACED.sub(_collapse, _SPACE_RUN.sub(" ", raw.lower()).strip()), hidden_chars=0, invisible_chars=0)
    raw, hidden = _TAGS.subn("", raw)
    text, invisible = _INVISIBLE.subn("", raw)
    text = unicodedata.normalize("NFKC", _LONG_EXPANSIONS.sub(" ", text)).casefold()
    text = _MARKS.sub("", text).translate(_FOLD)
    text = _SPACE_RUN.sub(" ", text).strip()
    text = _SPACED.sub(_collapse, text)
    return Normalized(text=text, hidden_chars=hidden, invisible_chars=invisible)


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
    only a blocked request asks, so a passing one never builds them."""

    def __new__(cls, texts: Sequence[str], paths: Callable[[], Sequence[str]]) -> "FieldText":
        self = super().__new__(cls, "\n\n".join(text for text in texts if text))
        self._texts = texts
        self._paths = paths
        self._normalized: Optional[Normalized] = None
        return self

    def __reduce__(self) -> tuple:
        # A copy (deepcopy of a context that holds it) must keep the fields, not re-split the text.
        return FieldText, (self._texts, self._paths)

    @functools.cached_property
    def fields(self) -> tuple[tuple[str, str], ...]:
        return tuple((path, text) for path, text in zip(self._paths(), self._texts) if text)

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
