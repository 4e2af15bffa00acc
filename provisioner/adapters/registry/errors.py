"""EPP result codes mapped onto the package's errors (RFC 5730 section 3).

Every error raised for a registry answer carries the EPP ``code`` and the registry's
``reason`` text, so a caller (and the ops alert) sees exactly what the registry said.
"""

from __future__ import annotations

from provisioner.errors import (
    ConfigurationError,
    Conflict,
    InvalidInput,
    NotFound,
    ProvisionerError,
    TransientError,
)


class _EppDetail:
    code: int | None = None
    reason: str = ""

    def _set(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason


class RegistryRefused(InvalidInput, _EppDetail):
    """The registry refused the command for good (syntax, parameter policy, ...)."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self._set(code, reason)


class ObjectExists(Conflict, _EppDetail):
    """2302: the name (or contact / host id) is already registered."""

    def __init__(self, message: str, code: int | None = 2302, reason: str = "") -> None:
        super().__init__(message)
        self._set(code, reason)


class ObjectNotFound(NotFound, _EppDetail):
    """2303: the object does not exist at the registry."""

    def __init__(self, message: str, code: int | None = 2303, reason: str = "") -> None:
        super().__init__(message)
        self._set(code, reason)


class StatusProhibits(Conflict, _EppDetail):
    """2304 (and 2105, 2106, 2300, 2301, 2305): the object's state forbids the command."""

    def __init__(self, message: str, code: int | None = 2304, reason: str = "") -> None:
        super().__init__(message)
        self._set(code, reason)


class AuthorizationFailed(InvalidInput, _EppDetail):
    """2201 / 2202: not our object, or a wrong transfer (auth) code."""

    def __init__(self, message: str, code: int | None = 2202, reason: str = "") -> None:
        super().__init__(message)
        self._set(code, reason)


class RegistryLoginFailed(ConfigurationError, _EppDetail):
    """2200 on login: our registrar credentials are wrong."""

    def __init__(self, message: str, code: int | None = 2200, reason: str = "") -> None:
        super().__init__(message)
        self._set(code, reason)


class RegistryUnavailable(TransientError, _EppDetail):
    """2400, 2500-2502, a refused connection, a timeout before anything was sent: retry."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self._set(code, reason)


class OutcomeUnknown(RegistryUnavailable):
    """A transforming command was sent but no answer came back (timeout, dropped
    connection). The registry may or may not have executed it: observe (``info``)
    before any retry."""


_STATUS_CODES = frozenset({2105, 2106, 2300, 2301, 2304, 2305})
_TRANSIENT_CODES = frozenset({2400, 2500, 2501, 2502})
#: After these codes the server closes the connection (RFC 5730 section 3).
CLOSING_CODES = frozenset({2500, 2501, 2502})


def error_for(code: int, message: str, command: str, reason: str = "") -> ProvisionerError:
    """The exception for a failed EPP result (code >= 2000)."""
    detail = f"registry refused {command}: {code} {message}" + (f" ({reason})" if reason else "")
    if code == 2302:
        return ObjectExists(detail, code, reason or message)
    if code == 2303:
        return ObjectNotFound(detail, code, reason or message)
    if code in _STATUS_CODES:
        return StatusProhibits(detail, code, reason or message)
    if code in (2201, 2202):
        return AuthorizationFailed(detail, code, reason or message)
    if code == 2200:
        return RegistryLoginFailed(detail, code, reason or message)
    if code in _TRANSIENT_CODES:
        return RegistryUnavailable(detail, code, reason or message)
    return RegistryRefused(detail, code, reason or message)
