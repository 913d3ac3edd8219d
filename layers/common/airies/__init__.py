"""Airies: the shared package of the platform (shipped as the Lambda layer)."""

__version__ = "0.1.0"
