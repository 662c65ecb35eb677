"""configs/guardrails-ai end to end: NeMo's guardrails_ai rails with validators installed from the
package index, behind railstack's cheap tiers, against the loopback main model."""

import re
import socket
import subprocess
import sys

import pytest
from nemoguardrails import LLMRails, RailsConfig

from railstack.nemo.guardrails_ai import GuardrailsAIConfigError
from railstack.paths import config_dir

SECRET = "sk-proj" + "Abc123Def456Ghi789Jkl012Mno345"


@pytest.fixture
def config(tmp_path, main_model):
    """The packaged config, its main model the loopback one."""
    yml = (config_dir("guardrails-ai") / "config.yml").read_text()
    path = tmp_path / "guardrails-ai"
    path.mkdir()
    (path / "config.yml").write_text(yml.replace("http://127.0.0.1:8000/v1", main_model.base_url))
    (path / "config.py").write_text((config_dir("guardrails-ai") / "config.py").read_text())
    return path


def ask(config, text, **options):
    rails = LLMRails(RailsConfig.from_path(str(config)))
    return rails, rails.generate(messages=[{"role": "user", "content": text}], **options)["content"]


def test_a_benign_question_is_answered(config, main_model):
    main_model.reply = "Paris is the capital of France."
    _, answer = ask(config, "What is the capital of France?")
    assert answer == "Paris is the capital of France."
    assert main_model.calls == 1


@pytest.mark.parametrize("secret", [SECRET, "AKIAIOSFODNN7EXAMPLE", "ghp_" + "a1B2" * 9, "-----BEGIN RSA PRIVATE KEY-----"])
def test_an_answer_carrying_a_credential_is_refused_by_the_regex_validator(config, main_model, secret):
    main_model.reply = f"Sure, here is the key you asked for:\n{secret}\nKeep it safe."
    _, answer = ask(config, "What is our deploy key?")
    assert secret not in answer and secret[:8] not in answer
    assert "sorry" in answer.lower() or "can't" in answer.lower()
    assert main_model.calls == 1


async def test_a_streamed_answer_carrying_a_credential_never_sends_the_secret(config, main_model):
    main_model.reply = "Here it is: " + SECRET + " and more text after it."
    rails = LLMRails(RailsConfig.from_path(str(config)))
    sent = "".join([c if isinstance(c, str) else str(c) async for c in rails.stream_async(
        messages=[{"role": "user", "content": "Key?"}])])
    assert SECRET[:12] not in sent
    assert 'guardrailsai check output $validator=\\"regex_match\\"' in sent
    assert main_model.calls == 1


def test_an_input_over_the_length_validator_is_refused_before_the_main_model(config, main_model):
    _, answer = ask(config, "word " * 1000)
    assert "sorry" in answer.lower() or "can't" in answer.lower()
    assert main_model.calls == 0


def _with_validator(config, name, parameters="{}"):
    yml = (config / "config.yml").read_text()
    yml = yml.replace('$validator="valid_length"', f'$validator="{name}"').replace(
        "        - name: valid_length\n", f"        - name: {name}\n          parameters: {parameters}\n        - name: valid_length\n"
    )
    (config / "config.yml").write_text(yml)
    return config


def refused_with(config, pattern):
    """NeMo wraps what config.py raises: the railstack error is in the chain."""
    with pytest.raises(Exception) as info:
        LLMRails(RailsConfig.from_path(str(config)))
    chain, exc = [], info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    ours = [e for e in chain if isinstance(e, GuardrailsAIConfigError)]
    assert ours, info.value
    assert re.search(pattern, str(ours[0])), ours[0]


def test_an_unresolvable_validator_is_a_startup_error_naming_it_and_its_package(config, monkeypatch):
    # No Hub lookup may happen: any socket opened during start-up fails the test.
    def no_network(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    _with_validator(config, "guardrails/no_such_validator")
    refused_with(config, re.escape("'guardrails/no_such_validator'") + ".*guardrails-ai-no-such-validator")


def test_a_validator_nemo_does_not_list_resolves_from_its_installed_package(config, main_model):
    # secrets_present is not in NeMo's registry: NeMo alone would go to the Hub for it.
    yml = (config / "config.yml").read_text().replace(
        '      - guardrailsai check output $validator="regex_match"\n',
        '      - guardrailsai check output $validator="regex_match"\n      - guardrailsai check output $validator="secrets_present"\n',
    ).replace("        - name: regex_match\n", "        - name: secrets_present\n        - name: regex_match\n")
    (config / "config.yml").write_text(yml)
    main_model.reply = "Paris."
    assert ask(config, "Capital of France?")[1] == "Paris."


def test_a_fixing_on_fail_is_refused_because_it_would_pass_failing_text(config):
    _with_validator(config, "one_line", "{on_fail: fix}")
    refused_with(config, "on_fail 'fix'")


def test_bad_parameters_are_a_startup_error(config):
    (config / "config.yml").write_text((config / "config.yml").read_text().replace("regex: '", "rgx: '"))
    refused_with(config, "'regex_match' cannot be built.*TypeError")


@pytest.mark.slow
def test_railstack_check_refuses_the_config_with_exit_2(config):
    _with_validator(config, "guardrails/no_such_validator")
    done = subprocess.run([sys.executable, "-m", "railstack.tools.cli", "check", str(config), "--text", "hi"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no_such_validator" in done.stderr
