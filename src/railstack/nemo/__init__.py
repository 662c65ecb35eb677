"""The NeMo Guardrails adapter: a config's config.py says ``from railstack.nemo import init``."""

from railstack.nemo.hook import init  # noqa: F401
