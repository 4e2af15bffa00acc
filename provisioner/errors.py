"""One error root, few subclasses (certbot's errors.py is the model)."""

from __future__ import annotations

from typing import Any


class ProvisionerError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigurationError(ProvisionerError):
    """The installation is misconfigured (missing secret, bad URL, ...)."""


class InvalidInput(ProvisionerError):
    """The customer's or caller's fault. Never retried."""


class InvalidSignature(InvalidInput):
    """A payment notification whose signature does not verify."""


class NotFound(InvalidInput):
    """The caller named something that does not exist."""


class Conflict(InvalidInput):
    """The request contradicts the current state (e.g. paying a cancelled proforma)."""


class TransientError(ProvisionerError):
    """Retryable: timeouts, a busy registry, a host that is rebooting."""


class StepFailed(ProvisionerError):
    """A pipeline step failed for good."""

    def __init__(self, step_key: str, detail: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(f"{step_key}: {detail}")
        self.step_key = step_key
        self.detail = detail
        self.data = data or {}
