"""voicesearch: self-hosted speaker search."""

__version__ = "0.1.0"
