"""Finds, in one pass over the answer, what a client would load, follow or execute on its own:
markdown and HTML images and links, bare URLs, and terminal escape sequences.

Every pattern here is linear: each repeated part excludes the character that ends it, and a
match never restarts inside the one before, so a megabyte of ``![`` or ``\\x1b[`` costs a
scan, not a square. Where markdown is ambiguous the scanner reads it the way that finds more.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from railstack.core import Verdict
from railstack.exfiltration.settings import ExfiltrationSettings
from railstack.exfiltration.urls import Url, host_allowed, readings

_ESCAPE = (
    r"(?:\x1b\]|\x9d)[^\x07\x1b\x9c\n]*(?:\x07|\x1b\\|\x9c)?"  # OSC, to its end: OSC 8 hyperlinks, titles
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI: screen clears, cursor moves, colours
    r"|\x1b[PX^_][^\x1b\x9c\n]*(?:\x1b\\|\x9c)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-~]?"  # any other escape: ESC c resets the terminal
)
# Tab, newline and carriage return are text; every other C0 control, DEL and C1 control is not.
_CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9a\x9c\x9e\x9f]"
# A run of them is one finding: a flood of escapes costs one record, not one each.
_TERMINAL = re.compile(rf"(?P<escape>(?:{_ESCAPE})+)|{_CONTROL}+")
_PLAIN_PATH = re.compile(r"[\w./~-]*")  # a relative link with nothing for a browser to resolve elsewhere
_FENCE = re.compile(r"(?m)^ {0,3}(`{3,}|~{3,})")
_DEFINITION = re.compile(
    r"(?m)^ {0,3}\[([^\[\]\n]{1,999})\]:[ \t]*\n?[ \t]*(<[^<>\n]*>|[^\s<>]+)[^\n]*\n?"
)
_INLINE = re.compile(  # after "](": a destination, an optional title, ")"
    r"\(\s*(<[^<>\n]*>|[^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*)"
    r"(?:\s+(?:\"[^\"]*\"|'[^']*'|\([^()]*\)))?\s*\)"
)
_INLINE_LOOSE = re.compile(r"\(\s*<?([^\s<>()]*)")  # unclosed or odd: still its URL
_REFERENCE = re.compile(r"\[([^\[\]\n]{0,999})\]")
_AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]{1,31}:[^\s<>]*)>")
_TAG = re.compile(r"<([A-Za-z][A-Za-z0-9:-]*)((?:\"[^\"]*\"|'[^']*'|[^<>\"'])*)>?")
_ATTRIBUTE = re.compile(r"([^\s\"'<>/=]+)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'=<>`]+))?")
_BARE = re.compile(r"(?i)(?<![A-Za-z0-9+.-])(?:[a-z][a-z0-9+.-]{0,31}://|www\.)[^\s<>]*")
_TRAILING = re.compile(r"[.,:;!?'\")\]*_~]+$")
_CSS_URL = re.compile(r"(?i)url\(\s*['\"]?([^'\"()\s]*)")
# Attributes whose value a browser fetches or follows; any other attribute's URLs count too.
_URL_ATTRIBUTES = frozenset({
    "src", "srcset", "poster", "data", "background", "href", "xlink:href", "action", "formaction",
    "lowsrc", "dynsrc", "longdesc", "ping", "manifest", "codebase", "archive", "icon", "cite",
})
_LINK_TAGS = frozenset({"a", "area"})  # their href is followed on a click, not loaded


@dataclass
class Finding:
    kind: str  # image, link, escape, control
    why: str  # never the data itself
    edits: list[tuple[int, int, str]] = field(default_factory=list)  # what transform replaces: (start, end, by)


def _label(text: str) -> str:
    return " ".join(text.split()).casefold()


def _masked(text: str) -> str:
    """``text`` with its closed fenced code blocks blanked (newlines kept): markdown renders nothing
    inside one. A fence left open is read as text: a renderer that ends it early would render
    what follows."""
    out = []
    last = 0
    opened: Optional[re.Match] = None
    for fence in _FENCE.finditer(text):
        if opened is None:
            opened = fence
        elif fence.group(1)[0] == opened.group(1)[0] and len(fence.group(1)) >= len(opened.group(1)):
            out.append(text[last:opened.start()])
            out.append(re.sub(r"[^\n]", " ", text[opened.start():fence.end()]))
            last = fence.end()
            opened = None
    out.append(text[last:])
    return "".join(out)


class Scanner:
    def __init__(self, settings: ExfiltrationSettings):
        self.settings = settings

    # -- what is wrong with one URL ---------------------------------------------------------------

    def _data(self, url: Url) -> Optional[str]:
        s = self.settings
        if url.query_fragment_chars > s.max_url_data_chars:
            return f"a query and fragment of {url.query_fragment_chars} characters (over {s.max_url_data_chars})"
        if url.blob_chars > s.max_blob_chars:
            return f"an encoded run of {url.blob_chars} characters (over {s.max_blob_chars})"
        if url.percent_escapes > s.max_percent_encoded:
            return f"{url.percent_escapes} percent-encoded bytes (over {s.max_percent_encoded})"
        return None

    def _image_problem(self, url: Url) -> Optional[str]:
        if url.raster_data:
            return None  # the image is in the answer: nothing is fetched
        if url.relative:
            return "a relative URL (resolved against a base the answer does not control)"
        if url.scheme not in (None, "http", "https"):
            return f"the scheme {url.scheme}:"
        if not url.host or not host_allowed(url.host, self.settings.image_hosts):
            return "a host not on image_hosts"
        data = self._data(url)
        return f"data in its URL: {data}" if data else None

    def _link_problem(self, url: Url) -> Optional[str]:
        if url.scheme not in (None, "http", "https", "mailto"):
            return f"the scheme {url.scheme}:"
        allowed = self.settings.link_hosts
        if allowed is not None and url.host is not None and not host_allowed(url.host, allowed):
            return "a host not on link_hosts"
        if url.host == "":
            return "a URL whose host is no host name"
        data = self._data(url)
        return f"data in its URL: {data}" if data else None

    def _problem(self, kind: str, raw: str) -> Optional[str]:
        if kind == "link" and len(raw) <= self.settings.max_blob_chars and not raw.startswith("//") \
                and _PLAIN_PATH.fullmatch(raw):
            return None  # the common case of a flood, at a regex's cost
        judge = self._image_problem if kind == "image" else self._link_problem
        floor = self.settings.max_blob_chars + 1
        return next((p for p in map(judge, readings(raw, floor)) if p), None)

    # -- the scan ---------------------------------------------------------------------------------

    def scan(self, text: str, streamed: bool = False) -> list[Finding]:
        """What ``text`` holds that a client would act on. ``streamed``: ``text`` is a chunk of a
        stream with NeMo's look-back before it, so a construct may have begun before it or end
        after it, and a reference's definition may be in another chunk."""
        found: list[Finding] = []
        for m in _TERMINAL.finditer(text):
            if m.group("escape"):
                found.append(Finding("escape", "terminal escape sequences", [(m.start(), m.end(), "")]))
            else:
                found.append(Finding("control", "control characters", [(m.start(), m.end(), "")]))
        masked = _masked(text)
        covered = bytearray(len(masked))  # where a URL was judged already: not again as a bare URL
        judged: dict[tuple[str, str], Optional[str]] = {}  # a flood repeats its URL

        def judge(kind: str, raw: str, start: int, end: int, edits: list[tuple[int, int, str]], what: str) -> None:
            covered[start:end] = b"\x01" * (end - start)
            if (kind, raw) not in judged:
                judged[kind, raw] = self._problem(kind, raw)
            problem = judged[kind, raw]
            if problem:
                found.append(Finding(kind, f"{what} with {problem}", edits))

        definitions: dict[str, tuple[str, int, int]] = {}  # label -> its URL and the definition's span
        for m in _DEFINITION.finditer(masked):
            definitions.setdefault(_label(m.group(1)), (m.group(2).strip("<>"), m.start(), m.end()))
            covered[m.start():m.end()] = b"\x01" * (m.end() - m.start())  # its brackets are no link
            judge("link", m.group(2).strip("<>"), m.start(2), m.end(2), [(m.start(), m.end(), "")],
                  "a reference definition")

        for m in _AUTOLINK.finditer(masked):
            judge("link", m.group(1), m.start(), m.end(), [(m.start(), m.end(), "")], "an autolink")
        for m in _TAG.finditer(masked):
            if covered[m.start()]:
                continue
            self._tag(m.group(1).lower(), m.group(2), m.start(2), m.start(), m.end(), judge)
        if streamed:
            # A ">" before any "<": the chunk began inside a tag the look-back does not hold.
            gt, lt = masked.find(">"), masked.find("<")
            if gt != -1 and (lt == -1 or gt < lt):
                self._tag("", masked[:gt], 0, 0, gt + 1, judge)

        self._brackets(masked, definitions, streamed, covered, judge, found)

        for m in _BARE.finditer(masked):
            if covered[m.start()]:
                continue
            end = m.start() + len(_TRAILING.sub("", m.group()))
            raw = m.group()[: end - m.start()]
            raw = raw if "://" in raw else "http://" + raw
            judge("link", raw, m.start(), end, [(m.start(), end, "")], "a URL")
        if streamed and masked and not covered[0]:
            # The chunk may begin inside a URL that began before the look-back: its tail still
            # must not carry data.
            head = re.match(r"[^\s<>()\[\]]*", masked).group()
            if head and self._data(readings("//x/" + head, self.settings.max_blob_chars + 1)[0]):
                found.append(Finding("link", "the start of the chunk carries data as a URL would", []))
        return found

    def _tag(self, name: str, attributes: str, offset: int, start: int, end: int, judge) -> None:
        alt = ""
        urls: list[tuple[str, int, int, str]] = []
        for a in _ATTRIBUTE.finditer(attributes):
            attr = a.group(1).lower()
            value = a.group(2) or ""
            v_start = offset + a.start(2) if a.group(2) else offset + a.end()
            inner = value[1:-1] if value[:1] in "\"'" and len(value) > 1 else value
            if attr == "alt":
                alt = inner
            elif attr == "srcset" or attr == "imagesrcset":
                for candidate in inner.split(","):
                    if candidate.strip():
                        urls.append(("image", candidate.split()[0], v_start, attr))
            elif attr in _URL_ATTRIBUTES:
                kind = "link" if name in _LINK_TAGS and attr == "href" else "image"
                urls.append((kind, inner, v_start, attr))
            else:
                # A style's url(...) and any URL in another attribute, each once.
                found = {u.start(): u.group() for u in _BARE.finditer(inner)}
                found.update({u.start(1): u.group(1) for u in _CSS_URL.finditer(inner)})
                urls += [("image", raw, v_start, attr) for raw in found.values()]
        for kind, raw, v_start, attr in urls:
            by = alt if name in ("img", "image", "input") else ""
            what = f"an HTML <{name}> {attr}" if name else f"HTML attribute {attr} of a tag begun before the chunk"
            judge(kind, raw, v_start, v_start + max(len(raw), 1), [(start, end, by)], what)

    def _brackets(self, masked: str, definitions: dict[str, tuple[str, int, int]], streamed: bool, covered: bytearray, judge,
                  found: list[Finding]) -> None:
        """Markdown's ``[text](url)``, ``[text][ref]``, ``[ref]``, each with ``!`` for an image. The
        brackets are paired in one pass; a ``]`` whose ``[`` is not in a chunk of a stream may
        close an image."""
        stack: list[int] = []
        consumed = 0
        for m in re.finditer(r"[\[\]]", masked):
            at = m.start()
            if at < consumed or covered[at]:
                continue
            if masked[at] == "[":
                stack.append(at)
                continue
            opened = stack.pop() if stack else None
            if opened is None and not streamed:
                continue
            image = opened is None or (opened > 0 and masked[opened - 1] == "!")
            start = 0 if opened is None else opened - 1 if image else opened
            keep_from = 0 if opened is None else opened + 1  # the alt text or the link text stays
            kind = "image" if image else "link"
            what = "a markdown image" if image else "a markdown link"
            after = at + 1
            nxt = masked[after:after + 1]
            if nxt == "(":
                dest = _INLINE.match(masked, after) or _INLINE_LOOSE.match(masked, after)
                raw = dest.group(1).strip("<>")
                consumed = dest.end()
                edits = [(start, keep_from, ""), (at, dest.end(), "")]
                judge(kind, raw, dest.start(1), max(dest.end(1), dest.start(1) + 1), edits, what)
                continue
            ref = _REFERENCE.match(masked, after) if nxt == "[" else None
            label = _label(ref.group(1) or masked[keep_from:at]) if ref else _label(masked[keep_from:at])
            end = ref.end() if ref else after
            if ref:
                consumed = ref.end()
            target = definitions.get(label)
            if target is not None:
                url, d_start, d_end = target
                problem = self._problem(kind, url)
                if problem:
                    edits = [(start, keep_from, ""), (at, end, ""), (d_start, d_end, "")]
                    found.append(Finding(kind, f"{what} by reference with {problem}", edits))
            elif streamed and image and (ref or opened is not None):
                found.append(Finding(kind, "a markdown image whose reference's definition is not in this chunk", []))

    # -- the verdict ------------------------------------------------------------------------------

    def check(self, text: str, streamed: bool = False) -> Verdict:
        found = sorted(self.scan(text, streamed), key=lambda f: f.edits[0][0] if f.edits else 0)
        if not found:
            return Verdict.allow()
        kinds = dict(Counter(f.kind for f in found))
        why = dict(Counter(f.why for f in found))
        if self.settings.on_detect == "block" or streamed:
            summary = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in kinds.items())
            first = found[0].why
            return Verdict.block(
                f"{summary} refused ({first}{'; ...' if len(found) > 1 else ''})",
                found=kinds, why=why, streamed=streamed,
                **({"on_detect": "block (transform is not applied to a streamed chunk)"} if streamed and self.settings.on_detect == "transform" else {}),
            )
        return Verdict.allow(bot_message=apply(text, [e for f in found for e in f.edits]), removed=kinds, why=why)


def apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    """``text`` with each ``(start, end, by)`` range replaced; a range inside one already replaced goes with it."""
    out = []
    last = 0
    for start, end, by in sorted(edits, key=lambda e: (e[0], -e[1])):
        if start < last:
            if end <= last:
                continue  # inside the previous range
            start = last  # overlapping: only what is left of it
            by = ""
        out.append(text[last:start])
        out.append(by)
        last = end
    out.append(text[last:])
    return "".join(out)
