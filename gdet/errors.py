"""User-facing errors: the CLI prints them as one line and exits non-zero, with no traceback."""


class GdetError(Exception):
    """An error caused by the user's input (a file, a config, an argument).

    The message must stand on its own as one line and name the file and the problem,
    e.g. ``"annotations.json: line 3: expected ',' ..."``.
    """


class DataError(GdetError):
    """A dataset, annotation or image file is missing, corrupt or inconsistent."""


class CheckpointError(GdetError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


class ConfigError(GdetError):
    """A config file or a ``key=value`` override is invalid."""
