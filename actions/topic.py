"""Topic rail: refuse turns that mention a denied term (the seed's competitors example)."""

import re

from railstack.mechanism import CheckContext, Tier, Verdict, rail


def _build(settings):
    from railstack.text import phrase_pattern

    return [(term, re.compile(phrase_pattern(term))) for term in settings.topic.deny]


@rail("topic", Tier.CHEAP)
async def topic(text: str, ctx: CheckContext) -> Verdict:
    from railstack.text import normalize

    normalized = normalize(text).text
    for term, pattern in ctx.resource("topic", _build):
        if pattern.search(normalized):
            return Verdict.block(f"{ctx.settings.topic.reason} (denied term '{term}')", rule=f"deny:{term}")
    return Verdict.allow()
