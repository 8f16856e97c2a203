"""The one place the version is written: everything imports it from here, never the package root."""

__version__ = "0.1.0"
