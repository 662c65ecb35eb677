"""The cheap tier: length cap, hidden data, control characters, turn markers, the phrasing
rules, and the same rules again on whatever the message carries encoded.

It is a prefilter. Its rules target phrasing that benign prompts almost never use, so that
its false-positive rate stays at or under 1% (``scripts/eval_heuristics.py`` measures it);
catching paraphrases is the classifier tiers' job, and what this tier decodes it hands to them
(``Verdict.revealed``) so that they judge what the model would read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Optional

from railstack.core import Revealed, Verdict
from railstack.core.text import FieldText, normalize, phrase_pattern
from railstack.heuristics import decoding, hidden, rules
from railstack.heuristics.settings import HeuristicsSettings


class Rules:
    """Rules searched as one alternation: one pass over the text instead of one per rule (3 to 20
    times faster on long text). Without groups, which cost the engine its speed: where it matched,
    the rules are tried one by one, anchored there. A user's own regular expressions keep their
    own pass each: their groups and backreferences must not meet ours."""

    def __init__(self, fixed: Iterable[tuple[str, str]], own: Iterable[tuple[str, str]] = ()):
        fixed = list(fixed)
        # The engine scans fast only for an alternation whose every branch starts at a word boundary.
        self._each = tuple((rule_id, re.compile(p)) for rule_id, p in fixed if p.startswith(r"\b"))
        self._any = re.compile("|".join(f"(?:{p.pattern})" for _, p in self._each)) if self._each else None
        self._own = tuple((rule_id, re.compile(p)) for rule_id, p in [*(f for f in fixed if not f[1].startswith(r"\b")), *own])

    def first(self, text: str) -> Optional[str]:
        """The rule that matches first in ``text`` (the rules searched one by one after the others), or None."""
        match = self._any.search(text) if self._any is not None else None
        if match is not None:
            return next(rule_id for rule_id, pattern in self._each if pattern.match(text, match.start()))
        return next((rule_id for rule_id, pattern in self._own if pattern.search(text)), None)


@dataclass(frozen=True)
class Matcher:
    phrasing: Rules
    own_markers: Rules
    third_party_markers: Rules  # the client's markers and the strict ones
    decode_and_act: Optional[re.Pattern[str]]
    settings: HeuristicsSettings

    @classmethod
    def build(cls, settings: HeuristicsSettings) -> "Matcher":
        phrasing: list[tuple[str, str]] = list(rules.PHRASING.items()) if settings.default_blocklist else []
        phrasing += [(f"phrase:{p}", phrase_pattern(p)) for p in settings.phrases]
        markers = settings.default_blocklist and settings.turn_markers
        own_markers = rules.MARKERS_OWN_TURN if markers else {}
        return cls(
            phrasing=Rules(phrasing, [(f"pattern:{p}", p) for p in settings.patterns]),
            own_markers=Rules(own_markers.items()),
            # Data is held to the client's rules too: a tool result that opens a system turn is no better.
            third_party_markers=Rules({**own_markers, **(rules.MARKERS_THIRD_PARTY if markers else {})}.items()),
            decode_and_act=re.compile(rules.DECODE_AND_ACT) if settings.default_blocklist else None,
            settings=settings,
        )

    def scan(self, text: str, retrieved: bool = False) -> Verdict:
        """``text`` is the client's (a ``FieldText`` says which of its fields are tool results), or,
        ``retrieved``, all data from elsewhere."""
        settings = self.settings
        if len(text) > settings.max_input_chars:
            return Verdict.block(
                f"input is {len(text)} characters, over the limit of {settings.max_input_chars}",
                rule="max-input-chars",
            )
        norm = normalize(text)
        channels = hidden.channels(text)
        if channels and settings.block_hidden_text:
            return _hidden_data(channels)
        if norm.control_chars and settings.block_control_chars:
            return Verdict.block(
                f"{norm.control_chars} control characters or terminal escape sequences (they hide or overwrite text)",
                rule="control-characters",
            )
        own, third_party = ("", [text]) if retrieved else text.parties() if isinstance(text, FieldText) else (text, [])
        found = self.own_markers.first(own) or next(filter(None, map(self.third_party_markers.first, third_party)), None)
        if found:
            return Verdict.block(f"a chat turn marker inside the content (rule '{found}')", rule=found)
        found = self.phrasing.first(norm.text)
        if found:
            return Verdict.block(f"matched blocklist rule '{found}'", rule=found)
        revealed = self._reveal(own, third_party, norm.text, channels) if settings.decode else []
        for item in revealed:
            found = self.phrasing.first(normalize(item.text).text)
            if found:
                return Verdict.block(
                    f"matched blocklist rule '{found}' in {item.label}-decoded text", rule=found, decoded=item.label
                )
        # A hidden channel blocks on its own.
        encoded = [item for item in revealed if item.label not in _CHANNELS]
        if encoded and self.decode_and_act is not None and self.decode_and_act.search(norm.text):
            return Verdict.block(
                f"asks to decode and act on {encoded[0].label}-encoded text", rule="decode-and-act", decoded=encoded[0].label
            )
        facts = {"invisible_chars": norm.invisible_chars}
        if revealed:
            facts["decoded"] = [{"encoding": item.label, "chars": len(item.text)} for item in revealed]
        return Verdict.allow(revealed=_kept(revealed, settings.max_decoded_chars), **facts)

    def _reveal(self, own: str, third_party: list[str], normalized: str, channels: list[hidden.Channel]) -> list[Revealed]:
        """What the text carries hidden or encoded: the channels' payloads, each party's encoded
        segments (and segments inside those, one level), the whole text with a word cipher undone."""
        found: list[Revealed] = [Revealed(c.kind, c.payload) for c in channels if c.payload]
        for raw, is_third_party in [(own, False), *((t, True) for t in third_party)]:
            for item in decoding.segments(raw):
                found.append(Revealed(item.encoding, item.text, is_third_party))
                found += (
                    Revealed(f"{inner.encoding} in {item.encoding}", inner.text, is_third_party)
                    for inner in decoding.segments(item.text)
                )
        found += (Revealed(item.encoding, item.text) for item in decoding.ciphers(normalized, "\n".join([own, *third_party])))
        return found


def _kept(revealed: list[Revealed], budget: int) -> tuple[Revealed, ...]:
    """The first ``budget`` characters of what was revealed, for the classifier tiers."""
    kept = []
    for item in revealed:
        if budget <= 0:
            break
        kept.append(item._replace(text=item.text[:budget]))
        budget -= len(kept[-1].text)
    return tuple(kept)


_CHANNELS = ("tag characters", "variation selectors", "zero-width characters")


def _hidden_data(channels: list[hidden.Channel]) -> Verdict:
    channel = channels[0]
    if channel.kind == "tag characters":
        reason = f"hidden text: {channel.code_points} invisible Unicode tag characters"
    else:
        reason = f"hidden data: {channel.code_points} invisible {channel.kind} used as a data channel"
    return Verdict.block(reason, rule="hidden-text", channel=channel.kind)
