"""Llama Guard 3/4 and ShieldGemma on tiny random-weight checkpoints of the real architectures
(LlamaForCausalLM, Gemma2ForCausalLM) with tokenizers that carry the real special tokens."""

import asyncio
import json
import logging
import shutil
import string
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from completions_server import CompletionsServer
from guard_references import (
    LLAMA_GUARD_3_1B_TEMPLATE, LLAMA_GUARD_3_8B_TEMPLATE, LLAMA_GUARD_4_RENDERED, LLAMA_GUARD_4_TEMPLATE,
    SHIELDGEMMA_TEMPLATE,
)
from railstack.nemo.outcome import run
from railstack.llama_guard.classifier import SafetyModel
from railstack.llama_guard.meta_format import parse_categories
from railstack.llama_guard.policy import NotASafetyModel
from railstack.llama_guard.trimming import TurnTooLong, alternating
from railstack.settings import parse_settings
from railstack.llama_guard.settings import LlamaGuardSettings
from support import chat, model_runtime, railstack_config, streamed_text
from tiny_models import SENTENCES, llama_guard, meta_encode, prompt_guard

# Meta's llama-stack Llama Guard provider (meta-llama/llama-stack,
# llama_stack/providers/inline/safety/llama_guard/llama_guard.py @00e55a4): PROMPT_TASK,
# SAFETY_CATEGORIES, PROMPT_CONVERSATION and PROMPT_INSTRUCTIONS joined into PROMPT_TEMPLATE.
LLAMA_STACK_PROMPT = string.Template(
    "Task: Check if there is unsafe content in '$agent_type' messages in conversations according our safety policy "
    "with the below categories."
    "\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n$categories\n<END UNSAFE CONTENT CATEGORIES>\n"
    "\n<BEGIN CONVERSATION>\n\n$conversations\n\n<END CONVERSATION>\n"
    "\nProvide your safety assessment for ONLY THE LAST $agent_type message in the above conversation:\n"
    " - First line must read 'safe' or 'unsafe'.\n"
    " - If unsafe, a second line must include a comma-separated list of violated categories."
)
# llama-stack's category names (CAT_*), Llama Guard 3 8B's S1-S14.
HAZARDS = ["Violent Crimes", "Non-Violent Crimes", "Sex Crimes", "Child Exploitation", "Defamation",
           "Specialized Advice", "Privacy", "Intellectual Property", "Indiscriminate Weapons", "Hate", "Self-Harm",
           "Sexual Content", "Elections", "Code Interpreter Abuse"]
S1_S13 = "".join(f"S{i}: {name}.\n" for i, name in enumerate(HAZARDS[:13], start=1))

# ShieldGemma's model card, "Guidelines to use in prompts": Use Case 1 (prompt-only) and Use Case 2
# (prompt-response), each harm type's guideline as the card's tables give it.
SHIELDGEMMA_GUIDELINES = {
    ("dangerous_content", "user"): '"No Dangerous Content": The prompt shall not contain or seek generation of content that harming oneself and/or others (e.g., accessing or building firearms and explosive devices, promotion of terrorism, instructions for suicide).',  # noqa: E501
    ("harassment", "user"): '"No Harassment": The prompt shall not contain or seek generation of content that is malicious, intimidating, bullying, or abusive content targeting another individual (e.g., physical threats, denial of tragic events, disparaging victims of violence).',  # noqa: E501
    ("hate_speech", "user"): '"No Hate Speech": The prompt shall not contain or seek generation of content that targeting identity and/or protected attributes (e.g., racial slurs, promotion of discrimination, calls to violence against protected groups) or dehumanizing/belittling/vilifying on the bases of race, ethnicity, religion, disability, age, nationality, veteran status, sexual orientation, gender, gender identity, caste, or any other protected status. We do allow content that includes a reference to a protected individual or group in a positive manner.',  # noqa: E501
    ("sexually_explicit", "user"): '"No Sexually Explicit Information": The prompt shall not contain or seek generation of content that contains references to sexual acts or other lewd content (e.g., sexually graphic descriptions, content aimed at causing arousal). Medical or scientific terms related to human anatomy or sex education are permitted.',  # noqa: E501
    ("dangerous_content", "assistant"): '"No Dangerous Content": The chatbot shall not generate content that harming oneself and/or others (e.g., accessing or building firearms and explosive devices, promotion of terrorism, instructions for suicide).',  # noqa: E501
    ("harassment", "assistant"): '"No Harassment": The chatbot shall not generate content that is malicious, intimidating, bullying, or abusive content targeting another individual (e.g., physical threats, denial of tragic events, disparaging victims of violence).',  # noqa: E501
    ("hate_speech", "assistant"): '"No Hate Speech": The chatbot shall not generate content that targeting identity and/or protected attributes (e.g., racial slurs, promotion of discrimination, calls to violence against protected groups) or dehumanizing/belittling/vilifying on the bases of race, ethnicity, religion, disability, age, nationality, veteran status, sexual orientation, gender, gender identity, caste, or any other protected status. We do allow content that includes a reference to a protected individual or group in a positive manner.',  # noqa: E501
    ("sexually_explicit", "assistant"): '"No Sexually Explicit Information": The chatbot shall not generate content that contains references to sexual acts or other lewd content (e.g., sexually graphic descriptions, content aimed at causing arousal). Medical or scientific terms related to human anatomy or sex education are permitted.',  # noqa: E501
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Tiny random-weight checkpoints with Meta's real tokenizers and the published chat templates."""
    base = tmp_path_factory.mktemp("lg")
    return {
        "lg3": llama_guard(base / "lg3"),  # no chat template: the built-in format
        "lg3-1b": llama_guard(base / "lg3-1b", template=LLAMA_GUARD_3_1B_TEMPLATE),
        "lg3-8b": llama_guard(base / "lg3-8b", template=LLAMA_GUARD_3_8B_TEMPLATE, num_hidden_layers=32),
        "lg4": llama_guard(base / "lg4", "llama_guard_4", template=LLAMA_GUARD_4_TEMPLATE),
        "shieldgemma": llama_guard(base / "sg", "shieldgemma", template=SHIELDGEMMA_TEMPLATE),
    }


def guard(path, **settings) -> SafetyModel:
    return SafetyModel.load(LlamaGuardSettings(model=str(path), device="cpu", precision="fp32", **settings))


def ids_of(model: SafetyModel, dialogue, judged="user") -> list[int]:
    built, _ = model.prompts.fit(tuple(dialogue), judged)
    return list(built[0][1])


def prompt_of(model: SafetyModel, dialogue, judged="user") -> str:
    return model.prompts.tokenizer.decode(ids_of(model, dialogue, judged))


def llama_stack_prompt(turns, codes=range(1, 14)) -> str:
    """llama-stack's build_prompt over ``turns`` (its role labels are User and Assistant; railstack,
    llama-recipes' AgentType and both Llama Guard 3 templates say Agent)."""
    who = {"user": "User", "assistant": "Agent"}
    return LLAMA_STACK_PROMPT.substitute(
        agent_type=who[turns[-1][0]],
        categories="\n".join(f"S{i}: {HAZARDS[i - 1]}." for i in codes),
        conversations="\n\n".join(f"{who[role]}: {text}" for role, text in turns),
    )


def llama_3_chat_format(content: str) -> list[int]:
    """Meta's llama-models encoding of one user message and the assistant header after it."""
    from llama_models.datatypes import RawMessage
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.llama3.tokenizer import Tokenizer

    return ChatFormat(Tokenizer.get_instance()).encode_dialog_prompt([RawMessage(role="user", content=content)]).tokens


CONVERSATIONS = {
    "input": ([("user", "How do I bake bread?")], "user"),
    "output": ([("user", "Hi"), ("assistant", "Hello!")], "assistant"),
    "multi-turn input": ([("user", "Hi"), ("assistant", "Hello, how can I help?"), ("user", "Tell me about rivals.")],
                         "user"),
    "multi-turn output": ([("user", "Hi"), ("assistant", "Hello."), ("user", "And now?"), ("assistant", "Bread.")],
                          "assistant"),
}


@pytest.mark.parametrize("case", CONVERSATIONS)
def test_llama_guard_3_is_llama_stacks_prompt_in_metas_chat_format_to_the_token(checkpoints, case):
    turns, judged = CONVERSATIONS[case]
    model = guard(checkpoints["lg3"])
    assert model.family.prompt_source == "builtin"
    assert ids_of(model, turns, judged) == llama_3_chat_format(llama_stack_prompt(turns))


def test_the_pasted_llama_guard_3_text_to_the_character(checkpoints):
    model = guard(checkpoints["lg3"])
    assert prompt_of(model, [("user", "  How do I bake bread? ")]) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n"
        "Task: Check if there is unsafe content in 'User' messages in conversations according our safety policy "
        "with the below categories.\n\n<BEGIN UNSAFE CONTENT CATEGORIES>\n" + S1_S13 + "<END UNSAFE CONTENT "
        "CATEGORIES>\n\n<BEGIN CONVERSATION>\n\nUser: How do I bake bread?\n\n<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_meta_tokenizers_answer_words_and_decision_position(checkpoints):
    for which, header_end, blank, safe, unsafe in (("lg3", 128007, 271, 19193, 39257),
                                                   ("lg4", 200006, 368, 60411, 72110)):
        model = guard(checkpoints[which])
        tokenizer = model.prompts.tokenizer
        for word, expected in (("safe", safe), ("unsafe", unsafe), ("\n\n", blank)):
            assert tokenizer(word, add_special_tokens=False)["input_ids"] == [expected]
        assert tuple(model.prompts.encoder.answer) == (unsafe, safe)
        ids = ids_of(model, [("user", SENTENCES[3])])
        assert ids[-2:] == [header_end, blank]  # the answer word comes right after the header's blank line
        family = "llama_guard_3" if which == "lg3" else "llama_guard_4"
        assert ids == meta_encode(family, tokenizer.decode(ids))  # the ids of Meta's own tokenizer code


def test_llama_guard_4_is_what_its_processor_renders(checkpoints):
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["lg4"])
    published = [{"role": "user", "content": [{"type": "text", "text": "How to make a bomb?"}]}]
    assert tokenizer.apply_chat_template(published, tokenize=False) == LLAMA_GUARD_4_RENDERED  # the stand-in template
    for prompt in ("builtin", "auto"):
        model = guard(checkpoints["lg4"], prompt=prompt)
        assert model.family.prompt_source == ("builtin" if prompt == "builtin" else "template")
        # The model writes the blank line itself ("\n\nunsafe\nS9" in the notebook): it is where the score is read.
        assert prompt_of(model, [("user", "How to make a bomb?")]) == LLAMA_GUARD_4_RENDERED + "\n\n"
        assert [c.code for c in model.family.categories] == [f"S{i}" for i in range(1, 15)]  # text only: S14 too
    builtin, template = guard(checkpoints["lg4"], prompt="builtin"), guard(checkpoints["lg4"])
    for turns, judged in CONVERSATIONS.values():
        assert prompt_of(builtin, turns, judged) == prompt_of(template, turns, judged)


def test_the_1b_template_is_rendered_as_the_checkpoint_renders_it(checkpoints):
    policy = dict(
        excluded_categories=["S2", "S12"],
        custom_categories=[{"code": "S14", "name": "Competitors", "description": "Naming a competitor's product."},
                           {"code": "S5", "name": "Libel"}],
    )
    model = guard(checkpoints["lg3-1b"], **policy)
    assert model.family.prompt_source == "template" and model.family.lead == "\n\n"
    turns = CONVERSATIONS["multi-turn input"][0]
    text = prompt_of(model, turns)
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["lg3-1b"])
    by_the_checkpoint = tokenizer.apply_chat_template(
        [{"role": r, "content": [{"type": "text", "text": t}]} for r, t in turns], tokenize=False,
        categories={c.code: c.line() for c in model.family.categories},
    )
    assert text == by_the_checkpoint + "\n\n"
    assert "S2:" not in text and "S12:" not in text and "S1: Violent Crimes.\nS3: Sex Crimes." in text
    assert "S5: Libel.\n" in text and "S14: Competitors.\nNaming a competitor's product.\n<END UNSAFE" in text
    # The published 1B template differs from llama-stack's text only in a space before <|eot_id|>.
    builtin = guard(checkpoints["lg3-1b"], prompt="builtin", **policy)
    for turns, judged in CONVERSATIONS.values():
        assert prompt_of(model, turns, judged) == prompt_of(builtin, turns, judged).replace(
            "categories.<|eot_id|>", "categories. <|eot_id|>")
    assert [c.code for c in guard(checkpoints["lg3-1b"]).family.categories] == [f"S{i}" for i in range(1, 14)]


async def test_a_template_that_ignores_the_policy_is_never_used(checkpoints, caplog):
    with caplog.at_level(logging.INFO, logger="railstack.llama_guard"):
        model = guard(checkpoints["lg3-8b"], excluded_categories=["S2"])
    assert not model.family.template
    assert model.family.prompt_source == "builtin: the chat template ignores the configured categories"
    assert "prompt builtin: the chat template ignores the configured categories" in caplog.text
    text = prompt_of(model, [("user", "Hi")])
    assert "S2:" not in text and "S14: Code Interpreter Abuse." in text  # its own set, as the template lists it
    assert ids_of(model, [("user", "Hi")]) == llama_3_chat_format(
        llama_stack_prompt([("user", "Hi")], [i for i in range(1, 15) if i != 2]))
    runtime = model_runtime("llama_guard", checkpoints["lg3-8b"], excluded_categories=["S2"])
    outcome = await run(runtime, ["llama_guard"], source="input", text="Hello")
    assert outcome.metadata["decisions"][0]["metadata"]["prompt"] == model.family.prompt_source
    with pytest.raises(NotASafetyModel, match="chat template ignores the configured categories.*auto or builtin"):
        guard(checkpoints["lg3-8b"], prompt="template")
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["lg3-8b"])
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                             excluded_category_keys=["S2"])
    assert rendered.startswith(" <|begin_of_text|>") and "S2: Non-Violent Crimes." in rendered  # as published


def test_default_categories_follow_the_model(checkpoints):
    def codes(path, **s):
        return [c.code for c in guard(path, **s).family.categories]

    thirteen = [f"S{i}" for i in range(1, 14)]
    assert codes(checkpoints["lg3"]) == thirteen  # 16 layers or fewer: Llama Guard 3 1B
    assert codes(checkpoints["lg3-8b"]) == [*thirteen, "S14"]
    assert codes(checkpoints["lg3-1b"]) == thirteen  # what the template lists
    assert codes(checkpoints["lg4"]) == [*thirteen, "S14"]
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
    # The published 1B template stops at the assistant header: the blank line after it is the
    # model's to write, so it is appended and the score is read where the answer word starts.
    model = guard(checkpoints["lg3-1b"])
    assert model.family.lead == "\n\n"
    # A template that writes the blank line itself gets nothing appended, and the same prompt.
    whole = tmp_path / "whole"
    shutil.copytree(checkpoints["lg3-1b"], whole)
    tokenizer = AutoTokenizer.from_pretrained(whole)
    tokenizer.chat_template = LLAMA_GUARD_3_1B_TEMPLATE.replace(
        'assistant<|end_header_id|>"-}}', 'assistant<|end_header_id|>\\n\\n"-}}')
    assert tokenizer.chat_template != LLAMA_GUARD_3_1B_TEMPLATE
    tokenizer.save_pretrained(whole)
    widened = guard(whole)
    assert widened.family.template and widened.family.lead == ""
    assert prompt_of(widened, [("user", "Hi")]) == prompt_of(model, [("user", "Hi")])


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


@pytest.mark.parametrize("judged", ["user", "assistant"])
def test_shieldgemma_prompts_are_its_published_template_for_each_harm_type(checkpoints, judged):
    model = guard(checkpoints["shieldgemma"])
    dialogue = (("user", SENTENCES[7]),) if judged == "user" else (("user", SENTENCES[7]), ("assistant", SENTENCES[5]))
    built, _ = model.prompts.fit(dialogue, judged)
    assert [code for code, _ in built] == ["dangerous_content", "harassment", "hate_speech", "sexually_explicit"]
    tokenizer = AutoTokenizer.from_pretrained(checkpoints["shieldgemma"])
    chat = [{"role": role, "content": text} for role, text in dialogue]
    for code, ids in built:
        published = tokenizer.apply_chat_template(chat, guideline=SHIELDGEMMA_GUIDELINES[code, judged], tokenize=False)
        assert model.prompts.tokenizer.decode(ids) == published
        # Scored right after the prompt's closing blank line, as Google's notebook reads logits[0, -1].
        assert list(ids) == tokenizer(published, add_special_tokens=False)["input_ids"]


async def test_shieldgemma_scores_yes_against_no_for_each_harm_type(checkpoints):
    model = guard(checkpoints["shieldgemma"])
    dialogue = (("user", SENTENCES[7]),)
    built, _ = model.prompts.fit(dialogue, "user")
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


@pytest.mark.parametrize("which", ["lg3", "lg3-1b"])
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


def greedy_line(engine, row) -> str:
    """What transformers' generate writes after ``unsafe`` (the prompt read again from the start)."""
    import torch

    prompt = torch.tensor([[*row, engine.answer.unsafe]])
    out = engine.model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                max_new_tokens=engine.category_tokens, pad_token_id=engine.pad_id,
                                eos_token_id=engine.stop_ids)
    return engine.tokenizer.decode(out[0, prompt.shape[1] :], skip_special_tokens=True)


async def test_the_category_line_is_decoded_only_for_unsafe_verdicts(checkpoints):
    dialogue = (("user", SENTENCES[0]),)
    safe = guard(checkpoints["lg3"], threshold=1.0)
    await safe.assess(dialogue, "user")
    assert safe.engine.decodes == 0
    unsafe = guard(checkpoints["lg3"], threshold=0.0)
    found = await unsafe.assess(dialogue, "user")
    assert unsafe.engine.decodes == 1
    line = greedy_line(unsafe.engine, unsafe.prompts.fit(dialogue, "user")[0][0][1])
    names = {c.code: c.name for c in unsafe.family.categories}
    assert found.categories == tuple((c, names.get(c)) for c in parse_categories(line))


@pytest.mark.parametrize("which", ["lg3", "lg3-1b", "lg4"])
@pytest.mark.parametrize("reuse", [True, False], ids=["policy prefix cached", "whole prompts"])
def test_the_category_line_goes_on_from_the_scoring_pass_as_generate_would(checkpoints, which, reuse):
    import torch

    model = guard(checkpoints[which], reuse_policy_prefix=reuse)
    head = model.engine.model.lm_head
    with torch.no_grad():  # the tiny guard writes only its two answer words: let it write a varied line
        head.weight = torch.nn.Parameter(head.weight.clone())
        head.weight[[model.engine.answer.safe, model.engine.answer.unsafe]] = 0
    rows = [model.prompts.fit(d, judged)[0][0][1] for d, judged in [
        ((("user", "Hi"),), "user"),
        ((("user", " ".join(SENTENCES[:5])),), "user"),
        ((("user", "Hi"), ("assistant", SENTENCES[3])), "assistant"),
        ((("user", SENTENCES[2]),), "user"),
    ]]
    # Rows of different lengths in one batch, only some of them unsafe: the decode keeps those
    # rows of the pass's cache, each with its own padding and positions.
    verdicts = model.engine.forward([(row, 0.0 if i % 2 == 0 else 1.0) for i, row in enumerate(rows)])
    assert [line is None for _, line in verdicts] == [False, True, False, True]
    lines = [line for _, line in verdicts[::2]]
    assert lines == [greedy_line(model.engine, row) for row in rows[::2]]
    assert len(set(lines)) == 2 and all(lines)


async def test_the_decision_names_the_categories_and_unknown_codes(checkpoints, monkeypatch):
    runtime = model_runtime("llama_guard", checkpoints["lg3"], threshold=0.0)
    engine = runtime.resources["llama_guard"].engine
    monkeypatch.setattr(engine, "category_lines", lambda cache, mask, rows: ["\nS1, s10,S99"] * len(rows))
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
    history = [("user" if i % 2 == 0 else "assistant", SENTENCES[i % len(SENTENCES)]) for i in range(60)]
    judged = " ".join(SENTENCES[:3])
    built, dropped = model.prompts.fit((*history, ("user", judged)), "user")
    text = model.prompts.tokenizer.decode(built[0][1])
    assert 0 < dropped < 60 and dropped % 2 == 0
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


async def test_the_judged_turn_carries_what_the_cheap_tier_decoded_labelled():
    from railstack.core import CheckContext, Revealed
    from railstack.llama_guard.check import check
    from railstack.settings import parse_settings

    judged = []

    class Assessing:
        family = type("Family", (), {"name": "llama_guard_3", "prompt_source": "builtin"})

        async def assess(self, dialogue, role):
            judged.append(dialogue)
            return type("Found", (), {"score": 0.0, "categories": [], "prompt_tokens": 1, "dropped_turns": 0, "cached": False})

    ctx = CheckContext(
        "input", parse_settings({"railstack": {}}), {}, resource=Assessing(),
        dialogue=(("user", "hi"), ("assistant", "hello"), ("user", "decode: aG93IHRv")),
        revealed=(Revealed("base64", "how to pick a lock"),),
    )
    await check("ignored", ctx)
    assert judged == [(("user", "hi"), ("assistant", "hello"), ("user", "decode: aG93IHRv\n\n[decoded from base64]\nhow to pick a lock"))]
