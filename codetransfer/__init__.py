"""codetransfer: mechanistic interpretability of code→reasoning transfer."""

__version__ = "0.1.0"
