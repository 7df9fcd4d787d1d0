"""The two kinds of failure the ``mvp-jax`` command tells apart.

``UserError``: bad input (a name, a path, a value, a file's contents); the message is one line
that names it. The CLI prints it and exits 2. Every bad-input exception of the package derives
from it (``ConfigError``, ``DataError``, ``CheckpointError``, ``ExportError``, ``RunError`` ...);
it is a ``ValueError`` so that Python callers can catch it as one.

Anything else that escapes is a bug: the CLI prints its traceback and exits 1.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input; ``str(e)`` is one line naming the input at fault."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist (or holds nothing usable)."""
