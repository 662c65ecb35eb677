"""The rails the process knows, by name."""

from __future__ import annotations

import importlib
from typing import Any, Callable, Optional

from railstack.core.types import Builder, Check, ModelRail, Rail, Tier


class RailRegistry:
    """Rails register by name, so the copy NeMo file-loads from a working directory's
    ``actions/`` replaces the packaged one with identical code and no state is duplicated."""

    def __init__(self) -> None:
        self._rails: dict[str, Rail] = {}

    def add(self, rail: Rail) -> None:
        self._rails[rail.name] = rail

    def get(self, name: str) -> Optional[Rail]:
        if name not in self._rails:
            # Rails ship as ``railstack.actions.<name>``; importing one registers it. Only its
            # absence means "no such rail": a rail module that fails to import says why.
            module = f"railstack.actions.{name}"
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
        return self._rails.get(name)

    def forget(self, name: str) -> None:
        self._rails.pop(name, None)


registry = RailRegistry()


def rail(
    name: str, tier: Tier, resource: Optional[Builder] = None, model: Optional[ModelRail] = None,
    calls_main_model: Optional[Callable[[Any], bool]] = None,
) -> Callable[[Check], Check]:
    """Register an async check as the rail ``name``.

    ``resource(runtime)`` builds what the check needs per config (compiled patterns, a model);
    it runs when the config loads, and the check finds the result in ``ctx.resource``. A model
    rail also says which settings section names its checkpoint (``model``), and a rail that
    calls the main model whether it does under given settings (``calls_main_model``).
    """

    def register(check: Check) -> Check:
        registry.add(Rail(name, tier, check, resource, model, calls_main_model))
        return check

    return register
