"""railstack's sentence encoder as NeMo's embedding provider ``railstack``, so that NeMo's own
indexes (the knowledge base, user intents) run on the same offline encoder as the intents rail:

    models:
      - type: embeddings
        engine: railstack
        model: all-MiniLM-L6-v2     # the packaged weights (the `embeddings` extra), or a local directory
        parameters: {device: auto}  # and sha256, precision, max_batch, max_delay_ms
"""

from __future__ import annotations

from typing import Any

from railstack.nemo import compat

ENGINE = "railstack"
PARAMETERS = ("sha256", "device", "precision", "max_batch", "max_delay_ms")
SETTING = "the `model` of the config's `type: embeddings` model"
_registered: list[type] = []


class EmbeddingsConfigError(ValueError):
    """A config's embedding model would not run offline as railstack runs it."""


def provider() -> type:
    """The provider class (made once: its base is NeMo's, imported only when needed)."""
    if _registered:
        return _registered[0]
    from railstack.engines.encoder import encoder

    class RailstackEmbeddings(compat.embedding_provider_base()):  # type: ignore[misc]
        engine_name = ENGINE

        def __init__(self, embedding_model: str, **parameters: Any):
            unknown = sorted(set(parameters) - set(PARAMETERS))
            if unknown:
                raise EmbeddingsConfigError(f"embedding engine {ENGINE!r}: unknown parameters {', '.join(unknown)} "
                                            f"(it takes {', '.join(PARAMETERS)})")
            self.encoder = encoder(embedding_model, setting=SETTING, **parameters)

        async def encode_async(self, documents: list[str]) -> list[list[float]]:
            return [list(vector) for vector in await self.encoder.embed(documents)]

        def encode(self, documents: list[str]) -> list[list[float]]:
            return [list(vector) for vector in self.encoder.embed_now(documents)]

    compat.register_embedding_provider(RailstackEmbeddings, ENGINE)
    _registered.append(RailstackEmbeddings)
    return RailstackEmbeddings


def install(config: Any) -> None:
    """Register the provider and load the config's railstack encoders now, so that a missing or
    mismatched encoder stops the config at start-up, not at its first request. A config that would
    make NeMo build an index with its implicit default (FastEmbed, which downloads its model from
    the hub) is refused: offline it fails late; online it downloads behind the user's back."""
    cls = provider()
    models = compat.embeddings_models(config)
    for engine, model, parameters in models:
        if engine == ENGINE:
            cls(model, **parameters)
    if not models:
        needs = compat.embedding_index_users(config)
        if needs:
            raise EmbeddingsConfigError(
                f"this config has NeMo build an embedding index ({needs}) with no embedding model configured, so NeMo "
                "would download its default (FastEmbed) from the Hugging Face hub: add `models: [{type: embeddings, "
                f"engine: {ENGINE}, model: all-MiniLM-L6-v2}}]` (pip install 'railstack[embeddings]'), or name "
                "another embedding engine explicitly"
            )
