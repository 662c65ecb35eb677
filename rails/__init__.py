"""Colang 1.0 flows of the railstack rails (package data)."""
