"""The errors the core raises; the CLI prints them as one line, the web layer as JSON."""

from __future__ import annotations


class PlanktonError(Exception):
    """Base class for every error a user can act on."""


class ConfigError(PlanktonError):
    """The settings or the environment are wrong."""


class DatabaseUnavailable(PlanktonError):
    """The database server cannot be reached or started."""


class ImageRejected(PlanktonError):
    """A file is not an image we can store (corrupt, truncated, empty, too large, wrong format)."""


class UnknownModel(PlanktonError):
    """An embedding model name or checkpoint is not known or cannot be loaded."""


class UnknownImage(PlanktonError):
    """An image id does not exist, or has no embedding for the model asked for."""


class InvalidArgument(PlanktonError):
    """A parameter is outside what the operation accepts."""
