"""runtime: onnx for Prompt Guard and the NLI model, on the tiny random-weight checkpoints: the same
windows scored as torch scores them, an export made once per checkpoint and exporter, and
refusals that name the setting to change."""

import asyncio
import shutil
import sys

import pytest
import torch

from railstack.engines import onnx
from railstack.engines.onnx import OnnxError, OnnxRunner, runtime_of
from railstack.engines.sequence import TorchRunner
from railstack.hallucination.nli import NLI
from railstack.hallucination.nli import engine_key as nli_key
from railstack.hallucination.settings import HallucinationSettings
from railstack.llama_guard.settings import LlamaGuardSettings
from railstack.prompt_guard.model import PromptGuard
from railstack.prompt_guard.model import engine_key as pg_key
from railstack.prompt_guard.settings import PromptGuardSettings
from railstack.settings import SettingsError, parse_settings
from tiny_models import SENTENCES, fnet_classifier, nli, prompt_guard, train_texts

# fp32 against fp32: the two runtimes' kernels round differently, ~1e-7 of a probability here.
FP32 = 1e-4
# int8 against torch fp32, in probability, for the tiny Prompt Guards: weights and activations
# rounded to 1/255 of their range move them by up to ~0.05 here (their logits are scaled up 50x, so
# a small logit error is a large probability one); scripts/bench_prompt_guard.py measures the
# real-size one. The tiny NLI model has no int8 bound: its head reads a direction in which its
# pairs barely differ, magnified by 1/spread, so any rounding of the body moves its verdicts
# (torch's own int8 too).
INT8 = 0.06
LONG = " ".join(train_texts(60))  # several 512-token windows
TEXTS = ["Hi", "What is the weather like in Paris today?", *SENTENCES[2:6], LONG]


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    where = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAILSTACK_CACHE_DIR", str(where))
        yield where


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return {"pg1": prompt_guard(base / "pg1", version=1), "pg2": prompt_guard(base / "pg2", version=2),
            "nli": nli(base / "nli")}


@pytest.fixture
def exports(monkeypatch):
    """How many times torch.onnx.export ran during the test."""
    calls = []
    real = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def guard(path, **settings) -> PromptGuard:
    return PromptGuard(PromptGuardSettings(model=str(path), device="cpu", cache_size=0, **settings))


def nli_engine(path, **settings) -> NLI:
    return NLI(HallucinationSettings(model=str(path), device="cpu", cache_size=0, **settings))


def scored(pg: PromptGuard) -> list[float]:
    """Each text's jailbreak and injection score and its number of windows, in one list."""
    async def all_at_once():  # one batcher: the texts' windows meet in batches of mixed lengths
        return await asyncio.gather(*(pg.scores(t) for t in TEXTS))

    return [x for s, _ in asyncio.run(all_at_once()) for x in (s.jailbreak, s.injection, s.windows)]


def entries(cache_dir) -> list:
    return sorted(p for p in (cache_dir / "onnx").iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("version", ["pg1", "pg2"])
def test_prompt_guard_on_onnx_scores_as_torch(checkpoints, version):
    reference = guard(checkpoints[version], runtime="torch", precision="fp32")
    assert isinstance(reference.runner, TorchRunner)
    expected = scored(reference)
    assert expected[-1] >= 3  # the long text is several windows
    for precision, tolerance in (("fp32", FP32), ("int8", INT8)):
        pg = guard(checkpoints[version], runtime="onnx", precision=precision)
        assert isinstance(pg.runner, OnnxRunner) and pg.precision == precision
        found = scored(pg)
        assert found[2::3] == expected[2::3]  # the same windows
        assert found == pytest.approx(expected, abs=tolerance)


def test_nli_on_onnx_scores_pairs_as_torch(checkpoints):
    premise = " ".join(SENTENCES * 8)  # several windows of the premise
    hypotheses = [SENTENCES[5], "Paris is in France.", SENTENCES[0] + " " + SENTENCES[9]]
    reference = nli_engine(checkpoints["nli"], runtime="torch", precision="fp32")
    assert len(reference.windows(reference.ids(premise), reference.ids(hypotheses[0]))) >= 3
    expected = asyncio.run(reference.support(premise, hypotheses))
    short = asyncio.run(reference.support(SENTENCES[3], hypotheses))
    engine = nli_engine(checkpoints["nli"], runtime="onnx", precision="fp32")
    assert isinstance(engine.runner, OnnxRunner)
    for found, wanted in ((asyncio.run(engine.support(premise, hypotheses)), expected),
                          (asyncio.run(engine.support(SENTENCES[3], hypotheses)), short)):
        for s, ref in zip(found, wanted):
            assert s.entailed == pytest.approx(ref.entailed, abs=FP32)
            assert s.contradicted == pytest.approx(ref.contradicted, abs=FP32)


def test_the_export_is_made_once_and_reused(checkpoints, cache_dir, exports):
    first = guard(checkpoints["pg2"], runtime="onnx", precision="fp32")
    made = len(exports)
    before = {p: (p / "model.onnx").stat().st_mtime_ns for p in entries(cache_dir)}
    again = guard(checkpoints["pg2"], runtime="onnx", precision="fp32")
    assert len(exports) == made  # no second export
    assert {p: (p / "model.onnx").stat().st_mtime_ns for p in entries(cache_dir)} == before
    assert scored(again) == scored(first)


def test_other_weights_are_another_entry(checkpoints, tmp_path, cache_dir, exports):
    from transformers import AutoModelForSequenceClassification

    guard(checkpoints["pg2"], runtime="onnx", precision="fp32")
    known = set(entries(cache_dir))
    changed = tmp_path / "changed"
    shutil.copytree(checkpoints["pg2"], changed)
    model = AutoModelForSequenceClassification.from_pretrained(changed)
    with torch.no_grad():
        model.classifier.bias[1] += 3.0
    model.save_pretrained(changed)
    made = len(exports)
    pg = guard(changed, runtime="onnx", precision="fp32")
    assert len(exports) == made + 1 and len(set(entries(cache_dir)) - known) == 1
    reference = guard(changed, runtime="torch", precision="fp32")
    assert scored(pg) == pytest.approx(scored(reference), abs=FP32)
    assert scored(pg) != pytest.approx(scored(guard(checkpoints["pg2"], runtime="onnx", precision="fp32")), abs=FP32)


@pytest.mark.parametrize("damage", ["truncate", "flip", "no manifest"])
def test_a_damaged_cache_entry_is_rebuilt_not_used(checkpoints, cache_dir, exports, damage):
    first = guard(checkpoints["pg1"], runtime="onnx", precision="fp32")
    expected, graph = scored(first), first.runner.graph
    entry = graph.parent
    data = graph.read_bytes()
    if damage == "truncate":
        graph.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # the size is right, the bytes are not: only the hash tells
        graph.write_bytes(data[:-100] + bytes(b ^ 0xFF for b in data[-100:]))
    else:
        (entry / onnx.MANIFEST).unlink()
    made = len(exports)
    rebuilt = guard(checkpoints["pg1"], runtime="onnx", precision="fp32")
    assert len(exports) == made + 1
    assert graph.read_bytes() == data  # the export is deterministic: the same graph again
    assert scored(rebuilt) == expected


def test_a_checkpoint_that_cannot_be_exported_is_a_startup_error_with_onnx_and_runs_on_torch_with_auto(tmp_path):
    path = fnet_classifier(tmp_path / "fnet")
    with pytest.raises(OnnxError) as caught:
        guard(path, runtime="onnx")
    message = str(caught.value)
    assert "prompt_guard.runtime: torch" in message and str(path) in message and "fft" in message
    # auto chose ONNX Runtime only for speed: that checkpoint runs on torch, as it would with runtime: torch.
    assert isinstance(guard(path).runner, TorchRunner)


def test_without_the_extra_onnx_is_refused_and_auto_runs_torch(checkpoints, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert not onnx.installed()
    with pytest.raises(OnnxError, match=r"hallucination.runtime: onnx needs the `onnx` extra .*railstack\[onnx\]"):
        nli_engine(checkpoints["nli"], runtime="onnx")
    assert isinstance(nli_engine(checkpoints["nli"]).runner, TorchRunner)


def test_auto_is_onnx_fp32_on_a_cpu_unless_the_precision_says(checkpoints):
    assert onnx.installed()
    pg = guard(checkpoints["pg2"])
    assert isinstance(pg.runner, OnnxRunner) and pg.precision == "fp32"
    assert guard(checkpoints["pg2"], precision="int8").precision == "int8"
    engine = nli_engine(checkpoints["nli"])
    assert isinstance(engine.runner, OnnxRunner) and engine.precision == "fp32"
    assert nli_engine(checkpoints["nli"], precision="int8").precision == "int8"
    assert runtime_of(PromptGuardSettings(model="m", device="cpu", precision="fp32")) == "onnx"
    assert runtime_of(PromptGuardSettings(model="m", device="cpu", precision="bf16")) == "torch"
    assert runtime_of(PromptGuardSettings(model="m", device="cpu", runtime="torch")) == "torch"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_with_onnx_is_a_settings_error(precision):
    with pytest.raises(SettingsError, match=rf"custom_data.railstack.prompt_guard: .*precision {precision} does not run "
                       "with runtime: onnx"):
        parse_settings({"railstack": {"prompt_guard": {"runtime": "onnx", "precision": precision}}})


def test_the_runtime_is_part_of_each_engine_and_llama_guard_has_none():
    assert pg_key(PromptGuardSettings(runtime="torch")) != pg_key(PromptGuardSettings(runtime="onnx"))
    assert nli_key(HallucinationSettings(runtime="torch")) != nli_key(HallucinationSettings(runtime="onnx"))
    with pytest.raises(SettingsError, match=r"llama_guard.runtime: unknown key"):
        parse_settings({"railstack": {"llama_guard": {"runtime": "onnx"}}})
    assert "runtime" not in LlamaGuardSettings.model_fields
