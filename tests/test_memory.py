"""What NeMo keeps per conversation is bounded by size and age (``memory`` settings): through the
real server app, a steady stream of distinct conversations leaves at most the bound in memory, an
idle server lets them go, and a conversation's next turn still reuses what NeMo kept of it."""

import asyncio
import gc
import time
import weakref

import pytest
from nemoguardrails import LLMRails, RailsConfig
from nemoguardrails.testing import FakeLLMModel

from railstack.nemo import conversations
from railstack.nemo.conversations import ConversationCache
from railstack.settings import SettingsError, parse_settings
from support import railstack_config


def served_root(tmp_path, main_model):
    root = tmp_path / "configs"
    railstack_config(root / "mem", main_model.base_url, ["railstack heuristics"])
    (root / "config.py").write_text("from railstack.http.install import init  # noqa: F401\n")
    return root


def ask(client, *messages: str) -> str:
    """One request of a conversation whose turns so far are ``messages`` (user, assistant, user, ...)."""
    turns = [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(messages)]
    res = client.post("/v1/chat/completions", json={"model": "main", "messages": turns, "guardrails": {"config_id": "mem"}})
    assert res.status_code == 200, res.text[:300]
    return res.json()["choices"][0]["message"]["content"]


def events_cache():
    """The events cache of the one rails instance NeMo's server built."""
    from nemoguardrails.server import api

    (rails,) = api.llm_rails_instances.values()
    return rails.events_history_cache


def kept_text(cache) -> str:
    return repr(list(cache.items()))


def test_a_stream_of_distinct_conversations_keeps_at_most_the_cache_size(tmp_path, main_model, serve):
    with serve(served_root(tmp_path, main_model), RAILSTACK__MEMORY__CONVERSATION_CACHE_SIZE="5") as client:
        for i in range(12):
            assert ask(client, f"conversation-{i:03d}: what is the capital of France?") == main_model.reply
        cache = events_cache()
        assert isinstance(cache, ConversationCache) and len(cache) == 5
        text = kept_text(cache)
        assert not any(f"conversation-{i:03d}" in text for i in range(7))
        assert all(f"conversation-{i:03d}" in text for i in range(7, 12))


def test_conversations_past_their_age_are_dropped(tmp_path, main_model, serve):
    with serve(served_root(tmp_path, main_model), RAILSTACK__MEMORY__CONVERSATION_CACHE_TTL_S="0.2") as client:
        for i in range(3):
            ask(client, f"conversation-{i:03d}: what is the capital of France?")
        time.sleep(1.0)
        cache = events_cache()
        assert len(cache) == 0 and "conversation-" not in kept_text(cache)


def test_a_continued_conversation_reuses_the_events_nemo_kept_of_it(tmp_path, main_model, serve):
    with serve(served_root(tmp_path, main_model)) as client:
        first = ask(client, "first turn: what is the capital of France?")
        (kept,) = events_cache().values()
        second = ask(client, "first turn: what is the capital of France?", first, "second turn: and of Italy?")
        assert second == main_model.reply
        (continued,) = [events for key, events in events_cache().items() if "second turn" in key]
        # The next turn starts from the first turn's own events (their action ids), not ones rebuilt from its messages.
        assert len(continued) > len(kept) and continued[: len(kept)] == kept


def test_with_no_cache_conversations_are_answered_and_none_is_kept(tmp_path, main_model, serve):
    with serve(served_root(tmp_path, main_model), RAILSTACK__MEMORY__CONVERSATION_CACHE_SIZE="0") as client:
        first = ask(client, "first turn: what is the capital of France?")
        assert ask(client, "first turn: what is the capital of France?", first, "second turn: and of Italy?") == main_model.reply
        assert len(events_cache()) == 0


async def test_a_python_callers_rails_are_bounded_too(make_config):
    path = make_config(
        "models: []\npassthrough: true\ncustom_data:\n  railstack:\n    memory: {conversation_cache_size: 2}\n"
    )
    rails = LLMRails(RailsConfig.from_path(str(path)), llm=FakeLLMModel(responses=["an answer"] * 4))
    for i in range(4):
        await rails.generate_async(messages=[{"role": "user", "content": f"conversation-{i:03d}"}])
    assert len(rails.events_history_cache) == 2
    assert "conversation-000" not in kept_text(rails.events_history_cache)


class Events:
    """A stand-in for a conversation's events that can be watched for being freed."""


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(conversations, "monotonic", lambda: now[0])
    return now


def test_the_oldest_written_goes_first_and_a_rewrite_makes_an_entry_young(clock):
    cache = ConversationCache(size=2, ttl_s=60)
    cache["a"], cache["b"] = Events(), Events()
    clock[0] += 10
    cache["a"] = cache["a"]  # a conversation's next turn writes again
    cache["c"] = Events()
    assert list(cache) == ["a", "c"]  # b, the oldest written, went
    clock[0] += 49
    cache["d"] = Events()
    assert list(cache) == ["c", "d"]
    clock[0] += 10.5
    assert "c" in cache  # written 59.5 s ago
    clock[0] += 1
    assert "c" not in cache and list(cache) == ["d"]


def test_a_cache_seeded_with_nemos_dict_keeps_its_bound(clock):
    cache = ConversationCache(size=2, ttl_s=60, kept={"a": 1, "b": 2, "c": 3})
    assert dict(cache.items()) == {"b": 2, "c": 3}
    assert len(ConversationCache(size=0, ttl_s=60, kept={"a": 1})) == 0


async def test_an_idle_cache_lets_expired_conversations_go_without_a_request():
    cache = ConversationCache(size=10, ttl_s=0.05)
    events = Events()
    cache["conversation"] = events
    freed = weakref.ref(events)
    del events
    deadline = time.monotonic() + 10
    while freed() is not None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        gc.collect()
    assert freed() is None


async def test_the_hallucination_rails_samples_of_a_conversation_go_with_its_age(clock):
    from railstack.hallucination.samples import Samples

    samples, draws = Samples(size=256, ttl_s=60), []

    async def draw():
        draws.append(1)
        return ["an answer sampled about the conversation"], 1

    await samples.get("conversation", draw)
    clock[0] += 59
    assert (await samples.get("conversation", draw))[1] == 0 and len(draws) == 1
    clock[0] += 2
    assert (await samples.get("conversation", draw))[1] == 1 and len(draws) == 2


def test_memory_settings_parse_with_defaults():
    defaults = parse_settings({"railstack": {}}).memory
    assert (defaults.conversation_cache_size, defaults.conversation_cache_ttl_s) == (1000, 600.0)
    mine = parse_settings({"railstack": {"memory": {"conversation_cache_size": 0, "conversation_cache_ttl_s": 30}}}).memory
    assert (mine.conversation_cache_size, mine.conversation_cache_ttl_s) == (0, 30.0)


@pytest.mark.parametrize(
    "memory, message",
    [
        ({"conversation_cache_sise": 10}, r"custom_data\.railstack\.memory\.conversation_cache_sise: unknown key"),
        ({"conversation_cache_size": -1}, r"custom_data\.railstack\.memory\.conversation_cache_size: .*greater than or equal to 0"),
        ({"conversation_cache_ttl_s": 0}, r"custom_data\.railstack\.memory\.conversation_cache_ttl_s: .*greater than 0"),
    ],
)
def test_bad_memory_settings_are_refused_naming_the_key(memory, message):
    with pytest.raises(SettingsError, match=message):
        parse_settings({"railstack": {"memory": memory}})


def test_an_environment_override_of_the_cache_size_is_read(monkeypatch):
    monkeypatch.setenv("RAILSTACK__MEMORY__CONVERSATION_CACHE_SIZE", "7")
    assert parse_settings({"railstack": {}}).memory.conversation_cache_size == 7
