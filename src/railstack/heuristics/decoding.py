"""Encoded text inside a message, decoded with bounds, for the rules to read again and for the
classifier tiers to be shown: a model decodes base64 or Morse when asked, so a filter that reads
only the surface lets the payload through.

Every finder is one regular expression whose repeated parts cannot match the same text two
ways (linear on any input); every decoder is the standard library's. Bounds: a segment is decoded
only up to ``_SEGMENT_AT_MOST`` characters, the matcher searches decoded text for encodings once
more (base64 inside base64) and no deeper, and hands on at most ``max_decoded_chars`` of it. Only
decodings that read as text count: a hash, an image or a random identifier decodes to bytes that
are not.

Ciphers that leave text looking like words (ROT13, Atbash, leetspeak) have no segment to find.
ROT13 and Atbash are undone line by line once one common word appears enciphered ("gur", "lbh"),
where a line then reads as more English than before; leetspeak is read as letters.
"""

from __future__ import annotations

import base64
import bisect
import binascii
import email.errors
import email.header
import quopri
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Optional

_SEGMENT_AT_MOST = 16_384
_MIN_DECODED = 8  # characters: shorter decodings say nothing a rule could match
_WORDS = re.compile(r"(?<![^\W\d_])[^\W\d_]{3,}\s+[^\W\d_]{3,}")  # two words: what no hash or picture decodes to


@dataclass(frozen=True)
class Decoded:
    encoding: str
    text: str


def readable(data: bytes | str) -> Optional[str]:
    """``data`` as text when it reads as text: valid UTF-8, printable, words with spaces."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    text = data.strip()
    if len(text) < _MIN_DECODED:
        return None
    printable = sum(ch.isprintable() or ch in "\n\r\t" for ch in text)
    wordish = sum(ch.isalpha() or ch == " " for ch in text)
    if printable < 0.95 * len(text) or wordish < 0.6 * len(text) or not _WORDS.search(text):
        return None
    return text


def _pad(segment: str, block: int) -> str:
    return segment + "=" * (-len(segment) % block)


def _base64(segment: str) -> bytes:
    # Lines wrapped at 76 come as one segment; so may the next line of prose ("...=\nDecode it"):
    # without it, when the whole does not decode.
    lines = segment.split("\n")
    for end in range(len(lines), max(0, len(lines) - 2), -1):
        joined = "".join(lines[:end]).replace("\r", "").rstrip("=")
        altchars = b"-_" if ("-" in joined or "_" in joined) else None
        try:
            decoded = base64.b64decode(_pad(joined, 4), altchars=altchars, validate=True)
        except binascii.Error:
            continue
        if readable(decoded) is not None or end == 1:
            return decoded
    raise ValueError("not base64")


def _base32(segment: str) -> bytes:
    return base64.b32decode(_pad(re.sub(r"\s+", "", segment).rstrip("=").upper(), 8))


def _base16(segment: str) -> bytes:
    digits = re.sub(r"(?:\\x|0x|[\s:,])", "", segment, flags=re.I)
    return bytes.fromhex(digits[: len(digits) // 2 * 2])


def _ascii85(segment: str) -> bytes:
    if segment.startswith("<~"):
        return base64.a85decode(segment, adobe=True)
    return base64.a85decode(segment)


def _uuencoded(segment: str) -> bytes:
    lines = segment.splitlines()[1:]  # after "begin 644 name"
    out = b""
    for line in lines:
        if line.strip() in ("end", "`", ""):
            continue
        out += binascii.a2b_uu(line)
    return out


_QP_ESCAPE = re.compile(r"=[0-9A-F]{2}")


def _quoted_printable(segment: str) -> bytes:
    # "x=10 y=20 z=30" has escapes too: only a run dense with them is an encoding.
    escapes = len(_QP_ESCAPE.findall(segment))
    if escapes < 3 or 3 * escapes < 0.15 * len(segment):
        raise ValueError("not quoted-printable")
    return quopri.decodestring(segment.encode("ascii", "replace"))


def _mime_words(segment: str) -> str:
    return str(email.header.make_header(email.header.decode_header(segment)))


_MORSE = {
    ".-": "a", "-...": "b", "-.-.": "c", "-..": "d", ".": "e", "..-.": "f", "--.": "g", "....": "h", "..": "i",
    ".---": "j", "-.-": "k", ".-..": "l", "--": "m", "-.": "n", "---": "o", ".--.": "p", "--.-": "q", ".-.": "r",
    "...": "s", "-": "t", "..-": "u", "...-": "v", ".--": "w", "-..-": "x", "-.--": "y", "--..": "z",
    "-----": "0", ".----": "1", "..---": "2", "...--": "3", "....-": "4", ".....": "5", "-....": "6",
    "--...": "7", "---..": "8", "----.": "9", ".-.-.-": ".", "--..--": ",", "..--..": "?", "-.-.--": "!",
    ".----.": "'", "-..-.": "/", ".--.-.": "@", "---...": ":", "-.--.": "(", "-.--.-": ")",
}
_MORSE_MARKS = str.maketrans({"·": ".", "•": ".", "∙": ".", "_": "-", "−": "-", "–": "-", "—": "-"})


def _morse(segment: str) -> str:
    words = re.split(r"\s*[/|]\s*|\s{3,}|\n", segment.translate(_MORSE_MARKS).strip())
    return " ".join("".join(_MORSE.get(code, "") for code in word.split()) for word in words if word.strip())


# Grade-1 braille: a letter's dots, as the bits of its code point's offset from U+2800.
_BRAILLE = {
    chr(0x2800 + sum(1 << (int(dot) - 1) for dot in dots)): letter
    for letter, dots in zip(
        "abcdefghijklmnopqrstuvwxyz",
        "1 12 14 145 15 124 1245 125 24 245 13 123 134 1345 135 1234 12345 1235 234 2345 136 1236 2456 1346 13456 "
        "1356".split(),
    )
}
_BRAILLE.update({"\u2800": " ", " ": " ", "\u2832": ".", "\u2802": ",", "\u2826": "?", "\u2816": "!"})


def _braille(segment: str) -> str:
    return "".join(_BRAILLE.get(ch, "") for ch in segment)


_NATO = {
    "alfa": "a", "alpha": "a", "bravo": "b", "charlie": "c", "delta": "d", "echo": "e", "foxtrot": "f",
    "golf": "g", "hotel": "h", "india": "i", "juliett": "j", "juliet": "j", "kilo": "k", "lima": "l",
    "mike": "m", "november": "n", "oscar": "o", "papa": "p", "quebec": "q", "romeo": "r", "sierra": "s",
    "tango": "t", "uniform": "u", "victor": "v", "whiskey": "w", "whisky": "w", "x-ray": "x", "xray": "x",
    "yankee": "y", "zulu": "z",
}
_NATO_WORD = "|".join(sorted((re.escape(w) for w in _NATO), key=len, reverse=True))


def _nato(segment: str) -> str:
    words = re.split(r"\s*[/|]\s*|\s{2,}|\bspace\b|\n", segment, flags=re.I)
    return " ".join(
        "".join(_NATO[w.lower()] for w in re.findall(_NATO_WORD, word, flags=re.I)) for word in words if word.strip()
    )


_B64 = r"[A-Za-z0-9+/_-]"
_LONG_TOKEN = re.compile(r"\S{16}")


def _always(raw: str) -> bool:
    return True


# name -> (a segment's pattern, its decoder, a quick test that the text may hold one). Quantified
# groups never nest, and every pattern starts at a boundary or a literal, so each is linear.
_SEGMENTS: dict[str, tuple[re.Pattern[str], Callable[[str], bytes | str], Callable[[str], bool]]] = {
    "uuencode": (re.compile(r"\bbegin [0-7]{3} \S+\r?\n(?:[ -`]{1,62}\r?\n){1,512}end\b"), _uuencoded, lambda raw: "begin " in raw),
    "mime-word": (re.compile(r"=\?[\w-]{1,32}\?[BbQq]\?[^?\s]{1,4096}\?="), _mime_words, lambda raw: "=?" in raw),
    "braille": (re.compile("[\u2800-\u28FF][\u2800-\u28FF ]{3,}"), _braille, lambda raw: not raw.isascii()),
    "morse": (re.compile(r"(?<![\w.·•∙_−–—-])[.·•∙_−–—-]{1,7}(?:(?:[ \t]{1,3}|[ \t]*[/|][ \t]*)[.·•∙_−–—-]{1,7}){4,}"), _morse, _always),
    # Read on the lower-cased text (see ``segments``); every code word has four letters or more.
    "nato": (re.compile(rf"\b(?=[a-z][a-z-]{{3}})(?:(?:{_NATO_WORD})\b[\s,/|-]{{1,5}}){{4,}}(?:{_NATO_WORD})\b"), _nato, _always),
    # The alphabets below need a long unbroken token, which most text has none of.
    "base16": (re.compile(r"(?<![0-9A-Za-z])(?:(?:\\x|0x)?[0-9A-Fa-f]{2}[\s:,]?){8,}(?![0-9A-Za-z])"), _base16, _LONG_TOKEN.search),
    "base32": (re.compile(r"(?<![A-Za-z0-9=])[A-Z2-7]{16,}=*(?![A-Za-z0-9=])"), _base32, _LONG_TOKEN.search),
    "base64": (re.compile(rf"(?<![A-Za-z0-9+/=_-]){_B64}{{16,}}(?:\r?\n{_B64}{{4,}})*={{0,2}}(?![A-Za-z0-9+/=_-])"), _base64, _LONG_TOKEN.search),
    # Delimited (Adobe), or a bare token with a character base64 lacks.
    "ascii85": (re.compile(r"<~[!-u\s]{8,16384}~>|(?<![!-~])(?=[!-u]*[!-*,\-.:-<>-@\[-`])[!-u]{20,}(?![!-~])"), _ascii85, _LONG_TOKEN.search),
    # From a word with an escape to the end of its line (soft line breaks included).
    "quoted-printable": (re.compile(r"(?<!\S)[^\s=]*=[0-9A-F]{2}(?:[^\s=]+|=[0-9A-F]{2}|=\r?\n|[ \t]+)*"), _quoted_printable, lambda raw: "=" in raw),
}


def segments(raw: str) -> Iterator[Decoded]:
    """Encoded segments of ``raw`` that decode to text. Where the alphabets overlap (hex is
    base64 too), the more specific encoding, listed first, reads a segment. Linear: the matches
    of one pattern never overlap, and each is decoded up to ``_SEGMENT_AT_MOST`` characters."""
    taken: list[tuple[int, int]] = []  # sorted: a segment read once is not read again
    lowered = raw.lower()
    for name, (pattern, decode, may_hold) in _SEGMENTS.items():
        if not may_hold(raw):
            continue
        for match in pattern.finditer(lowered if name == "nato" else raw):
            start, end = match.span()
            before = bisect.bisect_right(taken, (start, len(raw) + 1))
            if before and taken[before - 1][1] > start:
                continue
            try:
                text = readable(decode(match.group(0)[:_SEGMENT_AT_MOST]))
            except (ValueError, binascii.Error, UnicodeError, LookupError, email.errors.HeaderParseError):
                continue
            if text is not None and text != match.group(0).strip():
                bisect.insort(taken, (start, end))
                yield Decoded(name, text)


def _table(plain: str, cipher: str) -> dict[int, str]:
    return str.maketrans(plain + plain.upper(), cipher + cipher.upper())


_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_ROT13 = _table(_ALPHABET, _ALPHABET[13:] + _ALPHABET[:13])
_ATBASH = _table(_ALPHABET, _ALPHABET[::-1])
# Common words, enciphered: one of them makes the cipher worth undoing, and the text counts as
# enciphered when undoing it brings out more of them than the text shows as it is.
_COMMON = frozenset(
    "the you and to of a in is it that for on with how do i what this your are be can me my all tell "
    "give write make explain ignore previous instructions system prompt steps step every about from".split()
)
_HINTS = ("the", "you", "and", "how", "what", "your", "this", "that", "with", "ignore", "write", "give", "explain")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "@": "a", "$": "s", "!": "i", "|": "l", "+": "t"})
# A word that mixes letters with the digits and signs leetspeak puts in their place.
_LEET_WORD = re.compile(r"(?<![\w@$!|+])(?=[\w@$!|+]*[a-z])(?=[\w@$!|+]*[0134578@$!|+])[\w@$!|+]{2,}")


def _hinted(normalized: str, table: dict[int, str]) -> bool:
    padded = f" {normalized} "
    return any(f" {word.translate(table)} " in padded for word in _HINTS)


def _common_words(text: str) -> int:
    return sum(word.strip(".,;:!?'\"()") in _COMMON for word in text.split())


_PIECES = re.compile(r"[^\n:]+")  # a request and its payload are often a line, or a colon, apart


def ciphers(normalized: str, raw: str = "") -> Iterator[Decoded]:
    """Pieces of ``raw`` (lines, and the parts of a line around a colon) with a word-preserving
    cipher undone, where a piece reads as enciphered; and the normalized text with leetspeak read
    as letters."""
    for name, table in (("rot13", _ROT13), ("atbash", _ATBASH)):
        if not _hinted(normalized, table):
            continue
        deciphered = []
        for piece in _PIECES.findall(raw.lower()):
            plain, undone = _common_words(piece), piece.translate(table)
            if _common_words(undone) >= max(3, 2 * plain):
                deciphered.append(undone.strip())
        if deciphered:
            yield Decoded(name, "\n".join(deciphered))
    # Three words at least: "mp3" or "h264" alone is no leetspeak.
    read, words = _LEET_WORD.subn(_unleet, normalized)
    if words >= 3 and read != normalized:
        yield Decoded("leetspeak", read)


def _unleet(word: re.Match[str]) -> str:
    # "instructions!" keeps its "!": only signs inside a word stand for letters.
    core = word.group(0).rstrip("!|+")
    return core.translate(_LEET) + word.group(0)[len(core):]
