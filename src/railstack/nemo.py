"""Wiring into NeMo Guardrails: a config's config.py does ``from railstack.nemo import init``."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional

from railstack.mechanism import Runtime, runtime_for
from railstack.settings import parse_settings


ALL_SECTIONS = ("input", "output", "retrieval", "tool_input", "tool_output")


def rails_named_in_flows(config: Any, sections: tuple[str, ...] = ALL_SECTIONS) -> list[str]:
    """The railstack rails a config runs: the ``rails`` argument of each ``railstack_rails``
    action in the flows its rails list (input, output, retrieval, tool), its dialog flows, and
    the subflows those call. Subflows that nothing calls (the pack's library) do not count.
    With ``sections``, only the rails of those sections' flows (and what they call)."""
    by_id = {flow.get("id"): flow for flow in config.flows}
    todo = [f for section in sections for f in getattr(getattr(config.rails, section, None), "flows", None) or []]
    if sections == ALL_SECTIONS:
        todo += [flow_id for flow_id, flow in by_id.items() if not _is_subflow(flow)]
    names: list[str] = []
    seen: set[str] = set()
    while todo:
        flow = by_id.get(todo.pop())
        if flow is None or flow.get("id") in seen:
            continue
        seen.add(flow.get("id"))
        for element in flow.get("elements", []):
            if not isinstance(element, dict):
                continue
            if element.get("_type") == "flow":
                todo.append(element.get("flow_name"))
            elif element.get("action_name") == "railstack_rails":
                spec = element.get("action_params", {}).get("rails", "")
                if isinstance(spec, str) and not spec.startswith("$"):
                    names += [n.strip() for n in spec.split(",") if n.strip() and n.strip() not in names]
    return names


def _is_subflow(flow: dict) -> bool:
    return any(
        isinstance(e, dict) and e.get("_type") == "meta" and (e.get("meta") or {}).get("subflow")
        for e in flow.get("elements", [])
    )


def input_rails_of(config: Any) -> Optional[list[str]]:
    """The railstack rails of a config's input flows, when those flows are railstack's own:
    each runs ``railstack_rails`` on the input with a fixed list of rails, and otherwise only
    says bot messages (its refusal). Then railstack's HTTP layer can run them before NeMo and
    spare a passing request NeMo's input-rail machinery. None when any input flow does more."""
    by_id = {flow.get("id"): flow for flow in config.flows}
    names: list[str] = []
    for flow_id in config.rails.input.flows:
        flow = by_id.get(flow_id)
        if flow is None:
            return None
        ran = False
        for element in flow.get("elements", []):
            kind = element.get("_type") if isinstance(element, dict) else None
            if kind in ("meta", "if", "jump"):
                continue
            if kind != "run_action":  # calls another flow, waits for events, sets variables...
                return None
            action, params = element.get("action_name"), element.get("action_params", {})
            if action == "railstack_rails":
                spec = params.get("rails", "")
                if params.get("source", "input") != "input" or not isinstance(spec, str) or spec.startswith("$"):
                    return None
                names += [n.strip() for n in spec.split(",") if n.strip()]
                ran = True
            elif action != "utter":
                return None
        if not ran:
            return None
    return names


def init(app: Any) -> None:
    """Called by NeMo with the ``LLMRails`` of a config that imports it.

    Validates the config's railstack settings and the rails its flows name (a bad key or an
    unknown rail stops the config from loading), builds each rail's resources, and gives
    every railstack action the config's runtime.
    """
    from railstack.actions.railstack import railstack_rails

    # The config's id (its dir's name) scopes per-client state such as rate-limit buckets.
    first_path = (app.config.config_path or "").split(",")[0].strip()
    runtime = runtime_for(parse_settings(app.config.custom_data), Path(first_path).name or "config")
    runtime.prepare(rails_named_in_flows(app.config))
    app.register_action_param("railstack_runtime", runtime)

    # Bound as well as injected: NeMo's streaming output rails call the action directly,
    # without injecting registered parameters. (wraps keeps the signature NeMo inspects.)
    @functools.wraps(railstack_rails)
    async def bound(*args: Any, **kwargs: Any) -> Any:
        kwargs["railstack_runtime"] = runtime
        return await railstack_rails(*args, **kwargs)

    app.register_action(bound, name="railstack_rails")
    _check_before_streaming(app.config, runtime)
    _gate_main_model(app, runtime)
    _count_budgets_per_call(app)
    if not runtime.settings.logging.nemo_verbose:
        _quiet_nemo_verbose_log()


def _check_before_streaming(config: Any, runtime: Runtime) -> None:
    """NeMo streams each chunk before its output rails judge it unless ``stream_first`` is false:
    with railstack rails on the output, a chunk they would block must not reach the client. A
    config that sets ``stream_first`` itself keeps its choice."""
    streaming = config.rails.output.streaming
    if streaming is None or not streaming.enabled or "stream_first" in streaming.model_fields_set:
        return
    if any(runtime.settings.enabled(name) for name in rails_named_in_flows(config, ("output",))):
        streaming.stream_first = False


def _count_budgets_per_call(app: Any) -> None:
    """For the latency budgets, each ``generate_async`` call of a Python caller (``stream_async``
    makes one too) is one request; behind the HTTP layer the HTTP request already is."""
    from railstack.mechanism import one_request

    generate = app.generate_async

    @functools.wraps(generate)
    async def budgeted(*args: Any, **kwargs: Any) -> Any:
        with one_request():
            return await generate(*args, **kwargs)

    app.generate_async = budgeted


def _quiet_nemo_verbose_log() -> None:
    """Remove the console handler NeMo's verbose mode adds to the root logger (once per process;
    NeMo does not add it again)."""
    import logging

    from nemoguardrails.logging.verbose import VerboseHandler

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, VerboseHandler)]:
        root.removeHandler(handler)


def _gate_main_model(app: Any, runtime: Runtime) -> None:
    """Put the main model behind this config's main stage (``railstack.backpressure``).

    NeMo calls ``init`` before it builds the models and offers no hook after, and
    ``RunnableRails(config) | model`` swaps the model in later through ``update_llm``; so both
    steps are wrapped, on this instance only, to gate whatever model they set.
    """
    from railstack.backpressure import GatedModel, main_stage_name, stage_for

    bp = runtime.settings.backpressure
    stage = stage_for(main_stage_name(runtime.scope), bp.main, bp) if bp.enabled else None

    def gate() -> None:
        if app.llm is None or isinstance(app.llm, GatedModel):
            return
        app.llm = GatedModel(app.llm, stage, runtime.scope)
        app.runtime.register_action_param("llm", app.llm)
        generation = getattr(app, "_llm_generation_actions", None)  # made after the models
        if generation is not None:
            generation.llm = app.llm

    def wrapped(step: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(step)
        def run(*args: Any, **kwargs: Any) -> None:
            step(*args, **kwargs)
            gate()

        return run

    app._init_llms = wrapped(app._init_llms)
    app.update_llm = wrapped(app.update_llm)
