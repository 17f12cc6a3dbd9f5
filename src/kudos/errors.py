"""Errors a user can cause. The CLI prints them as one line, without a traceback."""


class KudosError(Exception):
    """A mistake in user input (unknown task, malformed config, ...), with what to do about it."""


class UnknownTaskError(KudosError, KeyError):
    """A task name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ConfigError(KudosError, ValueError):
    """A malformed configuration file or override."""
