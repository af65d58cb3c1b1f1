"""The package's one error type for problems a user can fix, and the kinds that have no module.

Every module's own error class (AudioError, DatasetError, BackboneError, CacheError, HeadError,
TrainError, ReportError, BundleError) derives from Wav2GenreError, so the command line catches
one type, once, and prints its message as one line (exit status 2). Anything else that escapes
is a bug and keeps its traceback.
"""

from __future__ import annotations


class Wav2GenreError(Exception):
    """A problem the user can fix; the message says what to do."""


class OptionError(Wav2GenreError):
    """An option whose value cannot be used (an unknown name, a number out of range)."""


class BackboneError(Wav2GenreError):
    """The backbone cannot be loaded; the message says what to do."""
