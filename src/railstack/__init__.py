"""railstack: production guardrails for NeMo Guardrails, cheapest checks first."""

__version__ = "0.1.0"
