"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class GenlabError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


class DataError(GenlabError):
    """A corpus or data set that cannot be used (missing, empty, binary, not UTF-8)."""


class RunError(GenlabError):
    """A run directory that is missing, corrupted, or of another model family."""


class ConfigError(GenlabError):
    """An unknown preset, a bad hyper-parameter or an impossible budget."""
