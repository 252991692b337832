"""How a build fails: a step's error (with the exit code the docker CLI passes on), or a cancel."""

from __future__ import annotations

from coracle.errors import CoracleError


class BuildError(CoracleError):
    """A step failed; `code` is what the docker CLI exits with (a RUN's exit code)."""

    status = 400

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class RunFailed(BuildError):
    """A RUN exited non-zero: its container is kept for a look unless `forcerm` (as Docker)."""


class BuildCancelled(CoracleError):
    """The client went away (or a stage beside this one failed): the build stops and cleans up."""
