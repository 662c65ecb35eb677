"""Model engines: checkpoint loading, the micro-batcher, the score cache and the engine pool."""
