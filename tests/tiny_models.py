"""Tiny random-weight checkpoints of the real architectures, built and saved the way users'
checkpoints are, so the rails load them through the same code path (no downloads here)."""

from __future__ import annotations

from pathlib import Path

from railstack.tools.random_models import GUARD_TOKENS, SENTENCES, deberta_classifier, guard_lm, train_texts

__all__ = ["SENTENCES", "train_texts"]  # the built-in text the tests judge, from the package


def prompt_guard(where: Path, version: int = 2, *, labels: list[str] | None = None, **size) -> Path:
    """A Prompt Guard checkpoint: DebertaV2ForSequenceClassification with PG1's three labels or
    PG2's two, and its tokenizer. ``size`` overrides the (tiny) DebertaV2Config."""
    labels = labels or (["BENIGN", "INJECTION", "JAILBREAK"] if version == 1 else ["LABEL_0", "LABEL_1"])
    return deberta_classifier(where, labels, seed=version, **size)


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
        spread = ((pooled - mean) @ direction).std()
        entail, contradict = labels.index("entailment"), labels.index("contradiction")
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        for row, sign in ((entail, 2.0), (contradict, -2.0)):
            model.classifier.weight[row] = sign * direction / spread
            model.classifier.bias[row] = -sign * (mean @ direction) / spread
    model.save_pretrained(where)
    return where


# Llama Guard 3's chat template as the hub checkpoints define it (written here from Meta's
# published prompt format): roles must alternate, the judged role follows from the number of
# turns, `categories` and `excluded_category_keys` can be passed in, turns are text parts.
LLAMA_GUARD_3_TEMPLATE = (
    "{%- if messages|length % 2 == 0 -%}{%- set role = 'Agent' -%}{%- else -%}{%- set role = 'User' -%}{%- endif -%}"
    "{%- if categories is not defined -%}{%- set categories = {"
    + ", ".join(f'"S{i}": "{name}."' for i, name in enumerate(
        ["Violent Crimes", "Non-Violent Crimes", "Sex Crimes", "Child Exploitation", "Defamation",
         "Specialized Advice", "Privacy", "Intellectual Property", "Indiscriminate Weapons", "Hate", "Self-Harm",
         "Sexual Content", "Elections"], start=1))
    + "} -%}{%- endif -%}"
    "{%- if excluded_category_keys is not defined -%}{%- set excluded_category_keys = [] -%}{%- endif -%}"
    "{{- '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n' -}}"
    "{{- \"Task: Check if there is unsafe content in '\" + role + \"' messages in conversations according our "
    "safety policy with the below categories.\\n\\n<BEGIN UNSAFE CONTENT CATEGORIES>\\n\" -}}"
    "{%- for key in categories -%}{%- if key not in excluded_category_keys -%}"
    "{{- key + ': ' + categories[key] + '\\n' -}}{%- endif -%}{%- endfor -%}"
    "{{- '<END UNSAFE CONTENT CATEGORIES>\\n\\n<BEGIN CONVERSATION>\\n\\n' -}}"
    "{%- for message in messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') -}}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{%- set who = 'User' -%}{%- else -%}{%- set who = 'Agent' -%}{%- endif -%}"
    "{%- for part in message['content'] | selectattr('type', 'equalto', 'text') -%}"
    "{{- who + ': ' + part['text'] | trim + '\\n\\n' -}}{%- endfor -%}{%- endfor -%}"
    "{{- '<END CONVERSATION>\\n\\nProvide your safety assessment for ONLY THE LAST ' + role + "
    "\" message in the above conversation:\\n - First line must read 'safe' or 'unsafe'.\\n - If unsafe, a second "
    "line must include a comma-separated list of violated categories.<|eot_id|><|start_header_id|>assistant"
    "<|end_header_id|>\\n\\n\" -}}"
)

def llama_guard(where: Path, family: str = "llama_guard_3", *, template: bool = False, seed: int = 0, **size) -> Path:
    """A Llama Guard 3 / 4 checkpoint: a random LlamaForCausalLM with that family's tokenizer (and,
    with ``template``, Llama Guard 3's chat template); for ShieldGemma a random Gemma 2."""
    import torch

    model, tokenizer = guard_lm(where, family, LLAMA_GUARD_3_TEMPLATE if template else None, seed=seed, **size)
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
    wrap = {"llama_guard_3": "<|begin_of_text|>{}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
            "llama_guard_4": "<|begin_of_text|>{}<|eot|><|header_start|>assistant<|header_end|>\n\n",
            "shieldgemma": "<bos>{}<end_of_turn>\n<start_of_turn>model\n"}[family]
    states = []
    for text in train_texts(40):
        ids = tokenizer(wrap.format(text), add_special_tokens=False, return_tensors="pt")["input_ids"]
        states.append(model.model(input_ids=ids).last_hidden_state[0, -1])
    h = torch.stack(states)
    mean = h.mean(0)
    direction = torch.linalg.svd(h - mean, full_matrices=False).Vh[0]
    spread = ((h - mean) @ direction).std()
    weight = model.lm_head.weight
    weight[safe] = 30 * mean / mean.norm() ** 2  # logit 30 at the typical state: far above the rest
    weight[unsafe] = weight[safe] + 2.5 * direction / spread  # the logit gap: about N(0, 2.5) over texts


def _is_violation(word: str) -> bool:
    return word in ("unsafe", "Yes")
