"""Overload control: bounded stages that shed at once, health, and the gated main model."""
