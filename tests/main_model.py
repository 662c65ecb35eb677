"""The loopback main model the tests run against (``railstack.tools.loopback``), under the tests' name.

    python tests/main_model.py [PORT] [--latency S] [--token-delay S]
"""

from dataclasses import dataclass

from starlette.routing import Route

from railstack.tools.loopback import LoopbackModel, main, start_loopback

__all__ = ["MainModelDouble", "start_loopback"]


@dataclass
class MainModelDouble(LoopbackModel):
    """The loopback model, answering under ``/<name>/v1`` too, so that one server can be a new
    endpoint for each test: NeMo keeps one HTTP client per base URL for the whole process, bound
    to the event loop it was made in, and every test (and every served app) runs a loop of its
    own. ``forget`` in support.py gives the model a new name."""

    name: str = "t0"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/{self.name}/v1"

    def app(self):
        app = super().app()
        app.router.routes.extend([
            Route("/{name}/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/{name}/v1/models", self._models, methods=["GET"]),
        ])
        return app


if __name__ == "__main__":
    main()
