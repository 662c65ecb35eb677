"""Guardrails AI validators, resolved from installed packages before NeMo would ask the Hub.

NeMo's ``guardrails_ai`` rails look any validator name they do not list up on the Guardrails Hub,
and a failed lookup ends the process (``sys.exit(1)`` inside guardrails) at the first request that
reaches the rail. railstack resolves every configured validator when the config loads instead:
from NeMo's own list or an installed ``guardrails_ai.<name>`` package (``pip install
guardrails-ai-<name>``), builds its Guard with the configured parameters, and refuses to start,
naming the validator and the package, when it cannot.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

from railstack.core.settings import SettingsError
from railstack.nemo import compat

# on_fail actions whose failed validation stays failed. "fix" and "fix_reask" report a pass with a
# rewritten text, which NeMo's rail does not use: the original, failing text would go through.
BLOCKING_ON_FAIL = ("noop", "exception", "filter", "refrain")
_VALIDATOR_IN_FLOW = re.compile(r"^guardrailsai check (?:input|output)\b.*?\$validator\s*=\s*[\"']?([^\"'\s]+)")


class GuardrailsAIConfigError(SettingsError):
    """A configured Guardrails AI validator cannot run: it names the validator and what to change."""


def _pip_name(cls: str) -> str:
    # The index publishes validator ValidLength as guardrails-ai-valid-length, GuardrailsPII as
    # guardrails-ai-guardrails-pii.
    return "guardrails-ai-" + re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", cls).lower()


def _quiet_guardrails() -> None:
    try:
        from guardrails.utils.hub_telemetry_utils import HubTelemetry
    except ImportError as exc:
        raise GuardrailsAIConfigError(
            "the config runs Guardrails AI validators but guardrails-ai is not installed: "
            "pip install 'railstack[guardrails-ai]'"
        ) from exc
    # Guardrails sends every validation as a trace to its own collector unless ~/.guardrailsrc
    # says enable_metrics=false: every Guard re-reads that file and turns its one process-wide
    # telemetry instance back on. Without a tracer that instance starts no span, so sends none.
    HubTelemetry(enabled=False)._tracer = None


def _flow_validators(config: Any) -> list[str]:
    flows = [*config.rails.input.flows, *config.rails.output.flows]
    return [m.group(1) for flow in flows if (m := _VALIDATOR_IN_FLOW.match(flow.strip()))]


def _resolve(name: str) -> None:
    known = compat.guardrails_ai_known(name)
    if known is not None:
        module_name, cls = known["module"], known["class"]
        try:
            getattr(importlib.import_module(module_name), cls)
        except (ImportError, AttributeError) as exc:
            raise GuardrailsAIConfigError(
                f"rails.config.guardrails_ai: validator {name!r} ({cls}) is not installed: pip install {_pip_name(cls)}"
            ) from exc
        return
    package = name.rsplit("/", 1)[-1]
    module_name = f"guardrails_ai.{package}"
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise GuardrailsAIConfigError(
            f"rails.config.guardrails_ai: validator {name!r} is not installed (no module {module_name}): "
            f"pip install guardrails-ai-{package.replace('_', '-')}. railstack never asks the Guardrails Hub."
        ) from exc
    from guardrails.validator_base import Validator

    exports = [
        cls for cls in getattr(module, "__all__", [])
        if isinstance(getattr(module, cls, None), type) and issubclass(getattr(module, cls), Validator)
    ]
    if len(exports) != 1:
        raise GuardrailsAIConfigError(
            f"rails.config.guardrails_ai: module {module_name} exports {len(exports)} validator classes "
            f"({', '.join(exports) or 'none'}), not one: validator {name!r} is ambiguous"
        )
    compat.guardrails_ai_register(name, module_name, exports[0])


def check(config: Any) -> None:
    """Resolve and build every Guardrails AI validator the config runs; raise naming the first that cannot."""
    validators = compat.guardrails_ai_validators(config)
    in_flows = _flow_validators(config)
    if not in_flows:
        return
    configured = {v.name: v for v in validators}
    missing = [name for name in in_flows if name not in configured]
    if missing:
        raise GuardrailsAIConfigError(
            f"rails.config.guardrails_ai.validators: no entry for {', '.join(map(repr, missing))}, which the "
            "guardrailsai flows name: add {name: ..., parameters: {...}} for each"
        )
    _quiet_guardrails()
    for name in dict.fromkeys(in_flows):
        validator = configured[name]
        on_fail = (validator.parameters or {}).get("on_fail", "noop")
        if on_fail not in BLOCKING_ON_FAIL:
            raise GuardrailsAIConfigError(
                f"rails.config.guardrails_ai: validator {name!r}: on_fail {on_fail!r} would pass a failing text "
                f"(NeMo does not use a fixed value); use one of {', '.join(BLOCKING_ON_FAIL)}"
            )
        _resolve(name)
        try:
            compat.guardrails_ai_guard(name, dict(validator.parameters or {}), dict(validator.metadata or {}))
        except Exception as exc:
            raise GuardrailsAIConfigError(
                f"rails.config.guardrails_ai: validator {name!r} cannot be built with its parameters "
                f"{validator.parameters!r}: {type(exc).__name__}: {exc}"
            ) from exc
