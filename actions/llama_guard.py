"""Large-classifier tier: Llama Guard 3/4 or ShieldGemma on the client's last turn and on the answer."""

from railstack.core import ModelRail, Tier, rail
from railstack.llama_guard import check, stand_in

rail("llama_guard", Tier.LARGE_CLASSIFIER, resource=check.engine,
     model=ModelRail("llama_guard", stand_in.stand_in))(check.check)
