"""Typed errors that carry their exit code and a one-line message for the user.

The CLI prints `str(error)` on one line and exits with `error.exit_code`; a traceback
is shown only with --debug. Raise these for anything the user can fix.
"""

from __future__ import annotations


class LmprofError(Exception):
    """An error the user can fix: the message says what is wrong and what to do."""

    exit_code = 2


class UsageError(LmprofError):
    """Bad arguments: a non-positive count, an unwritable folder, a bad option value."""


class ModelNotFoundError(LmprofError):
    """No model at the path, no such preset, or a hub id neither cached nor reachable."""


class ModelLoadError(LmprofError):
    """The model files exist but cannot be loaded (no weights, corrupt safetensors...)."""


class RunFileError(LmprofError):
    """A saved run cannot be read: missing, not JSON, or of an unknown schema version."""
