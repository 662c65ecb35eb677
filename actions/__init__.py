"""NeMo actions of the railstack rails (each file is also file-loaded by NeMo: no state here)."""
