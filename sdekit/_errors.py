"""Errors a user can act on. The CLI prints them as one line; anything else is a bug."""


class SdekitError(Exception):
    """Base class of every error sdekit raises for a user mistake."""


class UnknownNameError(SdekitError, KeyError):
    """A plugin name that no loaded plugin registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CompositionError(SdekitError):
    """Parts that cannot be combined (wrong dimensions, incompatible options)."""


class TargetError(SdekitError):
    """A target whose log-density has the wrong shape or is not finite."""


class PluginError(SdekitError):
    """A plugin that cannot be loaded or registers something malformed."""
