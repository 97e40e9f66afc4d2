"""Errors a user can act on. The CLI prints their message, never a traceback."""


class VlaEdgeError(Exception):
    """Base class: the message says what went wrong and what to do about it."""


class ConfigError(VlaEdgeError):
    """The configuration file or an environment override is invalid."""


class BundleError(VlaEdgeError):
    """A model bundle is missing, corrupted, unsigned or inconsistent."""
