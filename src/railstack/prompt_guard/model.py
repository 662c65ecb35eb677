"""Prompt Guard 1 and 2, run with transformers here or on a TEI server (``engine``).

- The checkpoint says which it is: three labels BENIGN/INJECTION/JAILBREAK is Prompt Guard 1
  (``meta-llama/Prompt-Guard-86M``), two labels is Prompt Guard 2 (``Llama-Prompt-Guard-2-86M``
  and ``-22M``). Scores follow Meta's definitions over softmax(logits / temperature): PG1
  jailbreak = p[JAILBREAK], injection = p[INJECTION] + p[JAILBREAK]; PG2 both = p[malicious].
- Long inputs are cut into windows of at most 512 tokens from the token ids (never by decoding
  and re-encoding, which PG2's tokenizer does not round-trip), where words begin, so that each
  window's text tokenizes to its ids (what a TEI server reads); an input's score is the maximum
  over its windows, and every window goes through the model's micro-batcher.
- PG1 was evaded by spacing letters out ("I g n o r e"). Its input goes through Meta's fix,
  ``preprocess_text_for_promptguard`` (llama-cookbook ``end-to-end-use-cases/responsible_ai/
  prompt_guard/inference.py``, also in LlamaFirewall): the text with its whitespace removed is
  tokenized, a string is rebuilt from the tokens' strings with one space before each token whose
  first character followed whitespace in the original, and that string is tokenized as usual. Where
  Meta's function gives up (its search for a token's string in the squeezed text fails, as when
  the tokenizer's normalizer changes characters) it returns the text unchanged, spaced letters
  and all; railstack finds each token from the tokenizer's offsets instead, so the defence holds
  there too. PG2's tokenizer handles spacing itself.
- Scores (not verdicts) are cached per model by a digest of the exact text, so a threshold
  change never reuses a stale verdict and two models never share an entry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

from railstack.engines.batcher import Batcher
from railstack.engines.cache import ScoreCache
from railstack.engines.loading import load_tokenizer
from railstack.engines.sequence import (
    Input, LayoutError, Tokenized, forward, layout, length, runner, softmax, tokenize, windows,
)
from railstack.engines.tei import refusal
from railstack.overload.stages import Stage
from railstack.prompt_guard.settings import PromptGuardSettings

log = logging.getLogger("railstack.prompt_guard")

MAX_TOKENS = 512
PG1_LABELS = ("BENIGN", "INJECTION", "JAILBREAK")


class NotPromptGuard(ValueError):
    """The checkpoint is not a Prompt Guard classifier."""


@dataclass(frozen=True)
class Scores:
    jailbreak: float
    injection: float
    windows: int


class PromptGuard:
    """One Prompt Guard checkpoint (run where the settings say) with its micro-batcher and score cache."""

    def __init__(self, settings: PromptGuardSettings, stage: Optional[Stage] = None):
        self.settings = settings
        self.tokenizer = load_tokenizer("prompt_guard", settings.model)
        if not self.tokenizer.is_fast:
            raise NotPromptGuard(f"prompt_guard: {settings.model!r} has no fast tokenizer (needed for offsets)")
        try:
            self.body = MAX_TOKENS - layout(self.tokenizer).specials(1)
        except LayoutError as exc:
            raise NotPromptGuard(f"prompt_guard: {exc}") from exc
        self.runner = runner(settings, "prompt_guard", self.tokenizer)
        self.device, self.precision = self.runner.device, self.runner.precision
        try:
            self.scheme = _scheme(self.runner.labels, settings.model)
            if (self.runner.max_tokens or MAX_TOKENS) < MAX_TOKENS:
                raise NotPromptGuard(f"prompt_guard: it takes {self.runner.max_tokens} tokens per input, Prompt Guard's "
                                     f"windows {MAX_TOKENS}")
        except NotPromptGuard as exc:
            if settings.engine == "remote":
                raise refusal("prompt_guard", settings, str(exc).removeprefix("prompt_guard: ")) from exc
            raise
        self.cache = ScoreCache(settings.cache_size)
        # softmax(logits / T) of each window, on the batcher's worker thread.
        self.probabilities = forward(self.runner, lambda logits: softmax(logits, settings.temperature))
        self.batcher: Batcher[Input, list[float]] = Batcher(
            f"prompt-guard:{settings.model}",
            self.probabilities,
            length=length,
            max_batch=settings.max_batch or self.runner.max_batch,
            max_delay_s=settings.max_delay_ms / 1000,
            stage=stage,
        )
        log.info("prompt_guard: loaded %s (%s) on %s in %s", settings.model, self.scheme, self.device, self.precision)

    def tokenized(self, text: str) -> Tokenized:
        """The text's tokens, without special tokens; for PG1 after Meta's whitespace defence."""
        return tokenize(self.tokenizer, self._respaced(text) if self.scheme == "pg1" else text)

    def token_ids(self, text: str) -> list[int]:
        return list(self.tokenized(text).ids)

    def _respaced(self, text: str) -> str:
        """The string Meta's ``preprocess_text_for_promptguard`` makes of the text.

        Meta locates each token by searching for its string in the squeezed text, and on any
        failure returns the original text: the spaced-out letters then reach the model as they
        came, an evasion the guardrail would let through without a word. The tokenizer's offsets
        say where each token is without a search, so the result is Meta's wherever Meta's search
        lands on the token's own characters, and the defence still applies where it would fail.
        """
        kept = [i for i, ch in enumerate(text) if not ch.isspace()]  # str.isspace, as Meta's
        squeezed = "".join(text[i] for i in kept)
        encoded = self.tokenizer(squeezed, add_special_tokens=False, return_offsets_mapping=True)
        parts: list[str] = []
        at = 0  # in the squeezed text: where the current token starts
        for token, (start, end) in zip(encoded.tokens(), encoded["offset_mapping"]):
            piece = self.tokenizer.convert_tokens_to_string([token])
            # A bare word-start token ("▁") is an empty string: Meta places it where the previous
            # token ended, so it takes the following character's space, as that token will too.
            if piece:
                at = start
            if at < len(kept) and kept[at] > 0 and text[kept[at] - 1].isspace():
                parts.append(" ")
            parts.append(piece)
            if piece:
                at = end
        return "".join(parts)

    def windows(self, text: str) -> list[Input]:
        """Model inputs of at most 512 tokens that cover the text's tokens, each once, in order."""
        return [(span,) for span in windows(self.tokenizer, self.tokenized(text), self.body)]

    def scores_of(self, probabilities: list[list[float]]) -> Scores:
        if self.scheme == "pg1":
            jailbreak = max((p[2] for p in probabilities), default=0.0)
            injection = max((p[1] + p[2] for p in probabilities), default=0.0)
        else:
            jailbreak = injection = max((p[1] for p in probabilities), default=0.0)
        return Scores(jailbreak, injection, len(probabilities))

    async def scores(self, text: str) -> tuple[Scores, bool]:
        """The text's scores, and whether they came from the cache."""
        cached = self.cache.get(text)
        if cached is not None:
            return cached, True
        found = self.scores_of(await self.batcher.score(self.windows(text)))
        self.cache.put(text, found)
        return found, False


def _scheme(labels: tuple[str, ...], model: str) -> str:
    labels = tuple(label.upper() for label in labels)
    if labels == PG1_LABELS:
        return "pg1"
    if len(labels) == 2:
        return "pg2"
    raise NotPromptGuard(
        f"prompt_guard: {model!r} is not a Prompt Guard checkpoint: labels {list(labels)}, expected "
        f"{list(PG1_LABELS)} (Prompt Guard 1) or two labels (Prompt Guard 2)"
    )


def engine_key(settings: PromptGuardSettings) -> tuple:
    """What makes two configs' Prompt Guard one engine: the same model, runtime, device, precision,
    batching, cache and temperature, and the same server and timeout when remote (thresholds
    apply per config, after the scores)."""
    remote = (settings.remote, settings.timeout_s) if settings.engine == "remote" else None
    return (settings.model, settings.runtime, settings.device, settings.precision, settings.max_batch,
            settings.max_delay_ms, settings.cache_size, settings.temperature, settings.engine, remote)
