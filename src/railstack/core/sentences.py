"""Text cut into sentences: the claims the hallucination rail judges, the parts of a message the
topic-intent rail compares with its examples."""

from __future__ import annotations

import re

# Words whose full stop does not end a sentence.
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "e.g", "i.e", "cf", "al", "fig", "no",
    "nos", "vol", "vols", "pp", "approx", "inc", "ltd", "co", "corp", "dept", "est", "gen", "gov", "sen", "rep",
    "u.s", "u.k", "u.n", "ph.d", "a.m", "p.m", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept",
    "oct", "nov", "dec", "ca", "op", "ed", "eds",
}
_LIST_MARKER = re.compile(r"^\s*(?:[-*\u2022]|\(?\d{1,3}[.)]|\(?[a-z]\))\s+")
# A run of sentence punctuation (and closing quotes/brackets) followed by whitespace.
_BOUNDARY = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*\s+")
_WORD_BEFORE = re.compile(r"([\w.]+)[.!?\u2026]*[\"'\u201d\u2019)\]]*$")


def split_sentences(text: str) -> list[str]:
    """The sentences of a text: each line on its own (list markers removed), cut at sentence
    ends that are not abbreviations, initials or numbered-list markers."""
    sentences: list[str] = []
    for line in text.splitlines():
        line = _LIST_MARKER.sub("", line, count=1).strip()
        start = 0
        for match in _BOUNDARY.finditer(line):
            before = line[start : match.start() + 1]
            after = line[match.end() :]
            if after[:1].islower() or (match.group(0).startswith(".") and _not_an_end(before)):
                continue
            sentences.append(line[start : match.end()].strip())
            start = match.end()
        sentences.append(line[start:].strip())
    return [s for s in sentences if any(ch.isalnum() for ch in s)]


def _not_an_end(before: str) -> bool:
    found = _WORD_BEFORE.search(before)
    word = found.group(1).rstrip(".").lower() if found else ""
    # "Dr.", "e.g.", an initial ("J. R. R. Tolkien"), or a bare number ("see No. 5", "in 3. place").
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()) or word.isdigit() and len(word) <= 2
