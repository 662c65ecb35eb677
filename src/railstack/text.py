"""Text normalization for matching: every step is linear in the input length.

The normalized form is only ever used for matching; the user's message is never rewritten.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_TAGS = re.compile("[\U000E0000-\U000E007F]")

# Invisible characters that split a word without showing: zero-width, joiners, word joiner,
# BOM, soft hyphen, Mongolian vowel separator, and the bidi embedding/override/isolate and
# mark controls that reorder what a reader sees.
_INVISIBLE = (
    [0x00AD, 0x180E, 0x200B, 0x200C, 0x200D, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0xFEFF]
    + [0x200E, 0x200F, 0x061C]
    + list(range(0x202A, 0x202F))
    + list(range(0x2066, 0x206A))
)

# Letters from other scripts that render like Latin ones; NFKC leaves them alone.
_HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
    "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "ԁ": "d",
    "һ": "h", "ԛ": "q", "ԝ": "w", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ϲ": "c",
    # Latin look-alikes outside ASCII
    "ı": "i", "ȷ": "j", "ℓ": "l",
}

_DELETE = {cp: None for cp in _INVISIBLE}
_FOLD = str.maketrans({**{k: v for k, v in _HOMOGLYPHS.items()}, **_DELETE})

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
    """NFKC, invisible and bidi controls removed, homoglyphs folded, spaced letters joined.

    Unicode tag characters (U+E0000..U+E007F) are counted and removed: they carry hidden
    ASCII that a model reads and a person does not see.
    """
    raw, hidden = _TAGS.subn("", raw)
    visible_len = len(raw)
    text = raw.translate(_DELETE)
    invisible = visible_len - len(text)
    text = unicodedata.normalize("NFKC", text).casefold().translate(_FOLD)
    text = _SPACED.sub(_collapse, text)
    text = _SPACE_RUN.sub(" ", text).strip()
    return Normalized(text=text, hidden_chars=hidden, invisible_chars=invisible)


def phrase_pattern(phrase: str) -> str:
    """A phrase as a regex over normalized text: words in order, any separators between."""
    words = normalize(phrase).text.split()
    return r"(?<!\w)" + r"[\W_]*".join(re.escape(w) for w in words) + r"(?!\w)"
