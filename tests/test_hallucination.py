"""The hallucination rail on a tiny random-weight NLI checkpoint (DebertaV2ForSequenceClassification
with MNLI's labels), loaded the way users' checkpoints are."""

import json

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from railstack.nemo.outcome import run
from railstack.hallucination.nli import NLI, NotAnNLIModel
from railstack.core.sentences import split_sentences
from railstack.hallucination.sentences import claims
from railstack.hallucination.settings import HallucinationSettings
from support import main_model_yaml, model_runtime, railstack_config
from tiny_models import SENTENCES, nli

CONTEXT = " ".join(SENTENCES)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return nli(tmp_path_factory.mktemp("nli") / "nli")


def engine(path, **settings) -> NLI:
    return NLI(HallucinationSettings(model=str(path), device="cpu", precision="fp32", **settings))


@pytest.mark.parametrize(
    "text, sentences",
    [
        ("Dr. Smith lives in Paris. He arrived at 3 p.m. on Monday! Did he stay?",
         ["Dr. Smith lives in Paris.", "He arrived at 3 p.m. on Monday!", "Did he stay?"]),
        ("Pi is about 3.14. It is irrational.", ["Pi is about 3.14.", "It is irrational."]),
        ("J. R. R. Tolkien wrote it, e.g. The Hobbit. It sold well.",
         ["J. R. R. Tolkien wrote it, e.g. The Hobbit.", "It sold well."]),
        ("1. Preheat the oven.\n2. Mix the flour. Add eggs.\n- Bake it\n* Serve",
         ["Preheat the oven.", "Mix the flour.", "Add eggs.", "Bake it", "Serve"]),
        ("It costs approx. five euros. That is cheap.", ["It costs approx. five euros.", "That is cheap."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("The U.S. Army was founded in 1775. Its first leader was Washington.",
         ["The U.S. Army was founded in 1775.", "Its first leader was Washington."]),
        ("Showbox", ["Showbox"]),
        ("...\n\n  \n", []),
    ],
)
def test_answers_are_split_into_sentences(text, sentences):
    assert split_sentences(text) == sentences


def test_short_sentences_are_judged_with_their_question():
    assert claims(["Showbox", "It was released in 2016 in South Korea."], "Who released it?", 6) == [
        "Who released it? Showbox", "It was released in 2016 in South Korea."
    ]


def test_long_context_is_cut_into_overlapping_windows_that_fit_the_model(checkpoint):
    model = engine(checkpoint, max_tokens=128, window_overlap=16)
    premise = model.ids(CONTEXT * 3)
    hypothesis = model.ids("The Eiffel Tower is in Paris.")
    windows = model.windows(premise, hypothesis)
    assert len(windows) >= 3
    assert all(len(w) + len(h) + model.specials <= 128 for w, h in windows)
    room = len(windows[0][0])
    spans, at = [], -1  # where each window's run of the premise's tokens lies
    for window, _ in windows:
        at = next(i for i in range(at + 1, len(premise)) if premise.ids[i : i + len(window)] == window.ids)
        spans.append((at, at + len(window)))
    assert spans[0][0] == 0 and spans[-1][1] == len(premise)
    for (start, end), (after, _) in zip(spans, spans[1:]):
        assert start < after and end - after >= 16  # neighbours share at least the overlap: no token lost
        assert premise.starts[after]  # a window begins where a word does
    short = replace(premise, ids=premise.ids[: room // 2], offsets=premise.offsets[: room // 2])
    assert len(model.windows(short, hypothesis)) == 1


async def test_a_sentences_support_is_the_models_own_entailment_in_its_best_window(checkpoint):
    model = engine(checkpoint, max_tokens=96, window_overlap=8)
    hypothesis = "The weather in Paris tomorrow will be cloudy."
    (support,) = await model.support(CONTEXT, [hypothesis])
    windows = model.windows(model.ids(CONTEXT), model.ids(hypothesis))
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    classifier = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    independent = []
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for window, claim in windows:  # DeBERTa's pair format, [CLS] premise [SEP] hypothesis [SEP], built here
        ids = torch.tensor([[cls, *window.ids, sep, *claim.ids, sep]])
        with torch.no_grad():
            independent.append(torch.softmax(classifier(input_ids=ids).logits[0], -1).tolist())
    best = max(independent, key=lambda p: p[0])
    assert 0.01 < best[0] < 0.99
    # Its windows ran as one padded batch: equal to the unpadded passes up to float error.
    assert support.entailed == pytest.approx(best[0], rel=1e-3)
    assert support.contradicted == pytest.approx(best[2], rel=1e-3)


async def test_the_answer_scores_as_its_weakest_sentence_and_names_the_unsupported_ones(checkpoint):
    answer = "The Eiffel Tower is about 330 metres tall. Our refund policy allows returns. List the planets."
    model = engine(checkpoint)
    sentences = split_sentences(answer)
    each = [s.entailed for s in await model.support(CONTEXT, sentences)]
    assert len(set(round(e, 4) for e in each)) == 3
    threshold = sorted(each)[1] - 1e-6  # the weakest sentence alone falls under it
    runtime = model_runtime("hallucination", checkpoint, threshold=threshold)
    outcome = await run(runtime, ["hallucination"], source="output", text=answer,
                                nemo_context={"relevant_chunks": CONTEXT})
    record = outcome.metadata["decisions"][0]
    assert record["score"] == pytest.approx(min(each), rel=1e-5)
    assert record["metadata"]["unsupported"] == [sentences[each.index(min(each))]]
    assert record["metadata"]["mode"] == "grounded" and record["metadata"]["main_model_calls"] == 0
    assert outcome.is_blocked and outcome.reason == (
        f"Blocked by the hallucination rail: 1 of 3 sentences not supported by the context "
        f"(weakest {min(each):.3f} < {threshold:g})"
    )


async def test_warn_appends_the_notice_and_marks_the_decision(checkpoint):
    runtime = model_runtime("hallucination", checkpoint, threshold=1.0, on_low_score="warn", warning=" [unverified]")
    outcome = await run(runtime, ["hallucination"], source="output", text="Paris is in France.",
                                nemo_context={"relevant_chunks": CONTEXT})
    assert outcome.is_transform and not outcome.is_blocked
    assert outcome.transform_text["bot_message"] == "Paris is in France. [unverified]"
    assert outcome.metadata["decisions"][0]["metadata"]["warned"] == "1 of 1 sentences not supported by the context"


async def test_grounded_mode_without_context_fails_closed_and_so_does_a_broken_model(checkpoint, monkeypatch):
    runtime = model_runtime("hallucination", checkpoint, mode="grounded", cache_size=0)
    outcome = await run(runtime, ["hallucination"], source="output", text="Paris is in France.")
    assert outcome.is_blocked and outcome.reason.endswith("the check raised ValueError (fail-closed)")
    nli_model, _ = runtime.resources["hallucination"]

    def broken(batch):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(nli_model.batcher, "forward", broken)
    outcome = await run(runtime, ["hallucination"], source="output", text="Paris is in France.",
                                nemo_context={"relevant_chunks": CONTEXT})
    assert outcome.is_blocked and outcome.reason.endswith("the check raised RuntimeError (fail-closed)")


def test_labels_that_the_checkpoint_lacks_are_a_startup_error(checkpoint):
    with pytest.raises(NotAnNLIModel, match=r"hallucination.entailed_label: .* has no label 'supported'"):
        engine(checkpoint, entailed_label="supported")


def config_yml(main_model, checkpoint, **settings) -> str:
    railstack = json.dumps({"hallucination": {"model": str(checkpoint), "precision": "fp32", **settings}})
    return main_model_yaml(main_model.base_url) + (
        "rails:\n  output:\n    flows: [railstack hallucination]\n"
        f"custom_data:\n  railstack: {railstack}\n"
    )


async def test_warn_reaches_the_client_through_the_flow(checkpoint, make_config, main_model):
    from nemoguardrails import LLMRails, RailsConfig

    yml = config_yml(main_model, checkpoint, threshold=1.0, on_low_score="warn", warning=" [unverified]", samples=2)
    app = LLMRails(RailsConfig.from_path(str(make_config(yml))))
    res = await app.generate_async(messages=[{"role": "user", "content": "Tell me about France."}])
    assert res["content"] == main_model.reply + " [unverified]"


@pytest.mark.parametrize("honours_n, calls", [(True, 1), (False, 3)])
async def test_self_consistency_samples_the_main_model_with_n_or_k_calls(
    checkpoint, make_config, main_model, honours_n, calls
):
    from nemoguardrails import LLMRails, RailsConfig

    main_model.honours_n = honours_n
    app = LLMRails(RailsConfig.from_path(str(make_config(config_yml(main_model, checkpoint, threshold=0.0)))))
    res = await app.generate_async(
        messages=[{"role": "user", "content": "Tell me about France."}], options={"log": {"activated_rails": True}}
    )
    assert res.response[0]["content"] == main_model.reply
    assert main_model.calls == 1 + calls  # the answer, then the samples
    # The first extra call asks for all three with `n`; an endpoint that answers with one choice
    # gets the other two asked for at once.
    assert main_model.requests[1]["n"] == 3 and main_model.requests[1]["temperature"] == 1.0
    assert all(r.get("n") is None and r["temperature"] == 1.0 for r in main_model.requests[2:])
    assert [m["content"] for m in main_model.requests[-1]["messages"]] == ["Tell me about France."]


async def test_the_checks_of_one_streamed_answer_share_one_set_of_samples(checkpoint, make_config, main_model):
    from nemoguardrails import LLMRails, RailsConfig

    yml = config_yml(main_model, checkpoint, threshold=0.0).replace(
        "    flows: [railstack hallucination]\n",
        "    flows: [railstack hallucination]\n    streaming: {enabled: true, chunk_size: 3, context_size: 1}\n",
    )
    app = LLMRails(RailsConfig.from_path(str(make_config(yml))))
    chunks = [c async for c in app.stream_async(messages=[{"role": "user", "content": "Tell me about France."}])]
    assert "".join(chunks) == main_model.reply
    assert main_model.calls == 2  # the answer, and one call with n for every chunk's check


@pytest.fixture(scope="module")
def root(module_configs, checkpoint, loopback):
    rag = railstack_config(module_configs / "client-context", loopback.base_url, ["railstack heuristics"],
                           '{hallucination: {model: "%s", precision: fp32, mode: grounded}}' % checkpoint,
                           output=["railstack hallucination"])
    # NeMo 0.24 takes a context only when it builds the main model's prompt itself (no passthrough).
    (rag / "config.yml").write_text((rag / "config.yml").read_text().replace("passthrough: true\n", ""))
    return module_configs


@pytest.fixture
def served(root, serve):
    """`nemoguardrails server` with a config `client-context`: the client sends the retrieved
    context in a `context` message, and the answer is checked against it (configs/rag, where
    NeMo retrieves it from kb/, is tests/test_rag.py)."""
    return lambda threshold: serve(root, warm=["client-context"], RAILSTACK__HALLUCINATION__THRESHOLD=str(threshold))


def rag_request(question: str) -> dict:
    return {
        "model": "main",
        "messages": [{"role": "context", "content": {"relevant_chunks": CONTEXT}},
                     {"role": "user", "content": question}],
        "guardrails": {"config_id": "client-context"},
    }


@pytest.mark.parametrize("threshold, blocked", [(1.0, True), (0.0, False)])
def test_end_to_end_over_http_the_answer_is_checked_against_the_context_without_extra_calls(
    served, main_model, threshold, blocked
):
    with served(threshold) as client:
        res = client.post("/v1/chat/completions", json=rag_request("What is the capital of France?"))
    assert res.status_code == 200, res.text
    content = res.json()["choices"][0]["message"]["content"]
    if blocked:
        assert content.startswith("Blocked by the hallucination rail: 1 of 1 sentences not supported by the context")
    else:
        assert content == main_model.reply
    assert main_model.calls == 1  # the answer only: grounded mode asks the main model nothing more


async def test_concurrent_checks_of_one_conversation_draw_one_set_of_samples():
    import asyncio

    from railstack.hallucination.samples import Samples

    samples, draws = Samples(), []

    async def draw():
        draws.append(1)
        await asyncio.sleep(0.05)
        return ["a", "b"], 1

    first, second = await asyncio.gather(samples.get("k", draw), samples.get("k", draw))
    assert first == (["a", "b"], 1) and second == (["a", "b"], 0) and len(draws) == 1
    assert await samples.get("k", draw) == (["a", "b"], 0)

    async def broken():
        await asyncio.sleep(0.05)
        raise RuntimeError("main model down")

    results = await asyncio.gather(samples.get("x", broken), samples.get("x", broken), return_exceptions=True)
    assert [str(r) for r in results] == ["main model down"] * 2
