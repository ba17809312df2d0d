"""Exceptions of the analysis app that carry a message a user can act on, and the exit code."""

from __future__ import annotations

from saeseeds.errors import UserError


class AnalysisError(UserError):
    """Nothing can be analysed, or the request is invalid; the CLI exits with ``exit_code``."""


class AnalysisConfigError(AnalysisError):
    """A config value the schema cannot reject by type (a threshold outside [-1, 1], ...)."""


class RunFolderError(Exception):
    """One run folder cannot be used; the run is listed with this reason and the rest goes on."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
