"""Ready config dirs: serve this folder with `nemoguardrails server --config`."""
