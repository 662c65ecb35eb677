"""``railstack check``: a config's rails over rows (a text, or an OpenAI chat conversation, and
optionally an answer), through NeMo as the server runs them, without ever having the main model
answer. Rails that call the main model themselves (NeMo's self checks, railstack's
self-consistency) get it: ``--main-model-url``, else ``MAIN_MODEL_BASE_URL``, else the config's
own, when it answers; without one such a config does not load, and the error names those rails.

``check_rows(config_dir, rows)`` loads the config once and yields one result per row, in row
order. A row is validated as railstack's HTTP layer validates a chat request, and its rails see
it as they see a request behind that layer (``railstack.core.request``): every field of every
message, a ``role: tool`` message as third-party text. The admission tier never runs here (its
record says ``skipped`` and why): an audit of thousands of rows from one process is no client's
traffic, and its rate limit would block most of them.
"""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterable, Iterator, Optional

UNMETERED = "railstack check meters no rows: an audit is not a client's traffic"


PROBE_TIMEOUT_S = 2.0  # to tell whether a main model answers at all
GIVE_A_MODEL = ("give railstack check an OpenAI-compatible main model: --main-model-url URL "
                "(e.g. http://127.0.0.1:8000/v1) or the MAIN_MODEL_BASE_URL environment variable")


class CannotLoad(Exception):
    """The config dir does not load; the message says why (a bad setting names its key)."""


class NeedsMainModel(CannotLoad):
    """Rails of the config call the main model, and none is reachable: the message names them."""


@dataclass(frozen=True)
class BadLine:
    """A line of a JSON Lines input that holds no JSON value: its row's error."""

    error: str


class _BadRow(Exception):
    """A row that cannot be checked; the message says why."""


def read_rows(lines: Iterable[str]) -> Iterator[Any]:
    """Each non-blank line's JSON value, or a ``BadLine`` that names the line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except (ValueError, RecursionError) as exc:
            yield BadLine(f"line {number} is not JSON: {exc}")


class _NoMainModel:
    """Stands where the main model would be when no rail of the config calls it: a rail that
    does all the same (one ``main_model_rails`` cannot tell) fails its row, saying so."""

    model_name = "railstack-check"
    provider_name = None
    provider_url = None

    async def generate_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> Any:
        raise RuntimeError(f"a rail called the main model, which railstack check was not given: {GIVE_A_MODEL}")

    async def stream_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> AsyncIterator[Any]:
        raise RuntimeError(f"a rail called the main model, which railstack check was not given: {GIVE_A_MODEL}")
        yield  # pragma: no cover - makes this an async generator


def main_model_rails(app: Any, runtime: Any) -> list[str]:
    """The input and output rails of the ``LLMRails`` ``app`` that call its main model: NeMo
    flows whose actions NeMo hands the main model, and enabled railstack rails that sample it."""
    from railstack.core.registry import registry
    from railstack.nemo.compat import action_calls_main_model
    from railstack.nemo.flows import actions_reached, railstack_rails_of

    found: list[str] = []
    for stage in ("input", "output"):
        for flow in getattr(app.config.rails, stage).flows:
            for element in actions_reached(app.config, [flow]):
                action = element["action_name"]
                if action == "railstack_rails":
                    for name in railstack_rails_of(element):
                        rail = registry.get(name)  # an unknown one is the config's start-up error
                        calls = rail.calls_main_model if rail is not None else None
                        if runtime.settings.enabled(name) and calls is not None and calls(runtime.settings):
                            found.append(f"{stage} rail '{name}' (flow '{flow}')")
                elif action_calls_main_model(app, action):
                    found.append(f"{stage} flow '{flow}' (action {action})")
    return list(dict.fromkeys(found))


def _unreachable(url: str) -> Optional[str]:
    """Why nothing answers HTTP at the OpenAI-compatible base URL ``url``; None when something does."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/models", timeout=PROBE_TIMEOUT_S)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def _with_main_model(config: Any, url: str) -> None:
    """``config``'s main model at ``url`` (an OpenAI-compatible endpoint when it names none)."""
    from nemoguardrails.rails.llm.config import Model

    main = next((m for m in config.models if m.type == "main"), None)
    if main is None:
        main = Model(type="main", engine="openai", model="main", parameters={"api_key": "EMPTY"})
        config.models.append(main)
    main.parameters = {**(main.parameters or {}), "base_url": url}


class _Checker:
    def __init__(self, config_dir: Path, main_model_url: Optional[str] = None):
        from nemoguardrails import LLMRails, RailsConfig

        from railstack.nemo.compat import is_colang2, keep_activated_rails, main_model_of, pooled_model_clients
        from railstack.nemo.flows import config_settings, input_rails_of
        from railstack.nemo.hook import config_runtime

        if not (config_dir / "config.yml").is_file() and not (config_dir / "config.yaml").is_file():
            raise CannotLoad(f"{config_dir} is not a config dir (no config.yml)")
        try:
            config = RailsConfig.from_path(str(config_dir))
            if is_colang2(config):
                # It would report every stage as one where no rail ran.
                raise CannotLoad(
                    f"{config_dir} is a Colang 2.x config: railstack check runs NeMo's check_async, which NeMo 0.24 "
                    "does not run for 2.x configs; check a Colang 1.0 config with the same rails (configs/no-models "
                    "for configs/colang2), or send the turn to the served config"
                )
            self.limits = config_settings(config).limits
            _, configured_url, _ = main_model_of(config)
            # The main model is built only for rails that call it: most configs have none.
            config.models = [m for m in config.models if m.type != "main"]
            self.rails = LLMRails(config, llm=_NoMainModel())
            self.runtime = config_runtime(self.rails)
            self.model_rails = main_model_rails(self.rails, self.runtime)
            self.main_model_url = None
            self._clients_before = pooled_model_clients()
            if self.model_rails:
                self.main_model_url = self._reachable_model(config_dir, main_model_url, configured_url)
                config = RailsConfig.from_path(str(config_dir))
                _with_main_model(config, self.main_model_url)
                self.rails = LLMRails(config)
                self.runtime = config_runtime(self.rails)
        except (NeedsMainModel, CannotLoad):
            raise
        except Exception as exc:  # noqa: BLE001 - a config that does not load is said, not traced
            raise CannotLoad(f"cannot load {config_dir}: {exc.__cause__ or exc}") from exc
        keep_activated_rails(self.rails)
        # Where the input flows are railstack's own, the server runs their rails before NeMo, and
        # so does check: NeMo's Colang machinery (~7 ms a row) is paid only to say a refusal.
        self.input_rails = input_rails_of(self.rails.config)

    async def close(self) -> None:
        """Close the main model's connections, on the loop the rows ran on."""
        from railstack.nemo.compat import close_model_clients_since

        await close_model_clients_since(self._clients_before)

    def _reachable_model(self, config_dir: Path, given: Optional[str], configured: Optional[str]) -> str:
        """The main model's URL for the rails that call it, once something answers there."""
        import os

        if given:
            url, whence = given, "--main-model-url"
        elif os.environ.get("MAIN_MODEL_BASE_URL"):
            url, whence = os.environ["MAIN_MODEL_BASE_URL"], "MAIN_MODEL_BASE_URL"
        else:
            url, whence = configured, "the config's main model (models: type main, parameters.base_url)"
        rails = "; ".join(self.model_rails)
        if not url:
            tried = "the config names no main model URL"
        else:
            why = _unreachable(url)
            if why is None:
                return url
            tried = f"nothing answers at {url} (from {whence}): {why}"
        raise NeedsMainModel(
            f"{config_dir} has rails that call the main model, and {tried}. Those rails: {rails}. To check them, "
            f"{GIVE_A_MODEL}; only those rails' own calls go to it, never one for the answer being checked."
        )

    def _conversation(self, row: Any) -> tuple[list[dict], Optional[str]]:
        """The row's messages and answer, refused as railstack's HTTP layer refuses a request."""
        from railstack.http.rejection import Rejected
        from railstack.http.rules import check_messages, check_strings

        if isinstance(row, BadLine):
            raise _BadRow(row.error)
        if not isinstance(row, dict):
            raise _BadRow("a row must be a JSON object")
        if ("text" in row) == ("messages" in row):
            raise _BadRow("a row needs 'text' (the user's message) or 'messages' (OpenAI chat messages), not both")
        answer = row.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise _BadRow("'answer' must be a string")
        if "text" in row:
            if not isinstance(row["text"], str):
                raise _BadRow("'text' must be a string")
            messages = [{"role": "user", "content": row["text"]}]
        else:
            messages = row["messages"]
        try:
            check_strings({"messages": messages, "answer": answer})
            # As NeMo's rails-only check endpoint takes them: a conversation need not end with the user.
            check_messages(messages, self.limits, user_last="text" in row, tool_last=False)
        except Rejected as exc:
            param = exc.rejection.param
            if param is not None and "text" in row:  # the message made of the row's text
                param = param.replace("messages[0].content", "text")
            where = f" ({param})" if param else ""
            raise _BadRow(f"{exc.rejection.message}{where}") from None
        if not any(m.get("role") == "user" for m in messages):
            raise _BadRow("the messages hold no user message")
        return messages, answer

    async def check(self, index: int, row: Any) -> dict[str, Any]:
        from railstack.core.request import collect_decisions, derive
        from railstack.http.rejection import Rejected
        from railstack.http.rules import check_strings

        ident = row.get("id") if isinstance(row, dict) else None
        try:
            check_strings(ident)  # it is printed back
        except Rejected as exc:
            return {"row": index, "id": None, "error": f"'id': {exc.rejection.message}"}
        result: dict[str, Any] = {"row": index, "id": ident}
        try:
            messages, answer = self._conversation(row)
        except _BadRow as exc:
            return {**result, "error": str(exc)}
        with derive(messages=messages, unmetered=UNMETERED), collect_decisions() as decisions:
            try:
                stages = await self._stages(messages, answer)
            except Exception as exc:  # noqa: BLE001 - the row is unchecked, and says so; the others go on
                return {**result, "error": f"the rails raised {type(exc).__name__}: {exc}"}
        records = [d.as_dict() for d in decisions]
        _rails_ran(stages, records)
        blocked = next((stage for stage, report in stages.items() if report["status"] == "blocked"), None)
        result.update(verdict="block" if blocked else "allow", rail=None, reason=None)
        if blocked is not None:
            # The railstack rail that blocked, or else the config's own flow and its refusal.
            blocker = next((d for d in records if d["source"] == blocked and d["verdict"] == "block"), None)
            if blocker is not None:
                result.update(rail=blocker["rail"], reason=blocker["reason"])
            else:
                result.update(rail=stages[blocked]["rail"], reason=stages[blocked]["content"])
        return {**result, **stages, "decisions": records}

    async def _stages(self, messages: list[dict], answer: Optional[str]) -> dict[str, dict]:
        from nemoguardrails.rails.llm.options import RailType

        # NeMo runs its input rails on the conversation up to the last user turn (none at all on
        # one that ends with a tool result); railstack's rails read the whole of it (``derive``).
        last_user = max(i for i, m in enumerate(messages) if m.get("role") == "user")
        nemo = messages[: last_user + 1]
        reports: dict[str, dict] = {}
        if not self.rails.config.rails.input.flows:
            reports["input"] = {"status": "passed", "rail": None, "content": nemo[-1]["content"], "flows": []}
        else:
            reports["input"] = await self._input(messages, nemo)
        if answer is None:
            return reports
        if reports["input"]["status"] == "blocked":
            reports["output"] = {"status": "skipped", "flows": []}
        elif not self.rails.config.rails.output.flows:
            reports["output"] = {"status": "passed", "rail": None, "content": answer, "flows": []}
        else:
            reports["output"] = await self._nemo(nemo + [{"role": "assistant", "content": answer}], RailType.OUTPUT)
        return reports

    async def _input(self, messages: list[dict], nemo: list[dict]) -> dict:
        """Where the input flows are railstack's own, their rails run as railstack's HTTP layer runs
        them, before NeMo: a row they pass never reaches NeMo, and for one they block NeMo's flows
        only say the config's refusal from their decisions. Otherwise NeMo runs the flows."""
        from nemoguardrails.rails.llm.options import RailType

        from railstack.core.fields import input_check
        from railstack.core.request import derive
        from railstack.core.text import Unreadable

        decided = None
        if self.input_rails is not None and not self.runtime.unknown(self.input_rails):
            try:
                check = input_check(self.runtime, messages)
            except Unreadable:  # NeMo's flows refuse it with the reason
                check = None
            if check is not None:
                decided, blocker = await check(self.input_rails)
                if blocker is None:
                    return {"status": "passed", "rail": None, "content": nemo[-1]["content"], "flows": []}
        with derive(input_decisions=decided):
            return await self._nemo(nemo, RailType.INPUT)

    async def _nemo(self, messages: list[dict], rail_type: Any) -> dict:
        from nemoguardrails.rails.llm.options import RailStatus

        from railstack.nemo.compat import check_with_activated_rails

        checked, activated = await check_with_activated_rails(self.rails, messages, rail_type)
        status = "blocked" if checked.status == RailStatus.BLOCKED else checked.status.value
        # A flow of railstack's runs railstack rails, which their decision records name.
        flows = [name for kind, name, actions in activated if kind == rail_type.value and "railstack_rails" not in actions]
        return {"status": status, "rail": checked.rail, "content": checked.content, "flows": flows}


def _rails_ran(stages: dict[str, dict], records: list[dict]) -> None:
    """Each stage's ``ran``: the railstack rails that decided on it, then the config's own flows
    NeMo ran. A stage where none ran says so rather than "passed"."""
    for stage, report in stages.items():
        flows = report.pop("flows")
        ran = list(dict.fromkeys([d["rail"] for d in records if d["source"] == stage and d["verdict"] != "skipped"]))
        report["ran"] = ran + [f for f in flows if f not in ran]
        if report["ran"] or report["status"] == "skipped":
            continue
        skipped = [d["rail"] for d in records if d["source"] == stage and d["verdict"] == "skipped"]
        if skipped:
            report["status"] = (f"no {stage} rail ran: railstack check skips {', '.join(skipped)}, "
                                f"and no other {stage} rail is enabled in this config")
        else:
            report["status"] = f"no {stage} rail is enabled in this config"


def check_rows(
    config_dir: Path, rows: Iterable[dict], *, concurrency: int = 1, main_model_url: Optional[str] = None
) -> Iterator[dict]:
    """One result per row of ``rows``, in their order, from the config at ``config_dir`` loaded
    once: ``{"row", "id", "verdict", "rail", "reason", "input", "output" (with an answer),
    "decisions"}``, or ``{"row", "id", "error"}`` for a row that cannot be checked (a ``BadLine``,
    no ``text`` or ``messages``, wrong types, a request the server would refuse). Up to
    ``concurrency`` rows are checked at once. ``main_model_url`` is the main model of the rails
    that call it. Raises ``CannotLoad`` (``NeedsMainModel``) before the first result."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    with asyncio.Runner() as runner:
        checker = runner.run(_build(config_dir, main_model_url))
        try:
            yield from _results(runner, checker, rows, concurrency)
        finally:
            runner.run(checker.close())


def _results(runner: asyncio.Runner, checker: _Checker, rows: Iterable[dict], concurrency: int) -> Iterator[dict]:
    pending: collections.deque[asyncio.Task] = collections.deque()
    numbered = enumerate(rows)
    while True:
        for index, row in numbered:
            pending.append(runner.get_loop().create_task(checker.check(index, row)))
            if len(pending) >= concurrency:
                break
        if not pending:
            return
        yield runner.run(_result(pending.popleft()))


async def _build(config_dir: Path, main_model_url: Optional[str]) -> _Checker:
    return _Checker(config_dir, main_model_url)  # on the loop the rows run on: NeMo binds its locks and caches to it


async def _result(task: "asyncio.Task[dict]") -> dict:
    return await task
