"""Every OpenAI chat parameter, and what becomes of it on the way to the main model.

NeMo 0.24's server copies nine parameters into ``guardrails.options.llm_params``, which it sends
with each main-model call as they are, and drops every other one without a word (``seed``,
``response_format``, ``logit_bias``, ``max_completion_tokens``, ``user``, any unknown key). Here a
parameter is passed (validated, then moved into ``llm_params``: one way through for all of them),
accepted only at the value NeMo's silence amounts to, or refused with a 400 that names it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from railstack.http.rejection import Rejected
from railstack.http.settings import RequestLimits

LLM_PARAMS = "guardrails.options.llm_params"
NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what OpenAI accepts as a function or schema name
HANDLED = {"messages", "model", "stream", "guardrails"}  # validated with the messages and configs


def _name(param: str) -> str:
    return param.rsplit(".", 1)[-1]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tokens(value: Any, limits: RequestLimits, param: str) -> None:
    if not _integer(value) or not 1 <= value <= limits.max_tokens:
        raise Rejected(400, f"'{_name(param)}' must be an integer from 1 to {limits.max_tokens}.", param)


def _between(low: float, high: float, low_ok: bool) -> Callable[[Any, RequestLimits, str], None]:
    def check(value: Any, limits: RequestLimits, param: str) -> None:
        if not _number(value) or value > high or value < low or (value == low and not low_ok):
            bounds = f"{'from' if low_ok else 'above'} {low:g} to {high:g}"
            raise Rejected(400, f"'{_name(param)}' must be a number {bounds}.", param)

    return check


def _stop(value: Any, limits: RequestLimits, param: str) -> None:
    if not (isinstance(value, str) or (isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value))):
        raise Rejected(400, "'stop' must be a string or a list of up to 4 strings.", param)


def _seed(value: Any, limits: RequestLimits, param: str) -> None:
    if not _integer(value) or not -(2**63) <= value < 2**63:
        raise Rejected(400, "'seed' must be a 64-bit integer.", param)


def _string(value: Any, limits: RequestLimits, param: str) -> None:
    if not isinstance(value, str):
        raise Rejected(400, f"'{_name(param)}' must be a string.", param)


def _boolean(value: Any, limits: RequestLimits, param: str) -> None:
    if not isinstance(value, bool):
        raise Rejected(400, f"'{_name(param)}' must be true or false.", param)


def _logit_bias(value: Any, limits: RequestLimits, param: str) -> None:
    if not isinstance(value, dict) or len(value) > 300:
        raise Rejected(400, "'logit_bias' must map at most 300 token ids to numbers from -100 to 100.", param)
    for token, bias in value.items():
        if not (token.isascii() and token.isdigit() and len(token) <= 10) or not _number(bias) or not -100 <= bias <= 100:
            raise Rejected(400, "'logit_bias' must map token ids (digits) to numbers from -100 to 100.", param)


def _object(value: Any, param: str, allowed: set[str], what: str) -> dict:
    """``value`` as an object of the ``allowed`` keys (NeMo, or the main model, fails on others)."""
    if not isinstance(value, dict):
        raise Rejected(400, f"{what} must be an object.", param)
    for key in value:
        if key not in allowed:
            raise Rejected(400, f"{what} takes only {', '.join(sorted(allowed))}.", f"{param}.{key}")
    return value


def _named(value: dict, param: str, what: str) -> str:
    name = value.get("name")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise Rejected(400, f"{what} needs a name of 1 to 64 letters, digits, '_' and '-'.", f"{param}.name")
    return name


def _described(value: dict, param: str, schema_key: str) -> None:
    if value.get("description") is not None and not isinstance(value["description"], str):
        raise Rejected(400, "A description must be a string.", f"{param}.description")
    if value.get(schema_key) is not None and not isinstance(value[schema_key], dict):
        raise Rejected(400, "A JSON schema must be an object.", f"{param}.{schema_key}")
    if value.get("strict") is not None and not isinstance(value["strict"], bool):
        raise Rejected(400, "'strict' must be true or false.", f"{param}.strict")


def _response_format(value: Any, limits: RequestLimits, param: str) -> None:
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        raise Rejected(400, "'response_format.type' must be text, json_object or json_schema.", f"{param}.type")
    _object(value, param, {"type", "json_schema"} if kind == "json_schema" else {"type"}, "'response_format'")
    if kind == "json_schema":
        schema = _object(value.get("json_schema"), f"{param}.json_schema", {"name", "description", "schema", "strict"}, "A json_schema")
        _named(schema, f"{param}.json_schema", "A json_schema")
        _described(schema, f"{param}.json_schema", "schema")


def _tools(value: Any, limits: RequestLimits, param: str) -> None:
    if not isinstance(value, list) or not 1 <= len(value) <= 128:
        raise Rejected(400, "'tools' must be a list of 1 to 128 tools.", param)
    for i, tool in enumerate(value):
        at = f"{param}[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise Rejected(400, "A tool must be an object of type 'function' (NeMo refuses custom tools).", f"{at}.type")
        function = _object(_object(tool, at, {"type", "function"}, "A tool").get("function"), f"{at}.function",
                           {"name", "description", "parameters", "strict"}, "A tool's function")
        _named(function, f"{at}.function", "A function")
        _described(function, f"{at}.function", "parameters")


def _tool_choice(value: Any, tools: Any, param: str) -> None:
    if value in ("none", "auto", "required"):
        return
    names = {tool["function"]["name"] for tool in tools or []}
    function = _object(value, param, {"type", "function"}, "'tool_choice'").get("function")
    if value.get("type") != "function" or not isinstance(function, dict) or set(function) != {"name"} or function["name"] not in names:
        raise Rejected(400, "'tool_choice' must be none, auto, required or {type: function, function: {name}} naming one of 'tools'.", param)


# Passed to the main model, validated like this; the strings of each are input-rail text.
PASSED: dict[str, Callable[[Any, RequestLimits, str], None]] = {
    "max_tokens": _tokens,
    "max_completion_tokens": _tokens,
    "temperature": _between(0.0, 2.0, True),
    "top_p": _between(0.0, 1.0, False),
    "presence_penalty": _between(-2.0, 2.0, True),
    "frequency_penalty": _between(-2.0, 2.0, True),
    "stop": _stop,
    "seed": _seed,
    "logit_bias": _logit_bias,
    "user": _string,
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": lambda value, limits, param: None,  # against the tools, in check_params
    "parallel_tool_calls": _boolean,
}
TOOL_PARAMS = ("tools", "tool_choice", "parallel_tool_calls")
# NeMo sends none of these: only the value that amounts to is accepted.
DEFAULT_ONLY: dict[str, tuple[tuple[Any, ...], str]] = {
    "n": ((1,), "'n' must be 1: a guarded answer is one answer."),
    "logprobs": ((False,), "'logprobs' must be false: the guarded answer carries no log-probabilities."),
    "modalities": ((["text"],), "'modalities' must be [\"text\"]: audio is not supported."),
}
REFUSED = {
    "functions": "'functions' is deprecated and NeMo drops it; send 'tools'.",
    "function_call": "'function_call' is deprecated and NeMo drops it; send 'tool_choice'.",
    "top_logprobs": "'top_logprobs' is refused: the guarded answer carries no log-probabilities.",
    "audio": "Audio output is not supported.",
}


def _stream_options(value: Any, request: dict) -> None:
    """Honoured by railstack's HTTP layer itself (``railstack.http.responses`` adds the usage
    chunk from the main model's counts), so it is checked here, not passed to NeMo."""
    if request.get("stream") is not True:
        raise Rejected(400, "'stream_options' is only for streaming requests ('stream': true).", "stream_options")
    if not isinstance(value, dict) or set(value) - {"include_usage"} or not isinstance(value.get("include_usage", False), bool):
        raise Rejected(400, "'stream_options' may only hold 'include_usage', a boolean.", "stream_options")


def passed(request: dict) -> list[tuple[str, str, Any]]:
    """The parameters a validated request passes, as (name, where it was given, value), from
    the top level and from ``guardrails.options.llm_params`` (a parameter in both would lose one)."""
    found = [(name, name, value) for name, value in request.items() if name in PASSED and value is not None]
    for name, value in (((request.get("guardrails") or {}).get("options") or {}).get("llm_params") or {}).items():
        if name not in PASSED:
            raise Rejected(400, f"'{LLM_PARAMS}' may only hold {', '.join(sorted(PASSED))}.", LLM_PARAMS)
        if request.get(name) is not None and value is not None:
            raise Rejected(400, f"'{name}' is given at the top level and in '{LLM_PARAMS}'; send it once.", f"{LLM_PARAMS}.{name}")
        if value is not None:
            found.append((name, f"{LLM_PARAMS}.{name}", value))
    return found


def check_params(request: dict, limits: RequestLimits, *, passthrough: bool) -> None:
    for name, value in request.items():
        if name in HANDLED or name in PASSED or value is None:
            continue
        if name == "stream_options":
            _stream_options(value, request)
            continue
        if name in DEFAULT_ONLY:
            allowed, why = DEFAULT_ONLY[name]
            if value not in allowed:
                raise Rejected(400, why, name)
            continue
        raise Rejected(
            400, REFUSED.get(name, f"'{name}' is not an OpenAI chat parameter this server passes to the main model "
                             f"(NeMo Guardrails 0.24 would drop it); it passes {', '.join(sorted(PASSED))}."), name,
        )
    given = passed(request)
    for name, param, value in given:
        PASSED[name](value, limits, param)
    by_name = {name: (param, value) for name, param, value in given}
    for name in TOOL_PARAMS:
        if name in by_name and (not passthrough or request.get("stream")):
            # NeMo's own rule: only then does the conversation reach the model as sent.
            raise Rejected(400, f"'{name}' needs a non-streaming request to a passthrough config.", by_name[name][0])
    if "tool_choice" in by_name:
        _tool_choice(by_name["tool_choice"][1], by_name.get("tools", (None, None))[1], by_name["tool_choice"][0])


def forwarded(request: dict) -> dict:
    """The request as NeMo gets it: every passed parameter in ``guardrails.options.llm_params``."""
    given = passed(request)
    body = {name: value for name, value in request.items() if name not in PASSED}
    if given:
        guardrails = body.get("guardrails") or {}
        options = {**(guardrails.get("options") or {}), "llm_params": {name: value for name, _, value in given}}
        body["guardrails"] = {**guardrails, "options": options}
    return body
