"""Server-level hook: `nemoguardrails server --config configs/` calls init(app) at startup."""

from railstack.http.install import init  # noqa: F401
