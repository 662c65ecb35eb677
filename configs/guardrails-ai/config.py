"""NeMo calls init(app) when this config loads: it validates the railstack settings."""

from railstack.nemo import init  # noqa: F401
