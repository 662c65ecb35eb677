"""The llama_guard rail (Llama Guard 3/4, ShieldGemma). ``check`` is the rail; ``classifier``
loads a checkpoint into a ``SafetyModel``, which fits a dialogue into prompts (``trimming``, in
the family's format from ``families``: ``meta_format`` or ``shieldgemma_format``, under the
``policy``) and scores them through an engine (``local`` or ``remote``, per ``scoring``)."""
