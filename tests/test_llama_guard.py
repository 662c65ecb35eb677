"""Llama Guard 3/4 and ShieldGemma on tiny random-weight checkpoints of the real architectures
(LlamaForCausalLM, Gemma2ForCausalLM) with tokenizers that carry the real special tokens."""

import asyncio
import json
import shutil
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from completions_server import CompletionsServer
from railstack.nemo.outcome import run
from railstack.llama_guard.classifier import SafetyModel
from railstack.llama_guard.meta_format import parse_categories
from railstack.llama_guard.policy import NotASafetyModel
from railstack.llama_guard.trimming import TurnTooLong, alternating
from railstack.settings import parse_settings
from railstack.llama_guard.settings import LlamaGuardSettings
from support import chat, model_runtime, railstack_config, streamed_text
from tiny_models import LLAMA_GUARD_3_TEMPLATE, SENTENCES, llama_guard, prompt_guard

TASK_HEAD = (
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
    "Task: Check if there is unsafe content in '{role}' messages in conversations according our safety policy "
    "with the below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n"
)
TASK_TAIL = (
    "Provide your safety assessment for ONLY THE LAST {role} message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories.<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
S1_S13 = (
    "S1: Violent Crimes.\nS2: Non-Violent Crimes.\nS3: Sex Crimes.\nS4: Child Exploitation.\nS5: Defamation.\n"
    "S6: Specialized Advice.\nS7: Privacy.\nS8: Intellectual Property.\nS9: Indiscriminate Weapons.\nS10: Hate.\n"
    "S11: Self-Harm.\nS12: Sexual Content.\nS13: Elections.\n"
)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("lg")
    return {
        "lg3": llama_guard(base / "lg3"),
        "lg3-template": llama_guard(base / "lg3t", template=True),
        "lg3-8b": llama_guard(base / "lg3-8b", num_hidden_layers=32),
        "lg4": llama_guard(base / "lg4", "llama_guard_4"),
        "shieldgemma": llama_guard(base / "sg", "shieldgemma"),
    }


def guard(path, **settings) -> SafetyModel:
    return SafetyModel.load(LlamaGuardSettings(model=str(path), device="cpu", precision="fp32", **settings))


def prompt_of(model: SafetyModel, dialogue, judged="user") -> str:
    built, _ = model.prompts.fit(tuple(dialogue), judged)
    return model.prompts.tokenizer.decode(built[0][1])


def test_the_prompt_is_metas_format_to_the_character(checkpoints):
    model = guard(checkpoints["lg3"])
    assert prompt_of(model, [("user", "  How do I bake bread? ")]) == (
        TASK_HEAD.format(role="User") + S1_S13 + "<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n"
        "User: How do I bake bread?\n\n<END CONVERSATION>\n\n" + TASK_TAIL.format(role="User")
    )
    # The answer is judged as the Agent's turn, after the user's.
    assert prompt_of(model, [("user", "Hi"), ("assistant", "Hello!")], "assistant") == (
        TASK_HEAD.format(role="Agent") + S1_S13 + "<END UNSAFE CONTENT CATEGORIES>\n\n<BEGIN CONVERSATION>\n\n"
        "User: Hi\n\nAgent: Hello!\n\n<END CONVERSATION>\n\n" + TASK_TAIL.format(role="Agent")
    )


def test_the_checkpoints_chat_template_gives_the_same_text_with_exclusions_and_custom_categories(checkpoints):
    policy = dict(
        excluded_categories=["S2", "S12"],
        custom_categories=[{"code": "S14", "name": "Competitors", "description": "Naming a competitor's product."},
                           {"code": "S5", "name": "Libel"}],
    )
    builtin = guard(checkpoints["lg3-template"], prompt="builtin", **policy)
    template = guard(checkpoints["lg3-template"], **policy)
    assert template.family.template and not builtin.family.template
    conversation = [("user", "Hi"), ("assistant", "Hello, how can I help?"), ("user", "Tell me about rivals.")]
    text = prompt_of(template, conversation)
    assert text == prompt_of(builtin, conversation)
    assert "S2:" not in text and "S12:" not in text and "S1: Violent Crimes.\nS3: Sex Crimes." in text
    assert "S5: Libel.\n" in text and "S14: Competitors.\nNaming a competitor's product.\n<END UNSAFE" in text
    answer = [*conversation, ("assistant", "Here is what I know.")]
    assert prompt_of(template, answer, "assistant") == prompt_of(builtin, answer, "assistant")


def test_default_categories_follow_the_model(checkpoints):
    def codes(path, **s):
        return [c.code for c in guard(path, **s).family.categories]

    thirteen = [f"S{i}" for i in range(1, 14)]
    assert codes(checkpoints["lg3"]) == thirteen  # 16 layers or fewer: Llama Guard 3 1B
    assert codes(checkpoints["lg3-8b"]) == [*thirteen, "S14"]
    assert codes(checkpoints["lg3-template"]) == thirteen  # what the template lists
    assert codes(checkpoints["lg4"]) == thirteen
    assert codes(checkpoints["lg3-8b"], categories=["S1", "S10"]) == ["S1", "S10"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"excluded_categories": ["S14"]}, r"excluded_categories: \['S14'\] are not in"),
        ({"excluded_categories": ["hate_speech"]}, r"excluded_categories: \['hate_speech'\] are not in"),
        ({"custom_categories": [{"code": "competitors", "name": "Competitors"}]}, "codes are S1, S2, ...: \\['competitors'\\]"),
        ({"categories": ["S99"]}, r"categories: \['S99'\] are not in"),
        ({"categories": ["S1"], "excluded_categories": ["S1"]}, "every category is excluded"),
    ],
)
def test_a_policy_that_does_not_fit_the_model_is_a_startup_error(checkpoints, settings, message):
    with pytest.raises(NotASafetyModel, match=message):
        guard(checkpoints["lg3"], **settings)


def test_a_wrong_category_key_is_a_settings_error():
    from railstack.settings import SettingsError

    with pytest.raises(SettingsError, match="llama_guard.excluded_categories"):
        parse_settings({"railstack": {"llama_guard": {"excluded_categories": ["S1,S2"]}}})


def test_the_decision_position_comes_from_the_template(checkpoints, tmp_path):
    model = guard(checkpoints["lg3-template"])
    tokenizer = model.prompts.tokenizer
    assert model.family.lead == ""
    assert tuple(model.prompts.encoder.answer) == tuple(tokenizer.convert_tokens_to_ids(["unsafe", "safe"]))
    # A template whose generation prompt stops at the header leaves the separator to the model:
    # it is appended, so the score is still read where the answer word starts.
    short = tmp_path / "short"
    shutil.copytree(checkpoints["lg3-template"], short)
    config = json.loads((short / "tokenizer_config.json").read_text())
    config["chat_template"] = LLAMA_GUARD_3_TEMPLATE.replace("<|end_header_id|>\\n\\n\" -}}", "<|end_header_id|>\" -}}")
    assert config["chat_template"] != LLAMA_GUARD_3_TEMPLATE
    (short / "tokenizer_config.json").write_text(json.dumps(config))
    (short / "chat_template.jinja").unlink(missing_ok=True)
    shortened = guard(short)
    assert shortened.family.template and shortened.family.lead == "\n\n"
    assert prompt_of(shortened, [("user", "Hi")]) == prompt_of(model, [("user", "Hi")])


def independent_p_unsafe(path, text: str, pairwise=False) -> float:
    """Without railstack: the checkpoint's softmax at the last position of the prompt text."""
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    words = ["Yes", "No"] if pairwise else ["unsafe", "safe"]
    unsafe, safe = tokenizer.convert_tokens_to_ids(words)
    if pairwise:
        return torch.softmax(logits[[safe, unsafe]], dim=-1)[1].item()
    return torch.softmax(logits, dim=-1)[unsafe].item()


@pytest.mark.parametrize("which", ["lg3", "lg4"])
async def test_the_score_is_the_models_own_probability_of_unsafe(checkpoints, which):
    model = guard(checkpoints[which])
    dialogue = (("user", SENTENCES[2]),)
    found = await model.assess(dialogue, "user")
    expected = independent_p_unsafe(checkpoints[which], prompt_of(model, dialogue))
    assert 0.01 < expected < 0.99  # a probability that tells texts apart, not a saturated one
    assert found.score == pytest.approx(expected, rel=1e-4)


async def test_shieldgemma_scores_yes_against_no_for_each_harm_type(checkpoints):
    model = guard(checkpoints["shieldgemma"])
    dialogue = (("user", SENTENCES[7]),)
    built, _ = model.prompts.fit(dialogue, "user")
    assert [code for code, _ in built] == ["dangerous_content", "harassment", "hate_speech", "sexually_explicit"]
    first = model.prompts.tokenizer.decode(built[0][1])
    assert first.startswith("<bos><start_of_turn>user\nYou are a policy expert trying to help determine whether a user")
    assert f"Human Question: {SENTENCES[7]}" in first and '* "No Dangerous Content": The prompt shall not' in first
    assert first.endswith("answer correctly.<end_of_turn>\n<start_of_turn>model\n")
    each = [independent_p_unsafe(checkpoints["shieldgemma"], model.prompts.tokenizer.decode(ids), pairwise=True)
            for _, ids in built]
    found = await model.assess(dialogue, "user")
    assert found.score == pytest.approx(max(each), rel=1e-4)
    fewer = guard(checkpoints["shieldgemma"], excluded_categories=["harassment"])
    assert [code for code, _ in fewer.prompts.fit(dialogue, "user")[0]] == ["dangerous_content", "hate_speech",
                                                                       "sexually_explicit"]
    over = guard(checkpoints["shieldgemma"], threshold=sorted(each)[1] + 1e-6)
    flagged = (await over.assess(dialogue, "user")).categories
    assert [code for code, _ in flagged] == [code for (code, _), p in zip(built, each) if p > sorted(each)[1]]


def test_batched_scores_equal_one_at_a_time(checkpoints):
    model = guard(checkpoints["lg3"])
    rows = [model.prompts.fit(((("user", t)),), "user")[0][0][1] for t in ["Hi", SENTENCES[0], " ".join(SENTENCES[:4])]]
    assert len({len(r) for r in rows}) == 3  # different lengths: left padding in the batch
    batched = model.engine.forward([(r, 1.0) for r in rows])
    for row, (score, _) in zip(rows, batched):
        assert score == pytest.approx(model.engine.forward([(row, 1.0)])[0][0], rel=1e-4)


@pytest.mark.parametrize("which", ["lg3", "lg3-template"])
def test_the_policy_prefix_cache_gives_the_scores_of_whole_prompts(checkpoints, which):
    reused, whole = guard(checkpoints[which]), guard(checkpoints[which], reuse_policy_prefix=False)
    assert len(reused.engine.prefixes) == 2 and not whole.engine.prefixes  # one per judged role
    for prefix in reused.engine.prefixes:  # the task and the policy, up to the first turn's text
        text = reused.prompts.tokenizer.decode(prefix)
        assert "<END UNSAFE CONTENT CATEGORIES>" in text and text.endswith("<BEGIN CONVERSATION>\n\nUser:")
    rows = [reused.prompts.fit(d, judged)[0][0][1] for d, judged in [
        ((("user", "Hi"),), "user"),
        ((("user", " ".join(SENTENCES[:5])),), "user"),
        ((("user", "Hi"), ("assistant", SENTENCES[3])), "assistant"),
        ((("user", "Hi"), ("assistant", "Hello!"), ("user", SENTENCES[9])), "user"),
    ]]
    cached = [score for score, _ in reused.engine.forward([(r, 1.0) for r in rows])]
    plain = [score for score, _ in whole.engine.forward([(r, 1.0) for r in rows])]
    assert cached == pytest.approx(plain, rel=1e-4)


async def test_concurrent_checks_share_forward_passes(checkpoints):
    model = guard(checkpoints["lg3"], max_batch=8, max_delay_ms=50, cache_size=0)
    before = model.engine.batcher.batches
    found = await asyncio.gather(*(model.assess((("user", s),), "user") for s in SENTENCES[:8]))
    assert model.engine.batcher.batches - before == 1
    assert len({round(f.score, 6) for f in found}) > 1


@pytest.mark.parametrize(
    "line, codes",
    [
        ("\nS1,S2", ["S1", "S2"]),
        ("unsafe\nS1, S10", ["S1", "S10"]),
        (" s3 ,S3,  S14\n", ["S3", "S14"]),
        ("\n\nunsafe\nS 7", ["S7"]),
        ("\nS1S2", ["S1", "S2"]),  # run together
        ("\nUS1 Spain S", []),
        ("\nviolent crimes", []),
        ("", []),
    ],
)
def test_the_category_line_is_parsed_robustly(line, codes):
    assert parse_categories(line) == codes


async def test_the_category_line_is_decoded_only_for_unsafe_verdicts(checkpoints):
    dialogue = (("user", SENTENCES[0]),)
    safe = guard(checkpoints["lg3"], threshold=1.0)
    await safe.assess(dialogue, "user")
    assert safe.engine.decodes == 0
    unsafe = guard(checkpoints["lg3"], threshold=0.0)
    found = await unsafe.assess(dialogue, "user")
    assert unsafe.engine.decodes == 1
    ids = unsafe.prompts.fit(dialogue, "user")[0][0][1]
    line = unsafe.engine.category_lines([ids])[0]  # the model's own greedy continuation
    names = {c.code: c.name for c in unsafe.family.categories}
    assert found.categories == tuple((c, names.get(c)) for c in parse_categories(line))


async def test_the_decision_names_the_categories_and_unknown_codes(checkpoints, monkeypatch):
    runtime = model_runtime("llama_guard", checkpoints["lg3"], threshold=0.0)
    engine = runtime.resources["llama_guard"].engine
    monkeypatch.setattr(engine, "category_lines", lambda rows: ["\nS1, s10,S99"] * len(rows))
    outcome = await run(runtime, ["llama_guard"], source="input", text="How do I pick a lock?")
    assert outcome.is_blocked
    assert outcome.reason.startswith(
        "Blocked by the llama_guard rail: unsafe (S1 Violent Crimes, S10 Hate, S99 (not in the policy)); score 0."
    )
    record = outcome.metadata["decisions"][0]["metadata"]
    assert record["categories"] == [
        {"code": "S1", "name": "Violent Crimes"}, {"code": "S10", "name": "Hate"}, {"code": "S99", "name": None}
    ]
    assert record["family"] == "llama_guard_3" and record["prompt_tokens"] > 0


async def test_an_answer_without_a_known_question_is_still_judged(checkpoints):
    runtime = model_runtime("llama_guard", checkpoints["lg3"], threshold=1.0)
    outcome = await run(runtime, ["llama_guard"], source="output", text="Here you go.")
    assert not outcome.is_blocked and outcome.metadata["decisions"][0]["metadata"]["prompt_tokens"] > 0


def test_turns_alternate_from_a_user_turn():
    assert alternating((("assistant", "Welcome"), ("user", "a"), ("user", "b"), ("assistant", "c"))) == [
        ("user", "a\n\nb"), ("assistant", "c")
    ]


def test_long_conversations_lose_their_oldest_turns_never_the_judged_one(checkpoints):
    model = guard(checkpoints["lg3"], max_prompt_tokens=900)
    history = [("user" if i % 2 == 0 else "assistant", SENTENCES[i % len(SENTENCES)]) for i in range(30)]
    judged = " ".join(SENTENCES[:3])
    built, dropped = model.prompts.fit((*history, ("user", judged)), "user")
    text = model.prompts.tokenizer.decode(built[0][1])
    assert 0 < dropped < 30 and dropped % 2 == 0
    assert len(built[0][1]) <= 900
    assert f"User: {judged}\n\n<END CONVERSATION>" in text
    assert "<BEGIN CONVERSATION>\n\nUser: " in text  # still starts with a user turn
    with pytest.raises(TurnTooLong, match="over max_prompt_tokens 900"):
        model.prompts.fit((("user", " ".join(SENTENCES * 4)),), "user")
    # On the output the answer is judged; a long question before it loses its start instead.
    answer = [("user", " ".join(SENTENCES * 4)), ("assistant", "Sure.")]
    built, _ = model.prompts.fit(tuple(answer), "assistant")
    assert len(built[0][1]) <= 900 and "Agent: Sure.\n\n<END CONVERSATION>" in model.prompts.tokenizer.decode(built[0][1])


async def test_a_judged_turn_too_long_for_the_model_fails_closed_with_the_reason(checkpoints):
    runtime = model_runtime("llama_guard", checkpoints["lg3"], max_prompt_tokens=600)
    outcome = await run(runtime, ["llama_guard"], source="input", text=" ".join(SENTENCES * 4))
    assert outcome.is_blocked and outcome.reason == "Blocked by the llama_guard rail: the check raised TurnTooLong (fail-closed)"


async def test_the_rail_fails_closed_when_the_model_raises_or_is_too_slow(checkpoints, monkeypatch):
    runtime = model_runtime("llama_guard", checkpoints["lg3"], timeout_s=0.3, cache_size=0)
    engine = runtime.resources["llama_guard"].engine

    def broken(batch):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr(engine.batcher, "forward", broken)
    outcome = await run(runtime, ["llama_guard"], source="input", text="Hello")
    assert outcome.is_blocked and outcome.reason.endswith("the check raised RuntimeError (fail-closed)")

    def slow(batch):
        time.sleep(1.0)
        return [(0.0, None)] * len(batch)

    monkeypatch.setattr(engine.batcher, "forward", slow)
    outcome = await run(runtime, ["llama_guard"], source="input", text="Hello again")
    assert outcome.is_blocked and outcome.reason.endswith("did not finish within 0.3 s (fail-closed)")


def test_a_checkpoint_that_is_not_a_safety_model_is_refused_by_name(tmp_path):
    path = prompt_guard(tmp_path / "pg")
    with pytest.raises(NotASafetyModel, match="has none of the special tokens of Llama Guard 3"):
        guard(path)


def test_a_missing_model_is_a_startup_error_that_says_how_to_provide_it(tmp_path):
    with pytest.raises(RuntimeError, match=r"llama_guard: cannot load model '.*nowhere' \(a local directory\)"):
        guard(tmp_path / "nowhere")


@pytest.fixture(scope="module")
def completions(checkpoints):
    server = CompletionsServer(str(checkpoints["lg3"])).start()
    yield server
    server.stop()


@pytest.mark.parametrize("threshold", [1.0, 0.0])
async def test_the_remote_engine_reads_the_same_score_from_a_completions_servers_logprobs(
    checkpoints, completions, threshold
):
    local = guard(checkpoints["lg3"], threshold=threshold)
    remote = guard(checkpoints["lg3"], threshold=threshold, engine="remote",
                   remote={"base_url": completions.base_url, "served_model": "guard"})
    dialogue = (("user", "Hi"), ("assistant", "Hello!"), ("user", SENTENCES[4]))
    before = len(completions.requests)
    near, far = await local.assess(dialogue, "user"), await remote.assess(dialogue, "user")
    assert far.score == pytest.approx(near.score, rel=1e-3)
    assert far.categories == near.categories  # the same greedy category line, when unsafe
    sent = completions.requests[before:]
    assert sent[0]["prompt"] == list(local.prompts.fit(dialogue, "user")[0][0][1])  # token ids: no second BOS
    assert sent[0]["logprobs"] == 20 and sent[0]["temperature"] == 0


async def test_the_remote_engine_fails_closed_when_the_server_is_gone_or_wrong(checkpoints, completions):
    from support import free_port

    gone = model_runtime("llama_guard", checkpoints["lg3"], engine="remote",
                         remote={"base_url": f"http://127.0.0.1:{free_port()}/v1"})
    outcome = await run(gone, ["llama_guard"], source="input", text="Hello")
    assert outcome.is_blocked and outcome.reason.endswith("(fail-closed)")
    wrong = model_runtime("llama_guard", checkpoints["lg3"], engine="remote",
                          remote={"base_url": completions.base_url, "served_model": "x"})
    outcome = await run(wrong, ["llama_guard"], source="input", text="Hello")
    assert outcome.is_blocked and outcome.reason.endswith("raised NotFoundError (fail-closed)")


@pytest.fixture(scope="module")
def root(module_configs, checkpoints, loopback):
    settings = '{llama_guard: {model: "%s", precision: fp32, cache_size: 0}}' % checkpoints["lg3"]
    streaming = "{enabled: true, chunk_size: 200}"
    railstack_config(module_configs / "lg", loopback.base_url, ["railstack heuristics", "railstack llama guard"], settings,
                     output=["railstack llama guard output"], streaming=streaming)
    railstack_config(module_configs / "lg-out", loopback.base_url, [], settings,
                     output=["railstack llama guard output"], streaming=streaming)
    return module_configs


@pytest.fixture
def served(root, serve):
    """`nemoguardrails server` over a configs dir with config `lg` (heuristics and Llama Guard on
    the input, Llama Guard on the answer) and `lg-out` (Llama Guard on the answer only), both
    with streaming output rails."""
    return lambda threshold: serve(root, warm=["lg", "lg-out"], RAILSTACK__LLAMA_GUARD__THRESHOLD=str(threshold))


@pytest.mark.parametrize("stream", [False, True])
def test_end_to_end_over_http_the_input_check_blocks_before_the_main_model(served, main_model, stream):
    with served(0.0) as client:
        res = client.post("/v1/chat/completions", json=chat("lg", "What is the capital of France?", stream=stream))
    assert res.status_code == 200
    assert "Blocked by the llama_guard rail: unsafe (" in res.text
    assert res.headers["x-railstack-decisions"] == "heuristics=allow,llama_guard=block"
    assert main_model.calls == 0


@pytest.mark.parametrize("stream", [False, True])
def test_end_to_end_over_http_an_unsafe_answer_never_reaches_the_client(served, main_model, stream):
    with served(0.0) as client:
        res = client.post("/v1/chat/completions", json=chat("lg-out", "What is the capital of France?", stream=stream))
    assert main_model.calls == 1
    assert "Paris" not in res.text
    if stream:
        assert "content_blocked" in res.text and streamed_text(res, errors=True) == ""
    else:
        assert res.json()["choices"][0]["message"]["content"].startswith("Blocked by the llama_guard rail: unsafe (")


@pytest.mark.parametrize("stream", [False, True])
def test_end_to_end_over_http_a_passing_exchange_reaches_the_client(served, main_model, stream):
    with served(1.0) as client:
        res = client.post("/v1/chat/completions", json=chat("lg", "What is the capital of France?", stream=stream))
    assert res.status_code == 200 and main_model.calls == 1
    assert res.headers["x-railstack-decisions"].startswith("heuristics=allow,llama_guard=allow")
    if stream:
        assert streamed_text(res) == main_model.reply
    else:
        assert res.json()["choices"][0]["message"]["content"] == main_model.reply


@pytest.mark.parametrize("threshold", [0.0, 1.0])
async def test_answers_are_judged_and_a_streamed_one_never_leaks_or_is_judged_twice(
    checkpoints, make_config, main_model, threshold
):
    from nemoguardrails import LLMRails, RailsConfig

    from railstack.core import collect_decisions
    from support import main_model_yaml

    yml = main_model_yaml(main_model.base_url) + (
        "rails:\n  output:\n    flows: [railstack llama guard output]\n"
        "    streaming: {enabled: true, chunk_size: 200}\n"
        f"custom_data:\n  railstack:\n    llama_guard: {{model: \"{checkpoints['lg3']}\", precision: fp32, "
        f"cache_size: 0, threshold: {threshold}}}\n"
    )
    app = LLMRails(RailsConfig.from_path(str(make_config(yml))))
    assert app.config.rails.output.streaming.stream_first is False  # railstack turned it off
    res = await app.generate_async(messages=[{"role": "user", "content": "Hi"}])
    blocked = threshold == 0.0
    assert res["content"].startswith("Blocked by the llama_guard rail: unsafe (") == blocked
    with collect_decisions() as decisions:
        chunks = [c async for c in app.stream_async(messages=[{"role": "user", "content": "Hi"}])]
        await asyncio.sleep(0.2)  # NeMo's generation task ends after the stream
    if blocked:
        (frame,) = chunks  # the error frame alone: no chunk of the answer went out
        assert json.loads(frame)["error"]["code"] == "content_blocked"
    else:
        assert "".join(chunks) == main_model.reply
    # The one streamed chunk was judged; the check NeMo repeats on the whole answer was skipped.
    assert [d.rail for d in decisions] == ["llama_guard"]


def test_stream_first_stays_as_a_config_sets_it(make_config, main_model):
    from nemoguardrails import LLMRails, RailsConfig

    from support import main_model_yaml

    yml = main_model_yaml(main_model.base_url) + (
        "rails:\n  output:\n    flows: [railstack heuristics output]\n"
        "    streaming: {enabled: true, stream_first: true}\n"
        "custom_data: {railstack: {}}\n"
    )
    app = LLMRails(RailsConfig.from_path(str(make_config(yml))))
    assert app.config.rails.output.streaming.stream_first is True
