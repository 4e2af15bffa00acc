"""Provisioner: a paid proforma becomes real hosting resources."""

__version__ = "0.1.0"
