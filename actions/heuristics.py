"""The cheap tier: hidden text, instruction-override phrasing, input length."""

from railstack.mechanism import CheckContext, Tier, Verdict, rail


@rail("heuristics", Tier.CHEAP)
async def heuristics(text: str, ctx: CheckContext) -> Verdict:
    from railstack.heuristics import Matcher

    matcher = ctx.resource("heuristics", lambda s: Matcher.build(s.heuristics))
    return matcher.scan(text)
