"""The project's domain errors: one base class, messages written for the user.

The CLI prints these without a traceback and exits non-zero; dashboard pages
show them with ``st.error``. Anything else that escapes is a bug.
"""

from __future__ import annotations


class InterpretError(Exception):
    """Base of every error whose message is meant for the user."""

    exit_code = 2


class ModelError(InterpretError):
    """Unknown architecture, unusable weights, or a model the decomposition cannot handle."""


class OfflineError(ModelError):
    """A pretrained tag was asked for but no model hub is reachable."""


class InputError(InterpretError):
    """Bad user input: a missing folder, an empty pool, a corrupt upload, a bad option value."""


class RunDirError(InterpretError):
    """A run directory that conflicts with the request (other model, other layers, ...)."""


class QueryError(InterpretError):
    """Ad hoc SQL that was refused or failed."""
