"""The one base of every failure clare-dist reports to a person.

A `ClareError` is a refusal whose message says what to fix (a file, a flag, a run directory, a
bundle); the command line prints it and exits 2. Anything else escaping a command is a bug and
keeps its traceback. Each subclass also keeps the built-in base it had before (ValueError,
RuntimeError, KeyError, FileNotFoundError), so callers that catch those still do.
"""

from __future__ import annotations


class ClareError(Exception):
    """A failure a person can act on from its message alone."""


class UsageError(ClareError, ValueError):
    """A command-line value outside what the command accepts."""


class ResultEncodingError(ClareError, ValueError):
    """A screening, or a source, that a result for hospital systems (DICOM SR or Secondary Capture,
    FHIR) cannot be made of; the message names what is missing, never a patient's value."""
