"""Invisible code points used as a data channel: what a model reads and a person does not see.

Three channels, each found in one linear pass over the raw text:

- **tag characters** (U+E0000..U+E007F): each one is an invisible copy of an ASCII character;
- **variation selectors** (U+FE00..U+FE0F, U+E0100..U+E01EF): 256 of them, one byte each, hung
  in a run after one visible character ("emoji smuggling"). A real variation sequence has one
  selector after its base character, never two;
- **zero-width characters** (spaces, joiners, invisible operators, BOM, fillers) in runs, or
  strewn between Latin letters and digits as a bit per position. Legitimate ones stand alone:
  a joiner inside an emoji sequence, a non-joiner in Persian or Indic words, a BOM at the start.

What a channel carries is decoded where the scheme is known (tags, selectors, a binary channel
of two zero-width characters) so that the rules read it and the classifier tiers are shown it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

_TAG = re.compile("[\U000E0000-\U000E007F]+")
# A subdivision flag (England, Scotland, Wales) is the black flag, its region code in tag letters
# and digits, and the cancel tag: the one use of tag characters a person sees.
_FLAG = re.compile("\U0001F3F4[\U000E0030-\U000E0039\U000E0061-\U000E007A]{1,6}\U000E007F")
_SELECTORS = re.compile("[\uFE00-\uFE0F\U000E0100-\U000E01EF]{2,}")
_ZERO_WIDTH = "\u200B\u200C\u200D\u2060\u2061\u2062\u2063\u2064\uFEFF\u180E\u034F\u115F\u1160\u3164\uFFA0"
# Three or more in a row: the longest legitimate run is a selector and a joiner in an emoji
# sequence (two), which the class below does not even count as one run of zero-width characters.
_ZW_RUN = re.compile(f"[{_ZERO_WIDTH}]{{3,}}")
# One zero-width character between two ASCII letters or digits, where no script needs a joiner.
_ZW_BETWEEN_LATIN = re.compile(f"(?<=[A-Za-z0-9])[{_ZERO_WIDTH}](?=[A-Za-z0-9])")
_ZW_ANY = re.compile(f"[{_ZERO_WIDTH}]")
_STREWN_AT_LEAST = 4
_DECODED_AT_MOST = 4096  # characters of one channel's payload that are kept for the rules


@dataclass(frozen=True)
class Channel:
    kind: str  # "tag characters", "variation selectors", "zero-width characters"
    code_points: int
    payload: Optional[str]  # what it decodes to, when the scheme is known and the result is text


def _text(data: bytes) -> Optional[str]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text)
    return text[:_DECODED_AT_MOST] if text and printable >= 0.9 * len(text) else None


def _selector_byte(ch: str) -> int:
    cp = ord(ch)
    return cp - 0xFE00 if cp <= 0xFE0F else cp - 0xE0100 + 16


def _binary(bits: str) -> Optional[str]:
    """A run of two distinct zero-width characters read as bits, either way round."""
    symbols = sorted(set(bits))
    if len(symbols) != 2 or len(bits) < 8:
        return None
    for zero, one in (symbols, symbols[::-1]):
        digits = bits[: len(bits) // 8 * 8].replace(zero, "0").replace(one, "1")
        decoded = _text(int(digits, 2).to_bytes(len(digits) // 8, "big"))
        if decoded is not None and any(ch.isalpha() for ch in decoded):
            return decoded
    return None


def channels(raw: str) -> list[Channel]:
    """The invisible channels in ``raw`` (none for plain ASCII, the common case, at no cost)."""
    if raw.isascii():
        return []
    found: list[Channel] = []
    tags = _TAG.findall(_FLAG.sub("", raw))
    if tags:
        hidden = "".join(tags)
        payload = "".join(chr(ord(ch) - 0xE0000) for ch in hidden if 0x20 <= ord(ch) - 0xE0000 < 0x7F)
        found.append(Channel("tag characters", len(hidden), payload[:_DECODED_AT_MOST] or None))
    runs = _SELECTORS.findall(raw)
    if runs:
        decoded = [_text(bytes(_selector_byte(ch) for ch in run[:_DECODED_AT_MOST])) for run in runs]
        payload = "\n".join(d for d in decoded if d)
        found.append(Channel("variation selectors", sum(map(len, runs)), payload or None))
    zw_runs = _ZW_RUN.findall(raw)
    strewn = len(_ZW_BETWEEN_LATIN.findall(raw))
    if zw_runs or strewn >= _STREWN_AT_LEAST:
        decoded = [_binary(run[: 8 * _DECODED_AT_MOST]) for run in zw_runs]
        if strewn >= _STREWN_AT_LEAST:
            decoded.append(_binary("".join(_ZW_ANY.findall(raw))[: 8 * _DECODED_AT_MOST]))
        payload = "\n".join(d for d in decoded if d)
        found.append(Channel("zero-width characters", sum(map(len, zw_runs)) or strewn, payload or None))
    return found
