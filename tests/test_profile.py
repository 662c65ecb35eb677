"""`railstack profile` as users run it: a real server, the loopback main model, JSON and a chart."""

import json
import os
import subprocess
import sys

import pytest

from railstack.paths import config_dir

pytestmark = pytest.mark.slow  # each runs `railstack profile`: a server process, dozens of requests


def run_profile(config, out, *extra, env=None):
    return subprocess.run(
        [sys.executable, "-m", "railstack.tools.cli", "profile", str(config), "--requests", "6", "--concurrency", "2",
         "--ttft", "0.05", "--itl", "0", "--answer-words", "5", "--out", str(out), *extra],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NEMO_GUARDRAILS_NO_USAGE_STATS": "1", **(env or {})},
    )


def test_profile_of_the_no_models_config_reports_every_rail_and_both_ttfts(tmp_path):
    done = run_profile(config_dir("no-models"), tmp_path / "out")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert report["random_weights"] == [] and "warning" not in report
    summary = report["requests"]
    assert summary["requests"] == 6 and set(summary["rails_ms"]) == {
        "input.admission", "input.heuristics", "output.exfiltration"
    }
    for p in [*summary["rails_ms"].values(), summary["request_ms"]]:
        assert p["n"] == 6
    # A request's time (the client's clock) includes each of its rails' (the server's timing):
    # so does each percentile of the one include the other's.
    for p in summary["rails_ms"].values():
        assert p["p50"] <= summary["request_ms"]["p50"]
    # Six samples support a median, not a tail: p95 and p99 would be the maximum.
    assert all(set(p) == {"n", "p50"} for p in [*summary["rails_ms"].values(), summary["request_ms"]])
    assert report["load"] == {"requests": 6, "concurrency": 2} and report["main_model"]["ttft_s"] == 0.05
    spent = summary["budget"]
    passing = round(6 * (1 - summary["blocked_share"]))
    assert spent["requests"] == passing and list(spent["mean_ms"]) == [
        "admission", "cheap", "embedding", "classifiers", "other rails", "main model + NeMo, HTTP"
    ]
    assert spent["mean_ms"]["cheap"] > 0 and spent["mean_ms"]["classifiers"] == 0
    assert spent["mean_ms"]["main model + NeMo, HTTP"] >= 50  # the main model's time to first token is in it
    # The same prompts are blocked whether answered whole or streamed, in either mode.
    shares = [report["ttft_ms"][mode]["blocked_share"] for mode in ("plain", "speculative")]
    assert shares == [pytest.approx(summary["blocked_share"])] * 2
    for mode in ("plain", "speculative"):
        ttft = report["ttft_ms"][mode]
        assert ttft["passing"]["p50"] >= 50  # the main model's own time to first token
        assert ttft["main_model_calls"] == ttft["passing"]["n"]  # no speculative tier here: nothing wasted
    assert (tmp_path / "out" / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "TTFT speculative (passing)" in done.stdout and "p95 shown from n >= 20, p99 from n >= 100" in done.stdout


@pytest.mark.parametrize("n, shown", [(19, {"n", "p50"}), (20, {"n", "p50", "p95"}), (100, {"n", "p50", "p95", "p99"})])
def test_percentiles_the_sample_cannot_support_are_left_out(n, shown):
    from railstack.tools.profile import percentiles

    got = percentiles([float(i) for i in range(n)])
    assert set(got) == shown and got["p50"] == (n - 1) / 2
    if "p99" in got:
        assert got["p95"] == 95.0 and got["p99"] == 99.0


def with_prompt_guard(tmp_path, settings: str):
    """The no-models config with Prompt Guard added after the heuristics, set as ``settings``."""
    config = tmp_path / "pg"
    config.mkdir()
    (config / "config.yml").write_text(
        (config_dir("no-models") / "config.yml").read_text().replace(
            "      - railstack heuristics\n", "      - railstack heuristics\n      - railstack prompt guard\n"
        ) + f"    prompt_guard: {settings}\n"
    )
    (config / "config.py").write_text("from railstack.nemo import init  # noqa: F401\n")
    return config


def test_model_rails_without_weights_run_on_labelled_random_weight_stand_ins(tmp_path, monkeypatch, capsys):
    from railstack.tools.profile import print_report, profile

    config = with_prompt_guard(tmp_path, "{model: meta-llama/Llama-Prompt-Guard-2-22M, precision: fp32}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # In-process, to build the stand-in at test size (the CLI builds the real size).
    profile(config, requests=6, concurrency=2, prompts_file=None, ttft=0.05, itl=0, answer_words=5, speculative="off",
            random_weights=True, out=tmp_path / "out", tiny_stand_ins=True)
    report = json.loads((tmp_path / "out" / "profile.json").read_text())
    print_report(report)
    assert report["random_weights"] == ["prompt_guard"]
    assert report["warning"] == "random-weight stand-ins: the timings are real, the verdicts meaningless"
    assert "input.prompt_guard" in report["requests"]["rails_ms"]
    assert list(report["ttft_ms"]) == ["plain"]
    assert capsys.readouterr().out.startswith("NOTE: random-weight stand-ins")


def test_a_config_without_weights_is_refused_with_the_way_out(tmp_path):
    config = with_prompt_guard(tmp_path, "{model: /nowhere/pg}")
    done = run_profile(config, tmp_path / "out", "--speculative", "off")
    assert done.returncode == 2
    assert "the server exited" in done.stderr and "server.log" in done.stderr
    assert "prompt_guard: cannot load model '/nowhere/pg'" in done.stderr
    assert "--random-weights times random-weight stand-ins instead" in done.stderr


def test_the_budget_bar_stacks_every_segment_the_request_spent_time_in(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from railstack.tools.profile import BUDGET, chart

    drawn = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: drawn.append(fig))
    spent = dict(zip(BUDGET, (0.04, 0.4, 3.0, 20.0, 1.0, 365.0)))
    report = {
        "config": "configs/x", "main_model": {"ttft_s": 0.3, "itl_s": 0.02, "answer_words": 30},
        "load": {"requests": 20, "concurrency": 4}, "percentile_rule": "p95 shown from n >= 20",
        "requests": {"rails_ms": {"input.heuristics": {"n": 20, "p50": 0.2}}, "request_ms": {"n": 20, "p50": 390.0},
                     "budget": {"requests": 17, "of": "passing", "mean_ms": spent}},
    }
    chart(report, tmp_path / "p.png")
    budget_ax = drawn[0].axes[1]
    # Each segment once, in order, end to end: the main model's share too.
    assert [p.get_width() for p in budget_ax.patches] == pytest.approx(list(spent.values()))
    assert [t.get_text() for t in budget_ax.get_legend().get_texts()][-1].startswith("main model + NeMo, HTTP: 365")
    assert budget_ax.patches[-1].get_x() == pytest.approx(sum(list(spent.values())[:-1]))
