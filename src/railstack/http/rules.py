"""Validation in front of NeMo: a malformed or hostile chat request is answered 400/404/413 with
an OpenAI-style error body, in milliseconds, and never reaches NeMo, a rail or the main model.

It runs as the first ASGI layer for ``/v1/chat/completions`` (see ``railstack.http.install``), so it
works the same for streaming and non-streaming requests, and NeMo never sees input that it
handles badly (a lone surrogate, for one, used to turn every later request into a 500).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

from railstack.core.text import message_text
from railstack.http.params import LLM_PARAMS, NAME, check_params
from railstack.http.rejection import Rejected
from railstack.http.settings import RequestLimits

CONFIG_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# The keys NeMo's request schema lets each role's messages hold (it answers 422 to any other);
# the main model gets each of them but ``function_call`` and ``refusal``, which NeMo drops.
KEYS = {
    "system": {"role", "content", "name"},
    "developer": {"role", "content", "name"},
    "user": {"role", "content", "name"},
    "assistant": {"role", "content", "name", "tool_calls", "function_call", "refusal"},
    "tool": {"role", "content", "tool_call_id"},
    "context": {"role", "content"},
}
ROLES = set(KEYS)


def parse_body(body: bytes) -> dict:
    try:
        request = json.loads(body)
    except RecursionError:
        raise Rejected(400, "The request body is nested too deeply.", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError):
        raise Rejected(400, "The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(request, dict):
        raise Rejected(400, "The request body must be a JSON object.", code="invalid_json")
    return request


MAX_CONFIG_IDS = 8


@dataclass(frozen=True)
class ConfigRules:
    """What the validation layer knows of one config."""

    limits: RequestLimits
    models: frozenset[str]  # the model names a request may ask for
    passthrough: bool  # NeMo's passthrough mode cannot carry a context
    # NeMo runs no input rails on a conversation that ends with a tool result; only its tool
    # input rails look at one. Without them such a request would go to the model unchecked.
    tool_results: bool = False
    # NeMo 0.24 raises on an assistant turn for a Colang 2.x config (a 500, where a 400 says why).
    colang2: bool = False


def config_ids(request: dict) -> list[str]:
    """The config ids a request names (validated as plain names, never paths)."""
    guardrails = request.get("guardrails", {})
    if guardrails is None:
        return []
    if not isinstance(guardrails, dict):
        raise Rejected(400, "'guardrails' must be an object.", "guardrails")
    named = []
    if guardrails.get("config_id") is not None:
        named.append(("guardrails.config_id", guardrails["config_id"]))
    ids = guardrails.get("config_ids")
    if ids is not None:
        if not isinstance(ids, list) or len(ids) > MAX_CONFIG_IDS:
            raise Rejected(400, f"'guardrails.config_ids' must be a list of at most {MAX_CONFIG_IDS} config ids.", "guardrails.config_ids")
        named += [(f"guardrails.config_ids[{i}]", v) for i, v in enumerate(ids)]
    for param, value in named:
        if not isinstance(value, str) or not CONFIG_ID.fullmatch(value) or ".." in value:
            raise Rejected(400, "A config id is a plain name of letters, digits, '.', '_' and '-'.", param)
    values = [value for _, value in named]
    if len(set(values)) != len(values):
        raise Rejected(400, "A config id is named twice.", "guardrails.config_ids")
    return values


def check_strings(value: Any, path: str = "") -> None:
    """Every string in the body, keys included: valid Unicode (no lone surrogates), no NUL."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            _check_text(item, where or None)
        elif isinstance(item, dict):
            for key, child in item.items():
                child_path = f"{where}.{key}" if where else str(key)
                _check_text(key, child_path)
                stack.append((child, child_path))
        elif isinstance(item, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(item))


def _unknown(value: dict, allowed: set[str]) -> Optional[str]:
    """The first key of ``value`` not ``allowed`` (NeMo's schema refuses it with a 422)."""
    return next((key for key in value if key not in allowed), None)


def _text_of(content: Any, param: str) -> str:
    """``message_text``, with an error that names the part that is wrong."""
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise Rejected(400, "A content part must be an object with a 'type'.", f"{param}[{j}]")
            if part["type"] in ("image_url", "file"):
                # The main model would read it, and no rail can: fail closed.
                raise Rejected(400, "Image and file content parts are refused: no rail of this server reads them.", f"{param}[{j}]")
            if part["type"] != "text":
                raise Rejected(400, "A content part must be of type 'text'.", f"{param}[{j}].type")
            if not isinstance(part.get("text"), str):
                raise Rejected(400, "A text content part needs a string 'text'.", f"{param}[{j}].text")
            key = _unknown(part, {"type", "text", "prompt_cache_breakpoint"})
            if key is not None:
                raise Rejected(400, f"A text content part has no '{key}'.", f"{param}[{j}].{key}")
            if part.get("prompt_cache_breakpoint") not in (None, {"mode": "explicit"}):
                raise Rejected(400, "A prompt cache breakpoint is {mode: explicit}.", f"{param}[{j}].prompt_cache_breakpoint")
    elif not isinstance(content, str):
        raise Rejected(400, "Message content must be a string or a list of content parts.", param)
    return message_text(content)


def _check_calls(calls: Any, param: str) -> None:
    """An assistant message's tool calls, as NeMo's schema has them; NeMo decodes the arguments
    before the main model gets them and fails the turn (HTTP 200, an internal error) on any
    that are not a JSON object."""
    if not isinstance(calls, list) or not calls:
        raise Rejected(400, "'tool_calls' must be a non-empty list.", param)
    for j, call in enumerate(calls):
        at = f"{param}[{j}]"
        if not isinstance(call, dict) or call.get("type") != "function" or not isinstance(call.get("id"), str):
            raise Rejected(400, "A tool call needs a string 'id' and type 'function'.", at)
        key = _unknown(call, {"id", "type", "function"})
        if key is not None:
            raise Rejected(400, f"A tool call has no '{key}'.", f"{at}.{key}")
        function = call.get("function")
        if not isinstance(function, dict) or set(function) != {"name", "arguments"}:
            raise Rejected(400, "A tool call's function holds exactly a 'name' and 'arguments'.", f"{at}.function")
        if not isinstance(function["name"], str) or not NAME.fullmatch(function["name"]):
            raise Rejected(400, "A function name is 1 to 64 letters, digits, '_' and '-'.", f"{at}.function.name")
        try:
            decoded = json.loads(function["arguments"]) if isinstance(function["arguments"], str) else None
        except (ValueError, RecursionError):
            decoded = None
        if not isinstance(decoded, dict):
            raise Rejected(400, "Tool call arguments must be a JSON object, as a string.", f"{at}.function.arguments")


def _check_message(message: dict, param: str) -> str:
    """One message (not a context one): its keys, tool calls and content; its text."""
    role = message["role"]
    key = _unknown(message, KEYS[role])
    if key is not None:
        raise Rejected(400, f"A {role} message has no '{key}'.", f"{param}.{key}")
    for key, why in (("function_call", "send 'tool_calls'"), ("refusal", "send the refusal as content")):
        if message.get(key) is not None:
            raise Rejected(400, f"NeMo drops an assistant message's '{key}'; {why}.", f"{param}.{key}")
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None and not isinstance(message[key], str):
            raise Rejected(400, f"'{key}' must be a string.", f"{param}.{key}")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise Rejected(400, "A tool message needs the 'tool_call_id' it answers.", f"{param}.tool_call_id")
    if message.get("tool_calls") is not None:
        _check_calls(message["tool_calls"], f"{param}.tool_calls")
    content = message.get("content")
    if content is None:
        if role != "assistant" or not message.get("tool_calls"):
            raise Rejected(400, "A message needs content (an assistant message: content or tool calls).", f"{param}.content")
        return ""
    if isinstance(content, list) and role != "user":
        # NeMo 0.24 fails (HTTP 500) on content parts in any other role.
        raise Rejected(400, "Content parts are accepted in user messages only.", f"{param}.content")
    return _text_of(content, f"{param}.content")


def _check_text(text: str, param: Optional[str]) -> None:
    if "\x00" in text:
        raise Rejected(400, "The request must not contain NUL characters.", param, "invalid_unicode")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected(400, "The request holds invalid Unicode (a lone surrogate).", param, "invalid_unicode") from None


def check_messages(messages: Any, limits: RequestLimits, *, user_last: bool, tool_last: bool) -> None:
    if not isinstance(messages, list) or not messages:
        raise Rejected(400, "'messages' must be a non-empty list.", "messages")
    if len(messages) > limits.max_messages:
        raise Rejected(413, f"Too many messages: {len(messages)}, the limit is {limits.max_messages}.", "messages", "too_large")
    total = 0
    called: Optional[int] = None  # the first message with tool calls
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise Rejected(400, "Each message must be an object.", param)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise Rejected(400, f"A message role must be one of {', '.join(sorted(ROLES))}.", f"{param}.role")
        if role == "context":
            if not isinstance(message.get("content"), dict):
                raise Rejected(400, "A context message's content must be an object.", f"{param}.content")
            continue
        text = _check_message(message, param)
        if message.get("tool_calls") and called is None:
            called = i
        if role == "user" and called is not None:
            # NeMo 0.24 replays such a history wrongly: it answers the user turn before the tool
            # call, written over the last one, and runs its own input rails on neither.
            raise Rejected(
                400, "A user turn after a tool call is refused: NeMo Guardrails 0.24 would answer the user turn "
                "before the tool call instead of this one. Send earlier tool exchanges as the assistant's answers.",
                f"messages[{called}].tool_calls",
            )
        if len(text) > limits.max_message_chars:
            raise Rejected(
                413, f"A message has {len(text)} characters, the limit is {limits.max_message_chars}.",
                f"{param}.content", "too_large",
            )
        total += len(text)
    if total > limits.max_total_chars:
        raise Rejected(413, f"The messages hold {total} characters, the limit is {limits.max_total_chars}.", "messages", "too_large")
    if not user_last:
        # NeMo's check_async passes a conversation with neither without running a rail.
        if not any(m["role"] in ("user", "assistant") for m in messages):
            raise Rejected(400, "A check needs a user or an assistant message: with neither, no rail would run.", "messages")
        return
    last = messages[-1]
    if last["role"] not in (("user", "tool") if tool_last else ("user",)):
        who = "the user (or a tool)" if tool_last else "the user (this config has no tool input rails)"
        raise Rejected(400, f"The last message must come from {who}.", f"messages[{len(messages) - 1}].role")
    if last["role"] == "user" and not _text_of(last.get("content"), "").strip():
        raise Rejected(400, "The user's message is empty.", f"messages[{len(messages) - 1}].content")


def check_one_turn(messages: list[dict]) -> None:
    """A Colang 2.x config answers one user message a request: NeMo 0.24 raises on an earlier
    answer or a tool result, and of several user messages answers the first alone."""
    users = 0
    for i, message in enumerate(messages):
        users += message["role"] == "user"
        if message["role"] in ("assistant", "tool") or users > 1:
            raise Rejected(
                400, "This config runs Colang 2.x, which NeMo Guardrails 0.24 answers one user message at a time, "
                "without earlier answers or tool results: send the user's turn (and any system messages) only, "
                "or use a Colang 1.0 config.",
                f"messages[{i}].role",
            )


def check_parameters(request: dict, rules: ConfigRules, *, passthrough_all: bool) -> None:
    """Everything but the messages: the NeMo extensions here, the OpenAI parameters in
    ``railstack.http.params`` (tools only where every config named passes the conversation through)."""
    if request.get("stream") is not None and not isinstance(request["stream"], bool):
        raise Rejected(400, "'stream' must be true or false.", "stream")
    model = request.get("model")
    if model is not None and (not isinstance(model, str) or model not in rules.models):
        # NeMo builds and keeps a new rails instance for every model name it is sent.
        raise Rejected(400, f"Unknown model; this config serves: {', '.join(sorted(rules.models))}.", "model", "model_not_found")
    guardrails = request.get("guardrails") or {}
    if guardrails.get("state") is not None:
        raise Rejected(400, "A client cannot set the guardrails state.", "guardrails.state")
    if guardrails.get("thread_id") is not None:
        # NeMo would put a stored thread before the messages: history the rails never see.
        raise Rejected(400, "Server-side threads are refused: send the conversation in 'messages'.", "guardrails.thread_id")
    options = guardrails.get("options")
    if options is not None:
        # Anything but llm_params could switch rails off (``rails``) or reveal prompts (``log``).
        if not isinstance(options, dict) or set(options) - {"llm_params"}:
            raise Rejected(400, "'guardrails.options' may only hold 'llm_params'.", "guardrails.options")
        if options.get("llm_params") is not None and not isinstance(options["llm_params"], dict):
            raise Rejected(400, f"'{LLM_PARAMS}' must be an object.", LLM_PARAMS)
    has_context = guardrails.get("context") is not None or any(
        isinstance(m, dict) and m.get("role") == "context" for m in request.get("messages") or []
    )
    if has_context and rules.passthrough:
        raise Rejected(400, "This config passes the conversation through; it takes no context.", "guardrails.context")
    check_params(request, rules.limits, passthrough=passthrough_all)


def validate(request: dict, rules_for: Callable[[str], Optional[ConfigRules]], default_id: Optional[str], *, user_last: bool = True) -> None:
    """Validate a parsed request against the rules of the configs it names. ``user_last``:
    a chat request must end with the user; a rails-only check (/v1/checks) need not."""
    check_strings(request)
    ids = config_ids(request) or ([default_id] if default_id else [])
    if not ids:
        raise Rejected(400, "No guardrails config id given and the server has no default.", "guardrails.config_id")
    for config_id in ids:
        if rules_for(config_id) is None:
            raise Rejected(404, f"No guardrails config named '{config_id}'.", "guardrails.config_id", "config_not_found")
    # Several configs: the strictest of their limits, the models all of them serve.
    each = [rules_for(i) for i in ids]
    rules = ConfigRules(
        limits=RequestLimits(**{name: min(getattr(r.limits, name) for r in each) for name in RequestLimits.model_fields}),
        models=frozenset.intersection(*(r.models for r in each)),
        passthrough=any(r.passthrough for r in each),
        tool_results=all(r.tool_results for r in each),
        colang2=any(r.colang2 for r in each),
    )
    check_messages(request.get("messages"), rules.limits, user_last=user_last, tool_last=rules.tool_results)
    if rules.colang2:
        check_one_turn(request["messages"])
    check_parameters(request, rules, passthrough_all=all(r.passthrough for r in each))
