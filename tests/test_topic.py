"""The topic rail, as wired in configs/default: refuse to discuss competitors."""

import pytest
from nemoguardrails import LLMRails

from railstack.core import collect_decisions
from support import packaged_config


@pytest.fixture
def app(main_model):
    return LLMRails(packaged_config("default", main_model.base_url))


@pytest.mark.parametrize("text", ["How does Globex price its plans?", "is INITECH better?", "umbrella  corp vs you"])
async def test_competitors_are_refused_with_the_configs_own_words(app, main_model, text):
    with collect_decisions() as decisions:
        res = await app.generate_async(messages=[{"role": "user", "content": text}])
    assert res["content"].startswith("I can only talk about our own products.")
    assert "Blocked by the topic rail: we only discuss our own products (denied term" in res["content"]
    assert [d.verdict for d in decisions if d.rail == "topic"] == ["block"]
    assert main_model.calls == 0


async def test_other_topics_reach_the_main_model(app, main_model):
    res = await app.generate_async(messages=[{"role": "user", "content": "Which of your plans suits a small team?"}])
    assert res["content"] == main_model.reply
    assert main_model.calls == 1


async def test_a_word_that_merely_contains_a_denied_term_passes(app, main_model):
    res = await app.generate_async(messages=[{"role": "user", "content": "Is the Globexian empire real?"}])
    assert res["content"] == main_model.reply


def test_an_empty_denied_term_is_a_settings_error():
    from railstack.topic.settings import TopicSettings

    with pytest.raises(ValueError, match="must contain a letter or digit"):
        TopicSettings(deny=["Globex", " "])
