"""A URL as a browser would resolve it: its scheme, its host (normalized for comparison with an
allowlist) and the data it carries."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

import idna

# WHATWG's special schemes: a browser reads a backslash in them as a slash and skips any run of
# slashes before the host ("https:\\evil.com", "https:evil.com" and "https:////evil.com" all
# reach evil.com).
_SPECIAL = frozenset({"http", "https", "ws", "wss", "ftp", "file"})
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_EDGES = "".join(chr(c) for c in range(0x21))  # C0 controls and space: browsers strip them at both ends
_INSIDE = re.compile(r"[\t\n\r]")  # and drop these anywhere
_MARKDOWN_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
_ASCII_HOST = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_RASTER_DATA = re.compile(r"(?i)data:image/(?:png|gif|jpe?g|webp|avif|bmp)[;,]")


def normalize_host(host: str) -> Optional[str]:
    """``host`` as an allowlist compares it: percent-decoded, IDNA (UTS 46, which also folds case
    and full-width dots) in its ASCII form, without a trailing dot; None when it is no host name."""
    host = unquote(host).strip().rstrip(".")
    if not host:
        return None
    if host.startswith("["):  # an IPv6 literal
        return host.lower()
    if _ASCII_HOST.fullmatch(host):
        return host.lower()  # what IDNA would make of it, without its cost per host
    try:
        return idna.encode(host, uts46=True).decode("ascii").lower()
    except idna.IDNAError:
        # Not a name IDNA takes (an underscore, an IP-like form): compared as written, lower-cased,
        # so that it is on no allowlist unless listed exactly.
        return host.lower() if host.isascii() else None


@dataclass(frozen=True)
class Url:
    """One reading of a URL."""

    scheme: Optional[str]  # lower-cased; None for a relative URL
    host: Optional[str]  # normalized; "" for one that is no host name, None for a URL without one
    query_fragment_chars: int
    blob_chars: int  # the longest hex or base64-like run after the host
    percent_escapes: int
    raster_data: bool  # a data: URI of a raster image, which loads nothing

    @property
    def relative(self) -> bool:
        """No scheme and no host: the page's own origin."""
        return self.scheme is None and self.host is None


def _blob_length(text: str, at_least: int) -> int:
    longest = 0
    for run in re.finditer(r"[A-Za-z0-9+_=-]{%d,}" % at_least, text):
        s = run.group()
        hexlike = all(c in "0123456789abcdefABCDEF" for c in s)
        mixed = any(c.isdigit() for c in s) and any(c.islower() for c in s) and any(c.isupper() for c in s)
        if hexlike or mixed:
            longest = max(longest, len(s))
    return longest


def _reading(url: str, blob_floor: int) -> Url:
    scheme = None
    rest = url
    m = _SCHEME.match(url)
    if m and len(m.group(1)) > 1:  # "c:" is a Windows drive more often than a scheme
        scheme = m.group(1).lower()
        rest = url[m.end():]
    if scheme in _SPECIAL or (scheme is None and rest[:2] in ("//", "\\\\", "/\\", "\\/")):
        rest = "//" + rest.replace("\\", "/").lstrip("/")
    try:
        parts = urlsplit(rest)
    except ValueError:  # an unclosed IPv6 bracket: no host a browser would reach either
        parts = urlsplit(rest.replace("[", "%5B").replace("]", "%5D"))
    host = None
    after_host = rest
    if rest.startswith("//"):
        netloc = parts.netloc.rpartition("@")[2]  # userinfo ends at the last @
        if netloc.startswith("["):
            name = netloc[: netloc.find("]") + 1] if "]" in netloc else netloc
        else:
            name = netloc.partition(":")[0]
        host = normalize_host(name) or ""
        after_host = rest[2 + len(parts.netloc):]
    return Url(
        scheme=scheme,
        host=host,
        query_fragment_chars=len(parts.query) + len(parts.fragment),
        blob_chars=_blob_length(after_host, blob_floor),
        percent_escapes=len(_PERCENT.findall(after_host)),
        raster_data=scheme == "data" and bool(_RASTER_DATA.match(url)),
    )


def readings(raw: str, blob_floor: int = 16) -> list[Url]:
    """The URLs ``raw`` (as written in markdown or HTML) may resolve to: entities decoded, and its
    backslashes read both ways: a markdown renderer reads "\\@" as "@", a browser the same
    backslash as "/" ("https://allowed.com\\@evil.com" is evil.com to one, allowed.com to the other)."""
    url = _INSIDE.sub("", html.unescape(raw).strip(_EDGES))
    return [_reading(u, blob_floor) for u in dict.fromkeys((url, _MARKDOWN_ESCAPE.sub(r"\1", url)))]


def host_allowed(host: str, allowed: list[str]) -> bool:
    for entry in allowed:
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry:
            return True
    return False
