"""Exceptions that mean bad input rather than a bug. The scripts turn them into one `error:` line
and exit code 2 (core/cli.py); any other exception keeps its traceback."""


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and the file."""


class InputError(ValueError):
    """Bad input met while running (an unreadable image, a damaged file, an unsafe checkpoint)."""


class MissingInput(InputError, FileNotFoundError):
    """A file or folder that the config or command line names, or that a run needs, is not there;
    the message names it (and the key). A FileNotFoundError of any other kind is a bug and keeps
    its traceback."""


class RunInputError(InputError):
    """Bad input discovered after the run started (an unsafe checkpoint, a bad annotation file, ...):
    the scripts report it as one `error:` line, like bad input found before the start."""


class NonFiniteLoss(RuntimeError):
    """The training loss left the finite numbers; the message names the step and the last good checkpoint."""
