"""Which railstack rails a config's Colang flows run."""

from __future__ import annotations

from typing import Any, Iterator, Optional

from railstack.core.types import Intent
from railstack.nemo.compat import (
    elements, flow_id, flows_by_id, is_colang2, is_subflow, rail_flows, rails_lists_v2, user_intents,
)
from railstack.settings import RailstackSettings, SettingsError, parse_settings

ALL_SECTIONS = ("input", "output", "retrieval", "tool_input", "tool_output")


def _names(spec: Any) -> list[str]:
    return [n.strip() for n in spec.split(",") if n.strip()]


def actions_reached(config: Any, flow_ids: list[str]) -> Iterator[dict]:
    """The action elements (``action_name``, ``action_params``) of the flows ``flow_ids`` and of
    the subflows they call, each flow once."""
    by_id = flows_by_id(config)
    todo = list(flow_ids)
    seen: set[str] = set()
    while todo:
        flow = by_id.get(todo.pop())
        if flow is None or flow_id(flow) in seen:
            continue
        seen.add(flow_id(flow))
        for element in elements(flow):
            if element.get("_type") == "flow":
                todo.append(element.get("flow_name"))
            elif element.get("action_name"):
                yield element


def railstack_rails_of(element: dict) -> list[str]:
    """The rails a ``railstack_rails`` action element names (none for another action, or for a
    list only known when the flow runs)."""
    spec = element.get("action_params", {}).get("rails", "")
    if element.get("action_name") != "railstack_rails" or not isinstance(spec, str) or spec.startswith("$"):
        return []
    return _names(spec)


def rails_named_in_flows(config: Any, sections: tuple[str, ...] = ALL_SECTIONS) -> list[str]:
    """The railstack rails a config runs: the ``rails`` argument of each ``railstack_rails``
    action in the flows its rails list (input, output, retrieval, tool), its dialog flows, and
    the subflows those call. Subflows that nothing calls (the pack's library) do not count.
    With ``sections``, only the rails of those sections' flows (and what they call)."""
    todo = [f for section in sections for f in rail_flows(config, section)]
    if sections == ALL_SECTIONS:
        todo += [name for name, flow in flows_by_id(config).items() if not is_subflow(flow)]
    names: list[str] = []
    for element in actions_reached(config, todo):
        names += [n for n in railstack_rails_of(element) if n not in names]
    return names


def input_rails_of(config: Any) -> Optional[list[str]]:
    """The railstack rails of a config's input flows, when those flows are railstack's own:
    each runs ``railstack_rails`` on the input with a fixed list of rails, and otherwise only
    says bot messages (its refusal). Then railstack's HTTP layer can run them before NeMo and
    spare a passing request NeMo's input-rail machinery. None when any input flow does more, and
    for a Colang 2.x config: its runtime runs the ``input rails`` flow whatever a request's options say."""
    if is_colang2(config):
        return None
    by_id = flows_by_id(config)
    names: list[str] = []
    for name in config.rails.input.flows:
        flow = by_id.get(name)
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


def add_pack_flows(config: Any) -> bool:
    """Give ``config`` the pack's flows (and bot messages) that it does not define itself, read from
    the installed package (a config dir copied with ``cp -r`` needs no link to them): ``rails/*.co``
    for Colang 1.0, ``rails/colang2/*.co`` for a ``colang_version: "2.x"`` config. Whether
    anything was added."""
    from railstack.nemo.compat import parse_colang
    from railstack.paths import rails_dir

    version, files = ("2.x", "colang2/*.co") if is_colang2(config) else ("1.0", "*.co")
    have = {flow_id(flow) for flow in config.flows}
    added = False
    for path in sorted(rails_dir().glob(files)):
        parsed = parse_colang(path.name, path.read_text(encoding="utf-8"), version)
        for flow in parsed.get("flows", []):
            if flow_id(flow) in have:
                continue
            # As NeMo marks its own library's flows: they never end up in a prompt.
            if version == "1.0":
                flow = {**flow, "is_system_flow": True}
            else:
                flow.file_info["exclude_from_llm"] = True
            config.flows.append(flow)
            have.add(flow_id(flow))
            added = True
        for message, utterances in parsed.get("bot_messages", {}).items():
            config.bot_messages.setdefault(message, utterances)
    return added


def config_settings(config: Any) -> RailstackSettings:
    """The railstack settings of a config that runs railstack's flows. Such a config must say
    ``custom_data.railstack`` (``{}`` takes every default): without it, a misplaced or misspelled
    section would turn every setting back to its default, admission off, without a word."""
    custom_data = config.custom_data or {}
    settings = parse_settings(custom_data)  # a near miss of the key is named first
    listed = rails_lists_v2(config)
    if listed:
        raise SettingsError(
            f"this config says colang_version 2.x and sets {', '.join(listed)}: under 2.x NeMo calls such flows "
            "without the text to check (and never runs retrieval or tool lists). Call the flows from "
            "`flow input rails $input_text` and `flow output rails $output_text` in a .co file instead, passing "
            "the text (see configs/colang2/main.co)"
        )
    if "railstack" not in custom_data and rails_named_in_flows(config):
        named = ", ".join(f"custom_data.{key}" for key in custom_data) or "no custom_data"
        raise SettingsError(
            f"this config runs railstack's rails ({', '.join(rails_named_in_flows(config))}) but has no "
            f"custom_data.railstack settings ({named}): add `custom_data: {{railstack: {{}}}}` to take the defaults"
        )
    return settings


def config_intents(config: Any) -> tuple[Intent, ...]:
    """The config's Colang user intents, as the topic-intent rail reads them."""
    return tuple(Intent(name, tuple(examples), answer) for name, examples, answer in user_intents(config))


def load_config(path: Any) -> Any:
    """A config dir as NeMo loads it, with the pack's flows its ``init`` will add: what railstack
    reads of a config before NeMo builds it (the server's start-up, the profiler)."""
    from nemoguardrails import RailsConfig

    config = RailsConfig.from_path(str(path))
    add_pack_flows(config)
    return config
