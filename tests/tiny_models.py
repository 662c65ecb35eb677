"""Tiny random-weight checkpoints of the real architectures, built and saved the way users'
checkpoints are, so the rails load them through the same code path (no downloads here)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from support import SHARED_DATA

SPECIALS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]


def train_texts(n: int = 400) -> list[str]:
    with open(SHARED_DATA / "injection_eval.jsonl") as f:
        return [json.loads(line)["text"] for line in itertools.islice(f, n)]


def deberta_tokenizer(where: Path, vocab_size: int = 2000):
    """A real SentencePiece-Unigram tokenizer, as DeBERTa-v3/mDeBERTa use, trained on public text."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import DebertaV2TokenizerFast

    where.mkdir(parents=True, exist_ok=True)
    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(
        train_texts(), vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="[UNK]", show_progress=False
    )
    unigram.save(str(where / "tokenizer.json"))
    return DebertaV2TokenizerFast(
        tokenizer_file=str(where / "tokenizer.json"), bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]",
        sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]",
    )


def prompt_guard(where: Path, version: int = 2, *, labels: list[str] | None = None, **size) -> Path:
    """A Prompt Guard checkpoint: DebertaV2ForSequenceClassification with PG1's three labels or
    PG2's two, and its tokenizer. ``size`` overrides the (tiny) DebertaV2Config."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    tokenizer = deberta_tokenizer(where / "tok")
    labels = labels or (["BENIGN", "INJECTION", "JAILBREAK"] if version == 1 else ["LABEL_0", "LABEL_1"])
    config = DebertaV2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
        position_biased_input=False, pad_token_id=tokenizer.pad_token_id, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}, **size,
    )
    torch.manual_seed(version)
    model = DebertaV2ForSequenceClassification(config)
    with torch.no_grad():  # logits far enough apart that scores are not all ~1/num_labels
        model.classifier.weight.mul_(50)
    model.save_pretrained(where)
    tokenizer.save_pretrained(where)
    return where
