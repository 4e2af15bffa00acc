"""Domain registries over EPP (RFC 5730-5734): the client, per-TLD profiles, errors."""

from provisioner.adapters.registry.client import (
    CheckResult,
    ContactInfo,
    DomainCreated,
    DomainInfo,
    EppClient,
    PollMessage,
    RegistryConfig,
    TransferInfo,
)
from provisioner.adapters.registry.errors import (
    AuthorizationFailed,
    ObjectExists,
    ObjectNotFound,
    OutcomeUnknown,
    RegistryLoginFailed,
    RegistryRefused,
    RegistryUnavailable,
    StatusProhibits,
    error_for,
)
from provisioner.adapters.registry.profiles import RegistryContact, TldProfile, profile_for

__all__ = [
    "AuthorizationFailed", "CheckResult", "ContactInfo", "DomainCreated", "DomainInfo",
    "EppClient", "ObjectExists", "ObjectNotFound", "OutcomeUnknown", "PollMessage",
    "RegistryConfig", "RegistryContact", "RegistryLoginFailed", "RegistryRefused",
    "RegistryUnavailable", "StatusProhibits", "TldProfile", "TransferInfo", "error_for",
    "profile_for",
]
