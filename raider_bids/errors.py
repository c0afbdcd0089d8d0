"""Errors a user can meet, each carrying its BIDS-Apps (BEP027) exit code.

    RaiderError (1)
    ├── UsageError (64)            bad command line or options
    ├── UnknownLevelError (17)     analysis level that is not participant/group
    ├── InputDataError (65)        the dataset holds something this app cannot use
    ├── MissingInputError (66)     a required file or value is absent
    ├── NoFilesSelectedError (18)  the filters selected no MEGRE runs
    ├── OutputError (73)           the output or work directory cannot be written
    └── ResourceError (1)          the run needs more memory than it may use
"""

from __future__ import annotations


class RaiderError(Exception):
    """Base class: a one-line message for the user and an exit code."""

    exit_code = 1


class UsageError(RaiderError):
    exit_code = 64


class UnknownLevelError(RaiderError):
    exit_code = 17


class InputDataError(RaiderError):
    exit_code = 65


class MissingInputError(RaiderError):
    exit_code = 66


class NoFilesSelectedError(RaiderError):
    exit_code = 18


class OutputError(RaiderError):
    exit_code = 73


class ResourceError(RaiderError):
    """BEP027 has no code of its own for this: the unspecified failure."""

    exit_code = 1
