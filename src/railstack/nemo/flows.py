"""Which railstack rails a config's Colang flows run."""

from __future__ import annotations

from typing import Any, Optional

from railstack.nemo.compat import elements, flows_by_id, is_subflow

ALL_SECTIONS = ("input", "output", "retrieval", "tool_input", "tool_output")


def _names(spec: Any) -> list[str]:
    return [n.strip() for n in spec.split(",") if n.strip()]


def rails_named_in_flows(config: Any, sections: tuple[str, ...] = ALL_SECTIONS) -> list[str]:
    """The railstack rails a config runs: the ``rails`` argument of each ``railstack_rails``
    action in the flows its rails list (input, output, retrieval, tool), its dialog flows, and
    the subflows those call. Subflows that nothing calls (the pack's library) do not count.
    With ``sections``, only the rails of those sections' flows (and what they call)."""
    by_id = flows_by_id(config)
    todo = [f for section in sections for f in getattr(getattr(config.rails, section, None), "flows", None) or []]
    if sections == ALL_SECTIONS:
        todo += [flow_id for flow_id, flow in by_id.items() if not is_subflow(flow)]
    names: list[str] = []
    seen: set[str] = set()
    while todo:
        flow = by_id.get(todo.pop())
        if flow is None or flow.get("id") in seen:
            continue
        seen.add(flow.get("id"))
        for element in elements(flow):
            if element.get("_type") == "flow":
                todo.append(element.get("flow_name"))
            elif element.get("action_name") == "railstack_rails":
                spec = element.get("action_params", {}).get("rails", "")
                if isinstance(spec, str) and not spec.startswith("$"):
                    names += [n for n in _names(spec) if n not in names]
    return names


def input_rails_of(config: Any) -> Optional[list[str]]:
    """The railstack rails of a config's input flows, when those flows are railstack's own:
    each runs ``railstack_rails`` on the input with a fixed list of rails, and otherwise only
    says bot messages (its refusal). Then railstack's HTTP layer can run them before NeMo and
    spare a passing request NeMo's input-rail machinery. None when any input flow does more."""
    by_id = flows_by_id(config)
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
                names += _names(spec)
                ran = True
            elif action != "utter":
                return None
        if not ran:
            return None
    return names
