"""Checkpoints load whole or not at all: every way a model rail's checkpoint can be broken is one
start-up refusal naming the rail, the model, what is wrong and the setting to change."""

import shutil
import socket
import threading

import pytest

from railstack.core import runtimes
from railstack.engines.loading import CheckpointError, source
from railstack.paths import configs_root
from railstack.settings import parse_settings
from support import serving
from tiny_models import llama_guard, nli, prompt_guard


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    where = tmp_path_factory.mktemp("good")
    return {"pg": prompt_guard(where / "pg"), "nli": nli(where / "nli"), "lg": llama_guard(where / "lg")}


def broken_copy(src, dst, damage):
    shutil.copytree(src, dst)
    damage(dst)
    return dst


def truncate_weights(path):
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def corrupt_weights(path):
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:64] = b"\x00" * 56  # inside the JSON header that says where each tensor is
    weights.write_bytes(bytes(data))


def drop_tokenizer(path):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spm.model", "vocab.txt"):
        (path / name).unlink(missing_ok=True)


def load(section: str, model) -> None:
    runtime = runtimes.get(parse_settings({"railstack": {section: {"model": str(model)}}}), "cfg")
    runtime.prepare([section])


DAMAGE = {"truncated weights": truncate_weights, "corrupt weights": corrupt_weights, "tokenizer missing": drop_tokenizer}


@pytest.mark.parametrize("rail, which", [("prompt_guard", "pg"), ("hallucination", "nli")])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_refused_by_rail_model_and_setting(good, tmp_path, rail, which, damage):
    model = broken_copy(good[which], tmp_path / "damaged", DAMAGE[damage])
    with pytest.raises(CheckpointError) as err:
        load(rail, model)
    message = str(err.value)
    assert message.startswith(f"{rail}: cannot load model '{model}' (a local directory): ")
    assert f"RAILSTACK__{rail.upper()}__MODEL" in message and f"{rail}.model under custom_data.railstack" in message


def test_a_tokenizer_of_another_model_is_refused(good, tmp_path):
    # The safety model's tokenizer has more tokens than Prompt Guard's embedding table has rows.
    model = broken_copy(good["pg"], tmp_path / "mixed", drop_tokenizer)
    for name in good["lg"].glob("tokenizer*"):
        shutil.copy(name, model / name.name)
    with pytest.raises(CheckpointError, match=r"prompt_guard: cannot load model .*tokenizer has \d+ tokens, its embedding"):
        load("prompt_guard", model)


@pytest.mark.parametrize("rail, which", [("prompt_guard", "lg"), ("hallucination", "lg"), ("llama_guard", "pg")])
def test_a_checkpoint_of_the_wrong_architecture_is_refused(good, rail, which):
    with pytest.raises(CheckpointError) as err:
        load(rail, good[which])
    assert str(err.value).startswith(f"{rail}: cannot load model '{good[which]}'")
    assert f"RAILSTACK__{rail.upper()}__MODEL" in str(err.value)


def test_a_missing_hub_model_says_how_to_provide_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match=r"(?s)hallucination: cannot load model 'acme/no-such-nli' \(a Hugging Face hub id\).*HF_TOKEN"):
        load("hallucination", "acme/no-such-nli")


def test_a_broken_output_rail_model_stops_the_server_at_start(good, tmp_path, monkeypatch):
    """The hallucination check runs on the answer only; its model still loads when the server starts."""
    root = tmp_path / "configs"
    shutil.copytree(configs_root(), root, ignore=shutil.ignore_patterns("__pycache__"))
    model = broken_copy(good["nli"], tmp_path / "nli-broken", truncate_weights)
    monkeypatch.setenv("RAILSTACK__HALLUCINATION__ENABLED", "true")
    monkeypatch.setenv("RAILSTACK__HALLUCINATION__MODEL", str(model))
    with pytest.raises(CheckpointError, match=r"hallucination: cannot load model"):
        with serving(root):
            pass


@pytest.mark.parametrize("model", ["/no/such/pg", "./no-such-pg", "no/such/pg"])
def test_a_missing_local_directory_says_directory_not_found_and_names_the_variable(model):
    with pytest.raises(CheckpointError) as err:
        load("prompt_guard", model)
    message = str(err.value)
    assert message.startswith(f"prompt_guard: cannot load model '{model}' (a local directory): directory not found.")
    assert "RAILSTACK__PROMPT_GUARD__MODEL" in message and "Repo id" not in message


@pytest.fixture
def dead_hub(monkeypatch):
    """The hub's address, a server that counts connections and drops each unanswered."""
    from huggingface_hub import constants

    server = socket.create_server(("127.0.0.1", 0))
    tries = []

    def drop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            tries.append(1)
            conn.close()

    threading.Thread(target=drop, daemon=True).start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    yield tries
    server.close()


def test_an_unreachable_hub_is_tried_once_then_refused_by_name(dead_hub):
    with pytest.raises(CheckpointError) as err:
        load("prompt_guard", "acme/gated-guard")
    message = str(err.value)
    assert len(dead_hub) == 1  # one try, not five retries per file
    assert "the hub is unreachable" in message and "HF_HUB_OFFLINE=1" in message and "HF_HUB_ETAG_TIMEOUT" in message
    assert "RAILSTACK__PROMPT_GUARD__MODEL" in message


def test_hf_hub_offline_skips_the_hub(dead_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Set after huggingface_hub was imported, it still reads its own stale flag: only the local
    # cache may be asked (without this, every file cost about 45 s of retries against the hub).
    assert source("prompt_guard", "acme/gated-guard").kwargs == {"local_files_only": True}
    with pytest.raises(CheckpointError, match=r"cannot load model 'acme/gated-guard' \(a Hugging Face hub id\)"):
        load("prompt_guard", "acme/gated-guard")
    assert dead_hub == []
