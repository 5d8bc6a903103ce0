"""The one exception type that the CLI turns into a clear message and a non-zero exit."""


class HifieditError(Exception):
    """A user-facing error: bad input, missing files, mismatched checkpoints."""
