"""The ``railstack`` command.

``railstack profile CONFIG_DIR`` measures the config's whole stack: see ``railstack.tools.profile``.

``railstack check CONFIG_DIR --text "..." [--answer "..."]`` or ``--file rows.jsonl`` runs a
config's input rails (and output rails on an answer) through NeMo as the server would, but never
has the main model answer (rails that call it themselves get it: ``--main-model-url``): see
``railstack.tools.check``. ``--text`` prints its one result as JSON
(exit status 0 allowed, 1 blocked); ``--file`` one JSON line per row (exit status 0 when every
row was checked, blocked ones included). Either: 3 when a row could not be checked, 2 bad usage
or a config that does not load.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Optional, TextIO

UNCHECKED = 3  # the exit status when some row could not be checked


def main(argv: Optional[list[str]] = None) -> int:
    os.environ.setdefault("NEMO_GUARDRAILS_NO_USAGE_STATS", "1")
    parser = argparse.ArgumentParser(prog="railstack", description="railstack tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="run a config's rails on a text without the main model answering")
    p_check.add_argument("config_dir", type=Path)
    given = p_check.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", help="the user message to check")
    given.add_argument("--file", help="JSON Lines of rows ({\"text\" or \"messages\", \"answer\", \"id\"}), - for stdin")
    p_check.add_argument("--answer", help="with --text: a bot answer to check with the output rails")
    p_check.add_argument("--concurrency", type=int, default=1, help="with --file: rows checked at once (order kept)")
    p_check.add_argument("--main-model-url", help="for rails that call the main model (NeMo's self checks): its "
                         "OpenAI-compatible base URL (default: MAIN_MODEL_BASE_URL, else the config's); never asked for an answer")
    p_check.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                         help="with --file: a progress bar on stderr (auto: when stderr is a terminal)")
    p_serve = sub.add_parser("serve", help="nemoguardrails server with railstack's HTTP layer, for a config dir or a root")
    p_serve.add_argument("config_dir", type=Path, help="a config dir, or a directory of config dirs")
    p_serve.add_argument("--port", type=int, default=8080)
    p_serve.add_argument("--default-config-id", help="the config of requests that name none")
    p_serve.add_argument("--no-stand-in", dest="stand_in", action="store_false",
                         help="never start the loopback stand-in main model (by default it starts when "
                         "MAIN_MODEL_BASE_URL is unset and nothing answers at the configs' base_url)")
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
            return serve(args.config_dir, args.port, args.default_config_id, args.stand_in)
        except (CannotServe, FileNotFoundError, NotADirectoryError) as exc:
            print(f"railstack: cannot serve {args.config_dir}: {exc}", file=sys.stderr)
            return 2
    if args.command == "profile":
        if not (args.config_dir / "config.yml").is_file() and not (args.config_dir / "config.yaml").is_file():
            print(f"railstack: {args.config_dir} is not a config dir (no config.yml)", file=sys.stderr)
            return 2
        return _profile(args)
    return _check(args)


def _check(args: argparse.Namespace) -> int:
    from railstack.tools.check import CannotLoad, check_rows, read_rows

    if args.answer is not None and args.text is None:
        print("railstack: --answer goes with --text (in a --file, a row's \"answer\")", file=sys.stderr)
        return 2
    if args.concurrency < 1:
        print("railstack: --concurrency must be at least 1", file=sys.stderr)
        return 2
    try:
        with _rows_file(args.file) as lines:
            rows = [{"text": args.text, "answer": args.answer}] if args.text is not None else read_rows(lines)
            checked = check_rows(args.config_dir, rows, concurrency=args.concurrency, main_model_url=args.main_model_url)
            with contextlib.closing(checked) as results:
                if args.text is not None:
                    return _print_one(next(results))
                return _print_rows(results, args.progress, _count(args.file))
    except CannotLoad as exc:
        print(f"railstack: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"railstack: cannot read {args.file}: {exc.strerror or exc}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _rows_file(name: Optional[str]) -> Iterator[Optional[TextIO]]:
    # Bytes that are not UTF-8 become lone surrogates, which a row's checks refuse: that row
    # gets its error, and the rows after it are still read.
    if name is None:
        yield None
    elif name == "-":
        if not hasattr(sys.stdin, "buffer"):  # already text (a test's, an embedding program's)
            yield sys.stdin
            return
        wrapper = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape")
        try:
            yield wrapper
        finally:
            wrapper.detach()  # stdin stays open
    else:
        with open(name, encoding="utf-8", errors="surrogateescape") as f:
            yield f


def _count(name: Optional[str]) -> Optional[int]:
    """The rows of a file, for the progress bar's total (stdin: unknown)."""
    if name is None or name == "-":
        return None
    with open(name, "rb") as f:
        return sum(1 for line in f if line.strip())


def _print_one(result: dict) -> int:
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return UNCHECKED if "error" in result else 1 if result["verdict"] == "block" else 0


def _print_rows(results: Iterator[dict], progress: str, total: Optional[int]) -> int:
    from tqdm import tqdm

    unchecked = 0
    # disable=None: tqdm draws only on a terminal.
    disable = {"auto": None, "on": False, "off": True}[progress]
    with tqdm(total=total, unit="row", file=sys.stderr, disable=disable, dynamic_ncols=True) as bar:
        for result in results:
            unchecked += "error" in result
            print(json.dumps(result, ensure_ascii=False), flush=True)
            bar.update()
            bar.set_postfix(unchecked=unchecked, refresh=False)
    if unchecked:
        print(f"railstack: {unchecked} row(s) could not be checked (their lines say why)", file=sys.stderr)
        return UNCHECKED
    return 0


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
