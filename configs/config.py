"""Server-level hook: `nemoguardrails server --config configs/` calls init(app) at startup."""

from railstack.server import init  # noqa: F401
