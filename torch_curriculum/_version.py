"""Single source of the library version (read by setup.cfg and written into every artefact)."""

__version__ = "0.1.0"
