"""Output tier: is each sentence of the answer supported by the turn's context (or, without
context, consistent with other answers the main model gives)?"""

from railstack.core import ModelRail, Tier, rail
from railstack.hallucination import check, stand_in

rail("hallucination", Tier.LARGE_CLASSIFIER, resource=check.resources,
     model=ModelRail("hallucination", stand_in.stand_in), calls_main_model=check.samples_main_model)(check.check)
