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


def install_warning_format() -> None:
    """Print warnings as one line, ``warning: <message>``, on stderr (no category, file or source line).

    For command-line entry points: a data warning is a message to the user, not a report for a developer.
    Calling it twice is harmless.
    """
    import sys
    import warnings

    def showwarning(message, category, filename, lineno, file=None, line=None):
        stream = file if file is not None else sys.stderr
        if stream is None:
            return
        try:
            stream.write(formatwarning(message, category, filename, lineno, line))
        except OSError:
            pass

    def formatwarning(message, category, filename, lineno, line=None):
        text = " ".join(str(message).split("\n"))
        return f"warning: {text}\n"

    warnings.showwarning = showwarning
    warnings.formatwarning = formatwarning
    # torch.compile on a machine without a GPU logs "No CUDA runtime is found, using CUDA_HOME=..." when it builds
    # CPU kernels: true and irrelevant there, and it reads like a fault. Other messages of that logger stay.
    import logging

    cpp = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCudaRuntimeNote) for f in cpp.filters):
        cpp.addFilter(_NoCudaRuntimeNote())


class _NoCudaRuntimeNote:
    """A logging filter that drops torch's "No CUDA runtime is found" note (see :func:`install_warning_format`)."""

    def filter(self, record) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()
