"""Every field of a chat request that the main model reads, as the input rails check it, and
where in the request a cheap rail's match was.

A field is a path and its text: ``messages[2].content``, ``messages[1].tool_calls[0].function.
arguments.city``, ``tools[0].function.parameters.properties.unit.enum[1]``. In an object,
``{i}`` is its i-th entry's name (and the entry itself when that name is not a plain
identifier: a key is written into a path only when it is one, so no path repeats free text).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from typing import Any, Awaitable, Callable, Iterable, Iterator, Optional

from railstack.core import request
from railstack.core.policy import run_check
from railstack.core.registry import registry
from railstack.core.text import FieldText, dialogue_of, message_text
from railstack.core.types import CheckContext, Decision, Tier

log = logging.getLogger("railstack.decisions")

Field = tuple[str, str]  # (its path, its text)
# Messages whose text is data from elsewhere (a tool's result), not the client's or the model's words.
THIRD_PARTY_ROLES = ("tool", "function")
_IDENTIFIER = re.compile(r"[A-Za-z0-9_$-]{1,64}")


def _read(name: str) -> str:
    # Names and JSON are full of snake_case; a model reads `ignore_previous_instructions` as words,
    # and so must the rules (an underscore is a word character to them).
    return name.replace("_", " ")


def json_fields(value: Any, path: str) -> Iterator[Field]:
    """Every string in ``value``, object keys included, in document order, with its path.
    Iterative: a request may nest as deep as its JSON parser allows."""
    stack = [(path, value)]
    while stack:
        at, item = stack.pop()
        if isinstance(item, str):
            yield at, _read(item)
        elif isinstance(item, dict):
            for i, (key, child) in reversed(list(enumerate(item.items()))):
                key = str(key)
                entry = f"{at}.{key}" if _IDENTIFIER.fullmatch(key) else f"{at}{{{i}}}"
                stack += ((entry, child), (f"{at}{{{i}}}", key))
        elif isinstance(item, list):
            stack += [(f"{at}[{i}]", item[i]) for i in range(len(item) - 1, -1, -1)]


def json_texts(value: Any, into: list[str]) -> None:
    """``json_fields``' texts, in its order, without the paths: building those is most of the
    cost, and only a blocked request needs them (~0.3 us a string against ~2 us)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            into.append(_read(item))
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                stack += (child, str(key))
        elif isinstance(item, list):
            stack += reversed(item)


def _decoded(call: Any) -> Any:
    """A tool call with its arguments decoded: NeMo decodes them and sends them re-encoded, so
    the rules read the decoded strings (an escaped ``\\u0049gnore`` is "Ignore" to the model)."""
    function = call.get("function") if isinstance(call, dict) else None
    arguments = function.get("arguments") if isinstance(function, dict) else None
    if isinstance(arguments, str):
        try:
            return {**call, "function": {**function, "arguments": json.loads(arguments)}}
        except (ValueError, RecursionError):
            pass  # as sent: the HTTP layer refuses it, NeMo fails the turn on it
    return call


def message_fields(messages: list[dict]) -> Iterator[Field]:
    """Each message's content (its text parts together: a template renders them as one text),
    name, tool call id and tool calls; not NeMo's ``context`` pseudo-messages."""
    for i, message in enumerate(messages):
        if message.get("role") == "context":
            continue
        at = f"messages[{i}]"
        yield f"{at}.content", message_text(message.get("content"))
        for key in ("name", "tool_call_id"):
            if isinstance(message.get(key), str):
                yield f"{at}.{key}", _read(message[key])
        calls = message.get("tool_calls")
        for j, call in enumerate(calls if isinstance(calls, list) else []):
            yield from json_fields(_decoded(call), f"{at}.tool_calls[{j}]")


def conversation_text(messages: list[dict], params: Iterable[tuple[str, Any]] = ()) -> FieldText:
    """Everything of a chat request that the main model will read, field by field: the messages,
    and the parameters sent with them (``(path, value)``: tools, tool choice, response format...)."""
    params = list(params)
    texts: list[str] = []
    third_party: set[int] = set()
    for message in messages:
        start = len(texts)
        texts += (text for _, text in message_fields([message]))  # a few per message: paths are cheap here
        if message.get("role") in THIRD_PARTY_ROLES:
            third_party.update(range(start, len(texts)))
    for _, value in params:
        json_texts(value, texts)

    def paths() -> list[str]:
        found = [path for path, _ in message_fields(messages)]
        for path, value in params:
            found += (at for at, _ in json_fields(value, path))
        return found

    return FieldText(texts, paths, frozenset(third_party))


def input_check(
    runtime: Any, messages: list[dict], params: Iterable[tuple[str, Any]] = (), context: Optional[dict] = None
) -> Callable[[list[str]], Awaitable[tuple[list[Decision], Optional[Decision]]]]:
    """``decide`` for the input rails of a chat request (its messages, the parameters sent with
    them, its NeMo context), as railstack runs them before NeMo: call it with the rails to run.
    Raises ``Unreadable`` for content no rail can read (NeMo's flows refuse it with the reason)."""
    text = conversation_text(messages, params)
    given = dict(source="input", text=text, nemo_context={**(context or {}), "user_message": text}, dialogue=dialogue_of(messages))
    return lambda names: decide(runtime, names, **given)


async def decide(runtime: Any, names: list[str], *, text: str, **given: Any) -> tuple[list[Decision], Optional[Decision]]:
    """``runtime.decide``; when a cheap rail blocks a ``FieldText``, its record says in which field
    (``metadata.field``). It is found by running that rail on each field alone, which only a
    blocked request pays for (at most one more pass of the cheap rail); classifier tiers judge
    the conversation as a whole and name no field."""
    decisions, blocker = await runtime.decide(names, text=text, **given)
    if blocker is None or blocker.failed or not isinstance(text, FieldText) or runtime.tier_of(blocker.rail) != Tier.CHEAP:
        return decisions, blocker
    path = text.fields[0][0] if len(text.fields) == 1 else await _field_of(runtime, blocker, text, given)
    if path is None:  # a verdict on the whole (the length cap)
        return decisions, blocker
    located = replace(blocker, metadata={**blocker.metadata, "field": path})
    req = request.current()
    for kept in (decisions, req.decisions if req is not None else []):
        kept[:] = [located if d is blocker else d for d in kept]
    log.info("request=%s rail=%s source=%s field=%s", request.request_id(), blocker.rail, blocker.source, path)
    return decisions, located


async def _field_of(runtime: Any, blocker: Decision, text: FieldText, given: dict) -> Optional[str]:
    rail = registry.get(blocker.rail)
    timeout, on_failure = runtime.settings.policy(rail.name)
    req = request.current()
    ctx = CheckContext(
        blocker.source, runtime.settings, given.get("nemo_context") or {}, dialogue=given.get("dialogue", ()),
        messages=req.messages if req is not None else None,
    )
    seen: set[tuple[str, bool]] = set()
    for piece in text.alone():
        if (piece, bool(piece.third_party)) in seen:  # the same text judged the same
            continue
        seen.add((piece, bool(piece.third_party)))
        alone = await run_check(rail, piece, ctx, timeout, on_failure, lambda: runtime.resources.get(rail.name))
        if alone.verdict == "block" and not alone.failed:
            return piece.fields[0][0]
    return None
