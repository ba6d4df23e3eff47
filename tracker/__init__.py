"""Collateral telematics tracking server: all I/O lives in this package."""

__version__ = "0.1.0"
