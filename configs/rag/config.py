"""NeMo calls init(app) when this config loads: it validates the railstack settings and loads the
encoder that indexes kb/."""

from railstack.nemo import init  # noqa: F401
