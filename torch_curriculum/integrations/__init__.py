"""Integrations with training frameworks; each submodule imports its framework (``hf``: transformers, accelerate, TRL)."""
