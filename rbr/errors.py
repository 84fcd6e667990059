"""Exceptions raised for invalid user input.

Every message names the file, line or row, the offending value and what to do
next. The CLI prints the message and exits 1 without a traceback.
"""


class RbrError(Exception):
    """Base class for errors caused by user input or files."""


class SpecError(RbrError):
    """The rule spec is invalid."""


class DataError(RbrError):
    """A data file (conversations, labels, fitting rows) is invalid."""


class WeightsError(RbrError):
    """A weights file is invalid or belongs to another spec."""


class BundleError(RbrError):
    """A bundle folder is incomplete, tampered with or of an unknown format."""
