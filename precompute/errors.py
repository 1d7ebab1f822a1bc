"""The project's domain errors: one base class, messages written for the user.

The CLI prints these without a traceback and exits non-zero; dashboard pages
show them with ``st.error``. Anything else that escapes is a bug.
"""

from __future__ import annotations

import errno


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


# errno -> what to tell the user; pyarrow's IO errors often carry no errno, only the C library's text
_IO_REASONS = {
    errno.ENOSPC: ("no space left on the device", "No space left on device"),
    errno.EFBIG: ("file too large (a file-size limit, such as `ulimit -f`)", "File too large"),
    errno.EACCES: ("permission denied", "Permission denied"),
    errno.EPERM: ("operation not permitted", "Operation not permitted"),
    errno.EROFS: ("read-only file system", "Read-only file system"),
    errno.EDQUOT: ("disk quota exceeded", "Disk quota exceeded"),
}
IO_EXIT_CODE = 74  # sysexits.h EX_IOERR


def describe_io_error(e: OSError) -> str:
    """One line for an I/O failure: the path, the reason, and that rerunning resumes without losing work."""
    text = str(e)
    reason = next((why for code, (why, libc) in _IO_REASONS.items() if e.errno == code or libc in text), None)
    where = e.filename or ""
    detail = reason or (e.strerror or text)
    if not where and reason is None:
        detail = text
    elif not where:
        detail = f"{reason} ({text})"
    path = f" on {where}" if where else ""
    return (f"I/O error{path}: {detail}. Everything finished before it is kept; fix that and rerun the same "
            "command to resume.")
