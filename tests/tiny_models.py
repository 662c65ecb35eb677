"""Tiny random-weight checkpoints of the real architectures, built and saved the way users'
checkpoints are, so the rails load them through the same code path (no downloads here)."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from railstack.tools.random_models import GUARD_TOKENS, SENTENCES, deberta_classifier, guard_lm, train_texts

__all__ = ["SENTENCES", "train_texts"]  # the built-in text the tests judge, from the package


def prompt_guard(where: Path, version: int = 2, *, labels: list[str] | None = None, **size) -> Path:
    """A Prompt Guard checkpoint: DebertaV2ForSequenceClassification with PG1's three labels or
    PG2's two, and its tokenizer. ``size`` overrides the (tiny) DebertaV2Config."""
    labels = labels or (["BENIGN", "INJECTION", "JAILBREAK"] if version == 1 else ["LABEL_0", "LABEL_1"])
    return deberta_classifier(where, labels, seed=version, **size)


def prompt_guard_flagging(where: Path, flagged: list[str], clean: list[str]) -> Path:
    """A Prompt Guard 2 checkpoint (tiny, random body) whose malicious logit grows along the
    direction in which its own pooled representations of ``flagged`` texts differ from those of
    ``clean`` ones: a real forward pass that scores those texts far apart, as a trained one scores
    an injection and a product description, rather than within noise of each other."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    prompt_guard(where)
    model = AutoModelForSequenceClassification.from_pretrained(where).eval()
    tokenizer = AutoTokenizer.from_pretrained(where)
    with torch.no_grad():
        def pooled(texts: list[str]):
            return torch.stack([model.pooler(model.deberta(**tokenizer(t, return_tensors="pt")).last_hidden_state)[0]
                                for t in texts])

        bad, good = pooled(flagged), pooled(clean)
        direction = bad.mean(0) - good.mean(0)
        direction /= direction.norm()
        high, low = (bad @ direction).min(), (good @ direction).max()
        assert high > low, "the flagged and clean texts are not apart along their mean difference"
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        # Logit 0 at the midpoint, +-8 at the nearest texts of each side: p(malicious) > 0.999 or < 0.001.
        scale = 16 / (high - low)
        model.classifier.weight[1] = scale * direction
        model.classifier.bias[1] = -scale * (high + low) / 2
    model.save_pretrained(where)
    return where


def nli(where: Path, labels: tuple[str, ...] = ("entailment", "neutral", "contradiction"), **size) -> Path:
    """An NLI checkpoint (as MNLI cross-encoders are): DebertaV2ForSequenceClassification whose
    entailment and contradiction logits move apart along the main direction in which its pooled
    representations of (premise, hypothesis) pairs differ, so that, as in a trained one, the
    verdict depends on the pair rather than sitting near 1/3 for everything."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    deberta_classifier(where, list(labels), seed=7, **size)
    model = AutoModelForSequenceClassification.from_pretrained(where).eval()
    tokenizer = AutoTokenizer.from_pretrained(where)
    with torch.no_grad():
        pairs = [(SENTENCES[i], SENTENCES[(i * 7 + 3) % len(SENTENCES)]) for i in range(len(SENTENCES))]
        pairs += [(" ".join(SENTENCES[i : i + 4]), SENTENCES[(i * 3 + 1) % len(SENTENCES)]) for i in range(16)]
        pooled = torch.stack([
            model.pooler(model.deberta(**tokenizer(a, b, return_tensors="pt")).last_hidden_state)[0] for a, b in pairs
        ])
        mean = pooled.mean(0)
        direction = torch.linalg.svd(pooled - mean, full_matrices=False).Vh[0]
        # A singular vector's sign is the LAPACK build's choice: fix it, so that one checkpoint is
        # built on every machine.
        direction *= direction[direction.abs().argmax()].sign()
        spread = ((pooled - mean) @ direction).std()
        entail, contradict = labels.index("entailment"), labels.index("contradiction")
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        for row, sign in ((entail, 2.0), (contradict, -2.0)):
            model.classifier.weight[row] = sign * direction / spread
            model.classifier.bias[row] = -sign * (mean @ direction) / spread
    model.save_pretrained(where)
    return where


# Meta's own tokenizer files as the official `llama-models` package ships them (tiktoken format;
# the hub checkpoints' tokenizer.json holds the same ranks), pinned by hash.
META_TOKENIZERS = {
    "llama_guard_3": ("llama3", "82e9d31979e92ab929cd544440f129d9ecd797b69e327f80f17e1c50d5551b55"),
    "llama_guard_4": ("llama4", "d0bdbaf59b0762c8c807617e2d8ea51420eb1b1de266df2495be755c8e0ed6ed"),
}


@functools.lru_cache(maxsize=None)
def _meta(family: str):
    """Meta's own tokenizer (llama_models' tiktoken ``Tokenizer``) of the family, its file's hash checked."""
    import importlib

    import llama_models

    folder, digest = META_TOKENIZERS[family]
    path = Path(llama_models.__file__).parent / folder / "tokenizer.model"
    found = hashlib.sha256(path.read_bytes()).hexdigest()
    if found != digest:
        raise RuntimeError(f"{path} has sha256 {found}, not Meta's published {digest}")
    return importlib.import_module(f"llama_models.{folder}.tokenizer").Tokenizer(path), path


@functools.lru_cache(maxsize=None)
def _meta_tokenizer_json(family: str) -> str:
    from transformers.convert_slow_tokenizer import TikTokenConverter

    meta, path = _meta(family)
    specials = sorted(meta.special_tokens, key=meta.special_tokens.get)
    converted = TikTokenConverter(str(path), pattern=meta.model._pat_str, extra_special_tokens=specials).converted()
    return converted.to_str()


def meta_tokenizer(family: str, template: str | None = None):
    """The real Llama 3 (Llama Guard 3) or Llama 4 (Llama Guard 4) tokenizer, as a transformers
    fast tokenizer with the hub checkpoints' special-token roles."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    _, bos, eos, pad, _ = GUARD_TOKENS[family]
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_meta_tokenizer_json(family)), bos_token=bos, eos_token=eos,
        pad_token=pad, chat_template=template,
    )


def meta_encode(family: str, text: str) -> list[int]:
    """``text`` (special tokens spelled out) as Meta's own tokenizer code encodes it."""
    return _meta(family)[0].encode(text, bos=False, eos=False, allowed_special="all")


def llama_guard(
    where: Path, family: str = "llama_guard_3", *, template: str | None = None, seed: int = 0, **size
) -> Path:
    """A Llama Guard 3 / 4 checkpoint: a random LlamaForCausalLM with Meta's real tokenizer of that
    family (and ``template`` as its chat template); for ShieldGemma a random Gemma 2 with a trained
    tokenizer that has Gemma's special tokens."""
    import torch

    tokenizer = meta_tokenizer(family, template) if family in META_TOKENIZERS else None
    model, tokenizer = guard_lm(where, family, template, seed=seed, tokenizer=tokenizer, **size)
    with torch.no_grad():
        _answer_by_content(model, tokenizer, family)
    model.save_pretrained(where)
    return where


def _answer_by_content(model, tokenizer, family: str) -> None:
    """Make the random model answer like a trained guard: the two answer words take nearly all
    the probability at the decision position, and which one wins varies with the text judged
    (along the main direction in which the texts' last hidden states differ)."""
    import torch

    safe, unsafe = (tokenizer.convert_tokens_to_ids(w) for w in sorted(GUARD_TOKENS[family][4], key=_is_violation))
    states = []
    for text in train_texts(40):
        ids = tokenizer(_prompt(family, text), add_special_tokens=False, return_tensors="pt")["input_ids"]
        states.append(model.model(input_ids=ids).last_hidden_state[0, -1])
    h = torch.stack(states)
    mean = h.mean(0)
    direction = torch.linalg.svd(h - mean, full_matrices=False).Vh[0]
    spread = ((h - mean) @ direction).std()
    weight = model.lm_head.weight
    weight[safe] = 30 * mean / mean.norm() ** 2  # logit 30 at the typical state: far above the rest
    weight[unsafe] = weight[safe] + 2.5 * direction / spread  # the logit gap: about N(0, 2.5) over texts


def _prompt(family: str, text: str) -> str:
    """A prompt of the family's built-in format judging ``text`` as a user turn."""
    from railstack.llama_guard.families import FAMILIES
    from railstack.llama_guard.policy import HAZARDS
    from railstack.llama_guard.shieldgemma_format import SHIELDGEMMA_PROMPT

    cls = FAMILIES[family]
    if family == "shieldgemma":
        shown = f"<start_of_turn>\nHuman Question: {text}\n<end_of_turn>"
        body = SHIELDGEMMA_PROMPT.format(subject="a user prompt", turns=shown, guideline='"No Harassment": ...',
                                         judged="human question", must="must")
    else:
        turn = cls.turn.format(who="User", text=text)
        categories = "\n".join(f"{code}: {name}." for code, name in list(HAZARDS.items())[:13])
        body = cls.task.format(role="User", categories=categories, conversation=turn)
    return cls.wrap.format(body)


def _is_violation(word: str) -> bool:
    return word in ("unsafe", "Yes")


def fnet_classifier(where: Path, labels: tuple[str, ...] = ("LABEL_0", "LABEL_1")) -> Path:
    """A sequence classifier of an architecture torch.onnx does not export: FNet mixes tokens with
    a Fourier transform (``aten::fft_fftn``, which the TorchScript exporter has no ONNX form of)."""
    import torch
    from transformers import FNetConfig, FNetForSequenceClassification

    from railstack.tools.random_models import deberta_tokenizer

    tokenizer = deberta_tokenizer(where / "tok")
    torch.manual_seed(0)
    model = FNetForSequenceClassification(FNetConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, intermediate_size=64,
        max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)},
    ))
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return where
