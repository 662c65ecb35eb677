"""The cheap tier: hidden data, control characters, turn markers, override and extraction
phrasing, encoded payloads, input length."""

from railstack.core import CheckContext, Runtime, Tier, Verdict, rail


def _matcher(runtime: Runtime):
    from railstack.heuristics.matcher import Matcher

    return Matcher.build(runtime.settings.heuristics)


@rail("heuristics", Tier.CHEAP, resource=_matcher)
async def heuristics(text: str, ctx: CheckContext) -> Verdict:
    return ctx.resource.scan(text, retrieved=ctx.source == "retrieval")
