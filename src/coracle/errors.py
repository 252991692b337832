"""The error vocabulary shared by every layer.

Each error carries the HTTP status the Engine API answers with, so that the
API layer can translate any engine failure into Docker's `{"message": ...}`
shape without knowing where it came from.
"""


class CoracleError(Exception):
    """Base of every error that is meant to reach a user as a clear message."""

    status = 500


class InvalidParameter(CoracleError):
    """The request itself is wrong (bad CIDR, bad port, bad flag value)."""

    status = 400


class NotFound(CoracleError):
    """A named object (container, image, network, exec) does not exist."""

    status = 404


class Conflict(CoracleError):
    """The request clashes with current state (name taken, port in use, running)."""

    status = 409


class NotModified(CoracleError):
    """Nothing to do (start of a running container, stop of a stopped one)."""

    status = 304


class PayloadTooLarge(CoracleError):
    """A request body beyond the daemon's limit."""

    status = 413


class Unavailable(CoracleError):
    """The feature is off on this daemon (swarm mode): Docker's 503."""

    status = 503


class NotImplemented_(CoracleError):
    """The object cannot do this (a container whose log driver keeps nothing): Docker's 501."""

    status = 501


class SystemError_(CoracleError):
    """The host refused (kernel feature missing, disk full): not the caller's fault."""

    status = 500
