"""Topic rail: refuse turns that mention a denied term (the seed's competitors example)."""

from railstack.core import CheckContext, Runtime, Tier, Verdict, rail


def _patterns(runtime: Runtime):
    import re

    from railstack.core.text import phrase_pattern

    return [(term, re.compile(phrase_pattern(term))) for term in runtime.settings.topic.deny]


@rail("topic", Tier.CHEAP, resource=_patterns)
async def topic(text: str, ctx: CheckContext) -> Verdict:
    from railstack.core.text import normalize

    normalized = normalize(text).text
    for term, pattern in ctx.resource:
        if pattern.search(normalized):
            return Verdict.block(f"{ctx.settings.topic.reason} (denied term '{term}')", rule=f"deny:{term}")
    return Verdict.allow()
