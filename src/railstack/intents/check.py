"""The intents rail's check: the last user message, whole and sentence by sentence, against the
refused intents' examples; the nearest example decides."""

from __future__ import annotations

import contextlib
from typing import Any

from railstack.core import CheckContext, Runtime, Verdict

SETTING = "intents.model under custom_data.railstack (or RAILSTACK__INTENTS__MODEL)"


class IntentsConfigError(ValueError):
    """The intents the rail is told to refuse are not in the config's Colang as it needs them."""


class Index:
    """The refused intents' examples, embedded once per config, and the encoder that embeds messages."""

    def __init__(self, runtime: Runtime):
        import numpy as np

        from railstack.engines.encoder import encoder
        from railstack.engines.pool import pool

        settings = runtime.settings.intents
        defined = {intent.name: intent for intent in runtime.intents}
        if not settings.refuse:
            raise IntentsConfigError("intents.refuse lists no Colang user intent to refuse")
        for name in settings.refuse:
            intent = defined.get(name)
            if intent is None or not intent.examples:
                known = ", ".join(repr(n) for n in defined) or "none"
                raise IntentsConfigError(f"intents.refuse names {name!r}, which no `define user {name}` with example "
                                         f"utterances defines (the config defines: {known})")
            if intent.answer is None:
                raise IntentsConfigError(
                    f"intents.refuse names {name!r}, but no flow answers it with a bot message of its own: add "
                    f"`define flow` / `user {name}` / `bot <message>` and `define bot <message>` with its text")
        self.encoder = encoder(settings.model, sha256=settings.sha256, device=settings.device,
                               precision=settings.precision, max_batch=settings.max_batch,
                               max_delay_ms=settings.max_delay_ms, setting=SETTING)
        self.examples = [(name, text) for name in settings.refuse for text in defined[name].examples]
        self.answers = {name: defined[name].answer for name in settings.refuse}
        self.matrix = np.asarray(self.encoder.embed_now([text for _, text in self.examples]), dtype=np.float32)
        self.stage = pool.stage(runtime, f"intents:{settings.model}")

    async def nearest(self, parts: list[str]) -> tuple[float, int]:
        """The highest cosine between any part and any example, and that example's index."""
        import numpy as np

        with_slot = self.stage.slot() if self.stage is not None else contextlib.nullcontext()
        async with with_slot:
            vectors = np.asarray(await self.encoder.embed(parts), dtype=np.float32)
        cosines = vectors @ self.matrix.T
        best = int(cosines.argmax())
        return float(cosines.flat[best]), best % self.matrix.shape[0]


WINDOW_WORDS = 40  # a question's length many times over, well inside the encoder's 256 tokens


class TooLong(ValueError):
    """A message of more parts than ``intents.max_parts`` allows."""

    def __init__(self, parts: int, most: int):
        super().__init__(f"the message is {parts} parts to compare, more than intents.max_parts ({most})")
        self.parts = parts


def parts_of(message: str, most: int) -> list[str]:
    """What of a message is compared: the message, and its sentences when it has several, a
    sentence longer than ``WINDOW_WORDS`` in overlapping windows of that many words (the encoder
    reads 256 tokens and no more: a question at the end of a long run-on text would go unread),
    each normalized as the cheap tier reads text (look-alike letters folded, spaced-out letters
    joined). Past ``most`` parts, ``TooLong``: every part is compared, or the message is refused."""
    from railstack.core.sentences import split_sentences
    from railstack.core.text import normalize

    pieces: list[str] = []
    for sentence in split_sentences(message) or [message]:
        words = sentence.split()
        step = WINDOW_WORDS // 2
        if len(words) <= WINDOW_WORDS:
            pieces.append(sentence)
        else:
            pieces += [" ".join(words[i : i + WINDOW_WORDS]) for i in range(0, len(words) - step, step)]
    # The whole message too, where the encoder reads all of it.
    whole = [message] if len(pieces) != 1 and len(message.split()) <= 2 * WINDOW_WORDS else []
    parts = [normalize(part).text for part in whole + pieces]
    if len(parts) > most:
        raise TooLong(len(parts), most)
    return parts


def last_user_message(text: str, ctx: CheckContext) -> str:
    # As NeMo's own intent matching, the intent is the last user turn's.
    return next((said for role, said in reversed(ctx.dialogue) if role == "user"), text)


async def check(text: str, ctx: CheckContext) -> Verdict:
    settings = ctx.settings.intents
    index: Any = ctx.resource
    message = last_user_message(text, ctx)
    if not message.strip():
        return Verdict.allow(score=0.0)
    try:
        parts = parts_of(message, settings.max_parts)
    except TooLong as exc:  # not compared whole: refused, as a check that cannot judge fails closed
        return Verdict.block(str(exc), parts=exc.parts, model=settings.model)
    similarity, nearest = await index.nearest(parts)
    intent, example = index.examples[nearest]
    facts = {"intent": intent, "example": example, "parts": len(parts), "model": settings.model}
    if similarity >= settings.threshold:
        return Verdict.block(
            f"the message asks '{intent}' (cosine {similarity:.3f} to the example {example!r} >= {settings.threshold:g})",
            score=similarity, answer=index.answers[intent], **facts,
        )
    return Verdict.allow(score=similarity, **facts)
