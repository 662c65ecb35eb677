"""Server-level wiring for `nemoguardrails server --config <dir of configs>`.

NeMo calls ``init(app)`` from the configs dir's ``config.py`` when the server starts (not in
single-config mode, and not under ``--prefix``). It

- validates every config's railstack settings, so a bad key stops the server with a message
  that names it instead of failing that config's first request;
- wraps the ASGI stack: malformed and hostile chat requests are refused before NeMo reads
  them (``railstack.http.rules``), every chat response says its request id and decisions in
  headers, and a refusal, the end of a stream and the main model's usage the way OpenAI
  clients read them (``railstack.http.responses``), configs that enable admission get a real
  429 with its headers, overload is shed at the door with 503 and Retry-After
  (``railstack.overload.stages``), each request has a deadline and a failing main model is
  answered with its real status (``railstack.http.upstream``), and the server answers
  ``GET /railstack/health``, ``/railstack/ready``, ``/railstack/live`` and ``GET /metrics``;
- asks each config's main model for its models once, and warns of one that is unreachable or
  does not look OpenAI-compatible.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Any

from railstack.settings import RailstackSettings, SettingsError

log = logging.getLogger("railstack.server")


def validate_configs(root: Path) -> dict[str, tuple[Any, RailstackSettings]]:
    """Load every config dir under ``root`` and validate its railstack settings."""
    from railstack.nemo import guardrails_ai
    from railstack.nemo.flows import config_settings, load_config

    configs, problems = {}, []
    for config_path in sorted(p for p in root.iterdir() if (p / "config.yml").is_file()):
        try:
            config = load_config(config_path)
            configs[config_path.name] = (config, config_settings(config))
            guardrails_ai.check(config)
        except SettingsError as exc:
            problems.append(f"config '{config_path.name}': {exc}")
    if problems:
        raise SettingsError("\n".join(problems))
    return configs


def installed(app: Any) -> bool:
    """Whether railstack's HTTP layer is in front of the server app."""
    from railstack.http.ops import OpsMiddleware

    return isinstance(getattr(app, "middleware_stack", None), OpsMiddleware)


def rules_of(config: Any, settings: RailstackSettings) -> Any:
    from railstack.http.rules import ConfigRules
    from railstack.nemo.compat import is_colang2

    main = [m.model for m in config.models if m.type == "main" and m.model]
    return ConfigRules(
        settings.limits, frozenset(main + settings.limits.models), bool(config.passthrough), bool(config.rails.tool_input.flows),
        is_colang2(config),
    )


def init(app: Any) -> None:
    from railstack.admission.service import admissions as admission_registry
    from railstack.core import Runtime, runtimes, tracing
    from railstack.http.admission import AdmissionMiddleware
    from railstack.http.backpressure import BackpressureMiddleware
    from railstack.http.decisions import DecisionsMiddleware
    from railstack.http.input_rails import InputRailsMiddleware
    from railstack.http.ops import OpsMiddleware, stand_in
    from railstack.http.responses import ResponsesMiddleware
    from railstack.http.upstream import MainModel, UpstreamMiddleware, probe_main_models
    from railstack.http.validation import ValidationMiddleware
    from railstack.nemo import compat
    from railstack.nemo.flows import config_intents, input_rails_of, rails_named_in_flows
    from railstack.nemo.selfcheck import selfcheck
    from railstack.overload.gate import main_model_calls, main_stage

    selfcheck.server(app)  # the server refuses to start on a NeMo whose internals moved
    ours = (
        AdmissionMiddleware, BackpressureMiddleware, DecisionsMiddleware, InputRailsMiddleware, OpsMiddleware,
        ResponsesMiddleware, UpstreamMiddleware, ValidationMiddleware,
    )

    configs = validate_configs(Path(app.rails_config_path))
    log.info("railstack settings valid for configs: %s", ", ".join(configs))
    admissions, stages, input_rails, main_models = {}, {}, {}, {}
    for config_id, (config, settings) in configs.items():
        if compat.traces_with_opentelemetry(config):
            tracing.enable()  # before the first request: its HTTP outcomes are spans too
        name, base_url, api_key = compat.main_model_of(config)
        main_models[config_id] = (MainModel(name, base_url, settings.limits.request_timeout_s), api_key)
        runtime: Runtime = runtimes.get(settings, config_id, config_intents(config))
        named = rails_named_in_flows(config)
        # Rails of the config's own actions.py register when NeMo loads the config.
        own = Runtime.unknown(named)
        if own:
            log.info("config '%s' names rails its own actions define; they load with the config", config_id)
        # Now, not on the config's first request: every rail's model loads whole (or the server
        # does not start), output rails' too; the pack's rails of a config with rails of its own
        # too (a model that cannot load would otherwise fail its first request with a bare 500).
        runtime.prepare([n for n in named if n not in own])
        names = input_rails_of(config)
        if names:
            input_rails[config_id] = (runtime, names)
        if settings.admission.enabled:
            admissions[config_id] = (admission_registry.get(settings.admission, config_id), settings.policy("admission"))
        main_model_calls(runtime)  # listed at /railstack/health from the start, before the config's first call
        stage = main_stage(runtime)  # the same stage object the config's main-model gate uses
        if stage is not None:
            stages[config_id] = stage
    default = lambda: app.default_config_id  # noqa: E731 - read per request: the server sets it after start-up

    def layers(stack: Any) -> Any:
        stack = InputRailsMiddleware(stack, input_rails, default)
        stack = BackpressureMiddleware(stack, stages, default)
        if admissions:
            stack = AdmissionMiddleware(stack, admissions, default)
            log.info("railstack admission answers HTTP for configs: %s", ", ".join(admissions))
        stack = UpstreamMiddleware(stack, {config_id: model for config_id, (model, _) in main_models.items()}, default)
        stack = ValidationMiddleware(
            stack,
            {config_id: rules_of(config, settings) for config_id, (config, settings) in configs.items()},
            {config_id: settings.admission.client_key for config_id, (_, settings) in configs.items()},
            default,
        )
        return OpsMiddleware(DecisionsMiddleware(ResponsesMiddleware(stack)))

    compat.wrap_asgi_stack(app, layers, ours)
    label = stand_in()
    if label:
        log.warning("STAND-IN main model: %s", label)
    probe_main_models(main_models)
    # Everything loaded so far (NeMo, LangChain, torch, the rails' models) lives as long as the
    # process. Frozen, the collector stops rescanning it: full collections over that heap
    # otherwise stall the event loop for hundreds of milliseconds under load, shed answers too.
    gc.freeze()
