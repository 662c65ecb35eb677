"""Small-classifier tier: Prompt Guard 1 or 2 on the conversation, tool results and retrieved chunks."""

from railstack.core import ModelRail, Tier, rail
from railstack.prompt_guard import check, stand_in

rail("prompt_guard", Tier.SMALL_CLASSIFIER, resource=check.engine,
     model=ModelRail("prompt_guard", stand_in.stand_in))(check.check)
