"""Imports every capability module, so that their line planners and step handlers
are registered. Import this (not the modules one by one) wherever plans are made
or steps are run."""

from provisioner.pipeline import steps  # noqa: F401 - invoice issuance, e-mails, activation
