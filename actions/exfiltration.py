"""Output cheap tier: images, links and terminal escapes that would carry the conversation out."""

from railstack.core import CheckContext, Runtime, Tier, Verdict, rail


def _scanner(runtime: Runtime):
    from railstack.exfiltration.scanner import Scanner

    return Scanner(runtime.settings.exfiltration)


@rail("exfiltration", Tier.CHEAP, resource=_scanner)
async def exfiltration(text: str, ctx: CheckContext) -> Verdict:
    return ctx.resource.check(text, streamed=ctx.streamed)
