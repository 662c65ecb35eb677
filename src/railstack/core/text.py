"""Text normalization for matching: every step is linear in the input length.

The normalized form is only ever used for matching; the user's message is never rewritten.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

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
    collapsed, spaced-out letters joined.

    Unicode tag characters (U+E0000..U+E007F) are counted and removed: they carry hidden
    ASCII that a model reads and a person does not see.
    """
    raw, hidden = _TAGS.subn("", raw)
    text, invisible = _INVISIBLE.subn("", raw)
    text = unicodedata.normalize("NFKC", _LONG_EXPANSIONS.sub(" ", text)).casefold()
    text = _MARKS.sub("", text).translate(_FOLD)
    text = _SPACE_RUN.sub(" ", text).strip()
    text = _SPACED.sub(_collapse, text)
    return Normalized(text=text, hidden_chars=hidden, invisible_chars=invisible)


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


def conversation_text(messages: list[dict]) -> str:
    """Everything a chat request sent that the main model will read: system and user turns, the
    assistant turns of the history, tool results (not NeMo's ``context`` pseudo-messages)."""
    return "\n\n".join(message_text(m.get("content")) for m in messages if m.get("role") != "context")


def dialogue_of(messages: list[dict]) -> tuple[tuple[str, str], ...]:
    """The user and assistant turns of a chat request, in order, as (role, text)."""
    return tuple((m["role"], message_text(m.get("content"))) for m in messages if m.get("role") in ("user", "assistant"))


def phrase_pattern(phrase: str) -> str:
    """A phrase as a regex over normalized text: words in order, any separators between."""
    words = normalize(phrase).text.split()
    return r"(?<!\w)" + r"[\W_]*".join(re.escape(w) for w in words) + r"(?!\w)"
