"""The lakera rail: Lakera Guard, the hosted screening API (prompt attacks, PII, moderation), on
the conversation and on the answer. ``client`` speaks the API, ``check`` is the rail."""
