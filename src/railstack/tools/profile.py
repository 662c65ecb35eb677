"""``railstack profile CONFIG_DIR``: the latency of a config's whole guardrail stack.

A real ``nemoguardrails server`` serves the config (with railstack's HTTP layer) against a
loopback main model of the given time to first token and inter-token latency; N prompts are
sent at the given concurrency, each as its own client, after one unmeasured warm-up request
(NeMo builds a config's rails on its first). Reported: per rail p50/p95/p99 (from
the responses' ``Server-Timing``), the whole request's, the blocked share, and the time to
the first streamed token without and with speculative start, and the time budget of a request
(mean milliseconds per tier and the rest); written as JSON and a PNG chart that states the load,
the simulated main model and whether weights were random. Percentiles a sample cannot support
are left out (``MIN_SAMPLES``).
With ``--random-weights``, model rails whose weights are not at hand run on random-weight
checkpoints of the configured architectures: the timing is real, the verdicts are not (the
report says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Optional

SELF_CHECK_QUESTION = "(Yes or No)"  # as the prompts of NeMo's self checks end their question


def load_prompts(path: Optional[Path], n: int) -> list[str]:
    """``n`` prompts: the file's (one per line, or JSON lines with a "text" field), else the shared
    evaluation sets next to the repo, else built-in ones; cycled to ``n``."""
    texts: list[str] = []
    sources = [path] if path else [
        Path.cwd().parent / "shared" / "data" / name for name in ("safety_eval.jsonl", "injection_eval.jsonl")
    ]
    for source in sources:
        if source is None or not source.is_file():
            if path is not None:
                raise FileNotFoundError(f"no prompts file {path}")
            continue
        for line in source.read_text(encoding="utf-8").split("\n"):  # not splitlines: texts hold U+2028
            line = line.strip()
            if line:
                texts.append(json.loads(line)["text"] if line.startswith("{") else line)
    if not texts:
        from railstack.tools.random_models import SENTENCES

        texts = list(SENTENCES)
    if path is None and len(texts) > n:  # both sets, interleaved, for a mix of passing and blocked
        step = len(texts) // n
        texts = texts[::step]
    return [texts[i % len(texts)] for i in range(n)]


# A percentile is reported only when the sample can put a value above it: pq needs n >= 1/(1-q).
# Below that, p95 and p99 are the sample's maximum, and read as tails they are not.
MIN_SAMPLES = {"p95": 20, "p99": 100}
PERCENTILE_RULE = "p95 shown from n >= 20, p99 from n >= 100"


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    out = {"n": len(ordered), "p50": statistics.median(ordered)}
    for name, q in (("p95", 0.95), ("p99", 0.99)):
        if len(ordered) >= MIN_SAMPLES[name]:
            out[name] = at(q)
    return out


# Where a request's time goes, in the chart's order; the last is the request's time no rail
# accounts for: the main model's answer, and NeMo's and the HTTP layer's own work.
BUDGET = ("admission", "cheap", "embedding", "classifiers", "other rails", "main model + NeMo, HTTP")
# strict: a segment without a colour would drop out of the chart's stacked bar unseen.
_COLOURS = dict(zip(BUDGET, ("#8172b3", "#55a868", "#dd8452", "#c44e52", "#937860", "#b0b0b0"), strict=True))
_SEGMENTS = {"ADMISSION": "admission", "CHEAP": "cheap", "EMBEDDING": "embedding", "SMALL_CLASSIFIER": "classifiers",
             "LARGE_CLASSIFIER": "classifiers"}


def _segment(timing: str) -> str:
    """The budget segment of a ``Server-Timing`` name (``input.heuristics``): its rail's tier."""
    from railstack.core import registry

    declared = registry.get(timing.partition(".")[2])
    return _SEGMENTS.get(declared.tier.name, "other rails") if declared is not None else "other rails"


def budget(results: list[dict]) -> dict[str, Any]:
    """The mean milliseconds of a request in each budget segment, over the requests that were
    not blocked (they reach the main model; all of them when every one was blocked). Means, so
    that the segments add up to the mean request; rails of one tier are summed."""
    passing = [r for r in results if not r["blocked"]]
    measured = passing or results
    totals = dict.fromkeys(BUDGET, 0.0)
    for r in measured:
        for timing, ms in r["timings_ms"].items():
            totals[_segment(timing)] += ms
        totals[BUDGET[-1]] += max(0.0, 1000 * r["seconds"] - sum(r["timings_ms"].values()))
    n = max(len(measured), 1)
    return {"requests": len(measured), "of": "passing" if passing else "blocked (none passed)",
            "mean_ms": {k: v / n for k, v in totals.items()}}


def stand_ins(config_dir: Path, where: Path, tiny: bool) -> dict[str, str]:
    """Environment overrides that point each enabled model rail whose weights cannot be loaded
    at a random-weight checkpoint of its architecture (the stand-in the rail declares)."""
    from transformers import AutoConfig

    from railstack.core import registry
    from railstack.nemo.flows import load_config, rails_named_in_flows
    from railstack.settings import parse_settings

    config = load_config(config_dir)
    settings = parse_settings(config.custom_data)
    env = {}
    for name in rails_named_in_flows(config):
        declared = registry.get(name)
        if declared is None or declared.model is None or not settings.enabled(name):
            continue
        section = getattr(settings, declared.model.section)
        try:
            AutoConfig.from_pretrained(section.model)
        except (OSError, ValueError):
            print(f"profile: {name}: no weights for {section.model!r}; building a random-weight stand-in", file=sys.stderr)
            built = declared.model.stand_in(section, where / name, tiny)
            env[f"RAILSTACK__{declared.model.section.upper()}__MODEL"] = str(built)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(root: Path, env: dict[str, str], log: Path) -> Iterator[str]:
    """`nemoguardrails server --config root` on a free loopback port; yields its URL."""
    import httpx

    port = _free_port()
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nemoguardrails", "server", "--config", str(root), "--port", str(port)],
            env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                last = [line for line in log.read_text().splitlines() if line.strip()][-3:]
                raise RuntimeError(
                    f"the server exited ({proc.returncode}); its log: {log}\n  " + "\n  ".join(last)
                    + "\n(model weights missing? --random-weights times random-weight stand-ins instead)"
                )
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/v1/rails/configs", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start in 300 s; its log: {log}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _timings(header: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, rest = part.partition(";dur=")
        with contextlib.suppress(ValueError):
            out[name] = float(rest)
    return out


async def _drive(url: str, config_id: str, prompts: list[str], concurrency: int, stream: bool) -> list[dict]:
    """Send every prompt (each as its own client) and measure it."""
    import httpx

    gate = asyncio.Semaphore(concurrency)

    async def one(i: int, text: str, client: httpx.AsyncClient) -> dict:
        body = {"model": "main", "messages": [{"role": "user", "content": text}], "stream": stream,
                "guardrails": {"config_id": config_id}}
        async with gate:
            start = time.perf_counter()
            first: Optional[float] = None
            chunks = []
            async with client.stream("POST", f"{url}/v1/chat/completions", json=body,
                                     headers={"x-client-id": f"profile-{i}"}) as res:
                async for piece in res.aiter_text():
                    if first is None and piece.strip():
                        first = time.perf_counter() - start
                    chunks.append(piece)
            total = time.perf_counter() - start
        text_out = "".join(chunks)
        decisions = res.headers.get("x-railstack-decisions", "")
        blocked = res.status_code != 200 or "=block" in decisions or "content_blocked" in text_out
        return {"status": res.status_code, "seconds": total, "first_byte_s": first, "blocked": blocked,
                "timings_ms": _timings(res.headers.get("server-timing", "")), "decisions": decisions}

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=concurrency * 2)) as client:
        return list(await asyncio.gather(*(one(i, t, client) for i, t in enumerate(prompts))))


def _summary(results: list[dict]) -> dict[str, Any]:
    per_rail: dict[str, list[float]] = {}
    for r in results:
        for rail, ms in r["timings_ms"].items():
            per_rail.setdefault(rail, []).append(ms)
    return {
        "requests": len(results),
        "blocked_share": sum(r["blocked"] for r in results) / max(len(results), 1),
        "statuses": {str(s): sum(r["status"] == s for r in results) for s in sorted({r["status"] for r in results})},
        "request_ms": percentiles([1000 * r["seconds"] for r in results]),
        "rails_ms": {rail: percentiles(values) for rail, values in sorted(per_rail.items())},
        "budget": budget(results),
    }


def profile(
    config_dir: Path, *, requests: int, concurrency: int, prompts_file: Optional[Path], ttft: float, itl: float,
    answer_words: int, speculative: str, random_weights: bool, out: Path, tiny_stand_ins: bool = False,
) -> dict[str, Any]:
    """Serve ``config_dir`` and measure it (see the module docstring); ``tiny_stand_ins`` shrinks the
    random-weight stand-ins to test size, keeping their architecture."""
    from railstack.tools.loopback import LoopbackModel

    config_dir = config_dir.resolve()  # its name is the config id, also for "."
    out.mkdir(parents=True, exist_ok=True)
    prompts = load_prompts(prompts_file, requests)
    reply = " ".join(f"word{i}" for i in range(answer_words))
    # NeMo's self checks ask the main model a Yes/No question: answered "No", they pass, and a
    # config's requests are measured through them rather than refused by them.
    main = LoopbackModel(reply=reply, replies={SELF_CHECK_QUESTION: "No"}, latency_s=ttft, token_delay_s=itl).start()
    report: dict[str, Any] = {
        "config": str(config_dir),
        "main_model": {"ttft_s": ttft, "itl_s": itl, "answer_words": answer_words, "self_checks": "answered No"},
        "load": {"requests": requests, "concurrency": concurrency}, "percentile_rule": PERCENTILE_RULE,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="railstack-profile-") as tmp:
            root = Path(tmp) / "configs"
            shutil.copytree(config_dir, root / config_dir.name, ignore=shutil.ignore_patterns("__pycache__"))
            (root / "config.py").write_text("from railstack.http.install import init  # noqa: F401\n")
            env = {"NEMO_GUARDRAILS_NO_USAGE_STATS": "1", "MAIN_MODEL_BASE_URL": main.base_url}
            stand_in_env = stand_ins(root / config_dir.name, Path(tmp) / "stand-ins", tiny_stand_ins) if random_weights else {}
            report["random_weights"] = sorted(k.split("__")[1].lower() for k in stand_in_env)
            if stand_in_env:
                report["warning"] = "random-weight stand-ins: the timings are real, the verdicts meaningless"
            env.update(stand_in_env)
            modes = {"both": [False, True], "on": [True], "off": [False]}[speculative]
            log = out / "server.log"
            for on in modes:
                mode_env = {**env, "RAILSTACK__LATENCY__SPECULATIVE_START": json.dumps(on)}
                with serving(root, mode_env, log) as url:
                    name = "speculative" if on else "plain"
                    # NeMo builds a config's rails on its first request: that one is not measured.
                    asyncio.run(_drive(url, config_dir.name, prompts[:1], 1, False))
                    if not on or len(modes) == 1:
                        report["requests"] = _summary(asyncio.run(_drive(url, config_dir.name, prompts, concurrency, False)))
                    calls, abandoned, wasted = main.calls, main.abandoned, main.abandoned_tokens
                    streamed = asyncio.run(_drive(url, config_dir.name, prompts, concurrency, True))
                    passing = [r for r in streamed if not r["blocked"]]
                    checks = sum(SELF_CHECK_QUESTION in json.dumps(body) for body in main.requests[calls:])
                    answers = main.calls - calls - checks
                    report.setdefault("ttft_ms", {})[name] = {
                        "passing": percentiles([1000 * r["first_byte_s"] for r in passing if r["first_byte_s"]]),
                        "blocked_share": 1 - len(passing) / max(len(streamed), 1),
                        "main_model_calls": answers,
                        "self_check_calls": checks,
                        # Started for requests that were then blocked: the price of speculating.
                        "wasted_main_model_calls": answers - len(passing),
                        "abandoned_answers": main.abandoned - abandoned,
                        "wasted_tokens": main.abandoned_tokens - wasted,
                    }
    finally:
        main.stop()
    (out / "profile.json").write_text(json.dumps(report, indent=2))
    chart(report, out / "profile.png")
    return report


def _facts(report: dict[str, Any]) -> str:
    """The conditions of the measurement, as the chart states them."""
    main, load = report["main_model"], report["load"]
    random = report.get("random_weights") or []
    weights = f"RANDOM weights for {', '.join(random)} (timings real, verdicts meaningless)" if random else "real weights"
    return (f"{load['requests']} requests per phase at concurrency {load['concurrency']}; simulated main model: "
            f"TTFT {1000 * main['ttft_s']:.0f} ms, ITL {1000 * main['itl_s']:.0f} ms, {main['answer_words']} words\n"
            f"{weights}; {report['percentile_rule']}")


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"


def chart(report: dict[str, Any], path: Path) -> Optional[Path]:
    """Per-rail and whole-request percentiles, time to first token per mode, and the time budget
    of a request (a stacked bar), as a PNG that states how it was measured."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("profile: matplotlib is not installed (pip install 'railstack[profile]'): no chart", file=sys.stderr)
        return None
    rows = dict(report.get("requests", {}).get("rails_ms", {}))
    rows["whole request"] = report.get("requests", {}).get("request_ms", {})
    rows.update({f"TTFT {mode}": t["passing"] for mode, t in report.get("ttft_ms", {}).items()})
    rows = {k: v for k, v in rows.items() if v.get("n")}
    names = [f"{k} (n={v['n']})" for k, v in rows.items()]
    fig, (ax, budget_ax) = plt.subplots(
        2, 1, figsize=(10, 0.6 * len(rows) + 4.5), gridspec_kw={"height_ratios": [max(len(rows), 1), 1.6]}
    )
    shown = [(q, colour) for q, colour in (("p50", "#4c72b0"), ("p95", "#dd8452"), ("p99", "#c44e52"))
             if any(q in v for v in rows.values())]
    height = 0.8 / max(len(shown), 1)
    for offset, (q, colour) in enumerate(shown):
        ys = [i + (offset - (len(shown) - 1) / 2) * height for i in range(len(rows))]
        bars = ax.barh(ys, [v.get(q, 0) for v in rows.values()], height=height, label=q, color=colour)
        ax.bar_label(bars, labels=[_ms(v[q]) if q in v else "" for v in rows.values()], padding=3, fontsize=8)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(0, max([v.get(q, 0) for v in rows.values() for q, _ in shown] or [1]) * 4)
    ax.set_xlabel("milliseconds (log scale above 1 ms)")
    title = f"railstack profile: {Path(report['config']).name}\n{_facts(report)}"
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper right")  # the top rows are the cheapest rails: short bars
    spent = report.get("requests", {}).get("budget")
    if spent:
        left = 0.0
        for segment, ms in spent["mean_ms"].items():
            if not ms:  # a tier the config has no rail of
                continue
            bar = budget_ax.barh([0], [ms], left=left, color=_COLOURS[segment], label=f"{segment}: {_ms(ms)} ms")
            if ms > 0.06 * sum(spent["mean_ms"].values()):
                budget_ax.bar_label(bar, labels=[_ms(ms)], label_type="center", fontsize=8)
            left += ms
        budget_ax.set_yticks([])
        budget_ax.set_xlabel("milliseconds (linear)")
        budget_ax.set_title(f"time budget: mean of {spent['requests']} {spent['of'].split(' ')[0]} requests "
                            f"({left:.1f} ms in all)", fontsize=9)
        budget_ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=3, fontsize=8, frameon=False)
    else:
        budget_ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def print_report(report: dict[str, Any]) -> None:
    def row(name: str, p: dict) -> str:
        if not p.get("n"):
            return f"  {name:32s} {'-':>8s}"
        cells = " ".join(f"{p[q]:8.2f}" if q in p else f"{'-':>8s}" for q in ("p50", "p95", "p99"))
        return f"  {name:32s} {cells}  n={p['n']}"

    if report.get("warning"):
        print(f"NOTE: {report['warning']} ({', '.join(report['random_weights'])})")
    summary = report.get("requests", {})
    print(f"{'ms':>34s} {'p50':>8s} {'p95':>8s} {'p99':>8s}")
    for rail, p in summary.get("rails_ms", {}).items():
        print(row(rail, p))
    print(row("whole request", summary.get("request_ms", {})))
    print(f"  blocked: {100 * summary.get('blocked_share', 0):.1f}% of {summary.get('requests', 0)}; "
          f"statuses {summary.get('statuses', {})}; {report['percentile_rule']}")
    if summary.get("budget"):
        spent = summary["budget"]
        print(f"  time budget (mean ms of {spent['requests']} {spent['of']} requests): "
              + ", ".join(f"{k} {v:.1f}" for k, v in spent["mean_ms"].items()))
    for mode, t in report.get("ttft_ms", {}).items():
        print(row(f"TTFT {mode} (passing)", t["passing"])
              + f"  main-model answers {t['main_model_calls']}, on blocked requests {t['wasted_main_model_calls']} "
              f"({t['wasted_tokens']} tokens streamed for nothing); self-check calls {t['self_check_calls']}")
