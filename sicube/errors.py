"""Exceptions that separate a user's bad input from a bug."""


class SicubeError(Exception):
    """Base class for errors sicube raises on purpose."""


class BadInput(SicubeError, ValueError):
    """The caller gave something sicube cannot use; the CLI prints it on one line and exits 2."""


class BadSourceFile(SicubeError):
    """A daily source file is not a usable AMSR2 grid (not netCDF, wrong variables, wrong grid)."""


class SourceUnavailable(SicubeError):
    """A server could not be reached or kept failing (refused, timed out, 5xx after retries)."""
