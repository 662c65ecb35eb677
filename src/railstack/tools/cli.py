"""The ``railstack`` command.

``railstack profile CONFIG_DIR`` measures the config's whole stack: see ``railstack.tools.profile``.

``railstack check CONFIG_DIR --text "..." [--answer "..."]`` runs a config's input rails on
the text (and, with ``--answer``, its output rails on the answer) through NeMo, exactly as
the server would, but never calls the main model. It prints JSON: every railstack rail's
decision record and the final verdict. Exit status: 0 allowed, 1 blocked, 2 bad usage or
config.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Optional


class _NoMainModel:
    """Stands where the main model would be: ``check`` must never reach it."""

    model_name = "railstack-check"
    provider_name = None
    provider_url = None

    async def generate_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> Any:
        raise RuntimeError("railstack check never calls the main model")

    async def stream_async(self, prompt: Any, *, stop: Optional[list] = None, **kwargs: Any) -> AsyncIterator[Any]:
        raise RuntimeError("railstack check never calls the main model")
        yield  # pragma: no cover - makes this an async generator


async def check(config_dir: Path, text: str, answer: Optional[str]) -> dict[str, Any]:
    from nemoguardrails import LLMRails, RailsConfig
    from nemoguardrails.rails.llm.options import RailStatus, RailType

    from railstack.core import collect_decisions

    config = RailsConfig.from_path(str(config_dir))
    # The configured main model is never called here, so it is not built either.
    config.models = [m for m in config.models if m.type != "main"]
    rails = LLMRails(config, llm=_NoMainModel())
    messages = [{"role": "user", "content": text}]
    report: dict[str, Any] = {"config": str(config_dir)}
    stages = [("input", RailType.INPUT, messages)]
    if answer is not None:
        stages.append(("output", RailType.OUTPUT, messages + [{"role": "assistant", "content": answer}]))
    blocked = False
    with collect_decisions() as decisions:
        for stage, rail_type, stage_messages in stages:
            if not _has_flows(rails, stage):
                report[stage] = {"status": "no rails configured"}
                continue
            result = await rails.check_async(stage_messages, rail_types=[rail_type])
            report[stage] = {"status": result.status.value, "rail": result.rail, "content": result.content}
            blocked |= result.status == RailStatus.BLOCKED
            if blocked:
                break
    report["decisions"] = [d.as_dict() for d in decisions]
    report["verdict"] = "block" if blocked else "allow"
    return report


def _has_flows(rails: Any, stage: str) -> bool:
    return bool(getattr(rails.config.rails, stage).flows)


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")
    parser = argparse.ArgumentParser(prog="railstack", description="railstack tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="run a config's rails on a text without calling the main model")
    p_check.add_argument("config_dir", type=Path)
    p_check.add_argument("--text", required=True, help="the user message to check")
    p_check.add_argument("--answer", help="a bot answer to check with the output rails")
    p_serve = sub.add_parser("serve", help="nemoguardrails server with railstack's HTTP layer, for a config dir or a root")
    p_serve.add_argument("config_dir", type=Path, help="a config dir, or a directory of config dirs")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument("--default-config-id", help="the config of requests that name none")
    p_profile = sub.add_parser("profile", help="latency of every rail and of the whole request, TTFT, chart")
    p_profile.add_argument("config_dir", type=Path)
    p_profile.add_argument("--requests", type=int, default=50, help="prompts sent (per phase)")
    p_profile.add_argument("--concurrency", type=int, default=4)
    p_profile.add_argument("--prompts", type=Path, help="one prompt per line, or JSON lines with a 'text' field "
                           "(default: ../shared/data's safety and injection sets, else built-in prompts)")
    p_profile.add_argument("--ttft", type=float, default=0.3, help="the loopback main model's time to first token, s")
    p_profile.add_argument("--itl", type=float, default=0.02, help="its inter-token latency, s")
    p_profile.add_argument("--answer-words", type=int, default=30)
    p_profile.add_argument("--speculative", choices=["both", "on", "off"], default="both",
                           help="time to first token with speculative start off, on, or both")
    p_profile.add_argument("--random-weights", action="store_true",
                           help="model rails without weights run on random-weight stand-ins (timing only)")
    p_profile.add_argument("--out", type=Path, default=Path("railstack-profile"), help="where profile.json/png go")
    args = parser.parse_args(argv)

    if args.command == "serve":
        from railstack.tools.serve import CannotServe, serve

        try:
            return serve(args.config_dir, args.port, args.default_config_id)
        except (CannotServe, FileNotFoundError, NotADirectoryError) as exc:
            print(f"railstack: cannot serve {args.config_dir}: {exc}", file=sys.stderr)
            return 2
    if not (args.config_dir / "config.yml").is_file() and not (args.config_dir / "config.yaml").is_file():
        print(f"railstack: {args.config_dir} is not a config dir (no config.yml)", file=sys.stderr)
        return 2
    if args.command == "profile":
        return _profile(args)
    try:
        report = asyncio.run(check(args.config_dir, args.text, args.answer))
    except Exception as exc:  # noqa: BLE001 - a broken config is reported, not traced
        cause = exc.__cause__ or exc
        print(f"railstack: cannot load {args.config_dir}: {cause}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 1 if report["verdict"] == "block" else 0


def _profile(args: argparse.Namespace) -> int:
    from railstack.tools.profile import print_report, profile

    if args.requests < 1 or args.concurrency < 1:
        print("railstack: --requests and --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        report = profile(
            args.config_dir, requests=args.requests, concurrency=args.concurrency, prompts_file=args.prompts,
            ttft=args.ttft, itl=args.itl, answer_words=args.answer_words, speculative=args.speculative,
            random_weights=args.random_weights, out=args.out,
        )
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"railstack: {exc}", file=sys.stderr)
        return 2
    print_report(report)
    print(f"written: {args.out / 'profile.json'}, {args.out / 'profile.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
