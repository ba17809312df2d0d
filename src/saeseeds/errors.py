"""The one base class of user errors, which both entry points catch.

A :class:`UserError` carries a message that names the bad value and what would be valid; the
entry scripts print it on one line and exit non-zero, never with a traceback. Anything else that
escapes is a bug and keeps its traceback. This module imports nothing.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a config value, a file, a folder); ``exit_code`` is the status."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A config value is out of range or inconsistent."""


class DataError(UserError, ValueError):
    """Bad data input: a missing or malformed file, too few tokens, an unknown hook, ..."""


class OutputError(UserError, OSError):
    """An output cannot be written: the folder is unwritable, the disk or quota is full, ...

    Also an :class:`OSError`, so code that handles failed writes keeps working.
    """
