"""An answer cut into the claims the NLI model judges."""

from __future__ import annotations


def claims(sentences: list[str], question: str, short_words: int) -> list[str]:
    """What is judged for each sentence: a short one ("Showbox.") says nothing on its own, so it
    is judged with the question it answers."""
    return [f"{question.strip()} {s}" if question and len(s.split()) < short_words else s for s in sentences]
