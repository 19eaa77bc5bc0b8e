"""The package version (one source: the build reads it from here, the extension is stamped with it)."""

__version__ = "0.1.0"
