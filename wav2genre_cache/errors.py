"""Every error a user can fix, in one module (as scikit-learn keeps its exceptions).

All derive from Wav2GenreError, so the command line catches one type, once, and prints its
message as one line (exit status 2). Anything else that escapes is a bug and keeps its
traceback. Each class says which stage raises it:

- OptionError: an option value that cannot be used (any command).
- AudioError (AudioTooLong): a file that cannot be decoded into usable audio (audio/).
- DatasetError: a dataset folder, manifest or label map that cannot be read (data/).
- BackboneError: an encoder that cannot be loaded (encoders/).
- HeadError (BundleError): a head or bundle that cannot be built, saved or loaded (heads/, store/).
- CalibrationError: scores or a method that calibration cannot use (evaluation/).
- CacheError: a cache that cannot be used as asked (store/).
- TrainError: a cache or request stage two cannot use (stage_two/).
- RayEngineError: the Ray engine cannot run as asked (stage_one/).
- FinetuneError: a fine-tuning run that cannot go on (finetune/).
- ReportError: a run folder that cannot be reported on (report/).
- OutputBusy: another run is writing the same output (cli/locks.py).
- OutputError: a predictions file that cannot be written as asked (inference/outputs.py).
- ExportError: a bundle that cannot be exported to ONNX, or an export that cannot be run (inference/onnx_*.py).

Interrupted is not among them: it is a KeyboardInterrupt (Ctrl-C), raised by a stage that knows
what its output keeps, and the command line prints it as one line with exit status 130.
"""

from __future__ import annotations


class Wav2GenreError(Exception):
    """A problem the user can fix; the message says what to do."""


class OptionError(Wav2GenreError):
    """An option whose value cannot be used (an unknown name, a number out of range)."""


class AudioError(Wav2GenreError):
    """A file that cannot be turned into usable audio; the message names the problem."""


class AudioTooLong(AudioError):
    """Audio longer than a service accepts (the server answers 413, not 422)."""


class DatasetError(Wav2GenreError):
    """A dataset that cannot be read; the message names the file and the problem."""


class BackboneError(Wav2GenreError):
    """The backbone cannot be loaded; the message says what to do."""


class HeadError(Wav2GenreError):
    """A head that cannot be built, saved or loaded; the message says why."""


class CalibrationError(Wav2GenreError):
    """Scores, labels or a calibration method that cannot be used; the message says which."""


class CacheError(Wav2GenreError):
    """A cache that cannot be used as asked; the message says why."""


class BundleError(HeadError):
    """A bundle folder that cannot be used (missing, altered, or not for this model)."""


class TrainError(Wav2GenreError):
    """A cache or request that training cannot use; the message says why."""


class RayEngineError(Wav2GenreError):
    """The Ray engine cannot run as asked (not installed, a cluster it cannot reach)."""


class FinetuneError(Wav2GenreError):
    """A fine-tuning run that cannot go on; the message says why and what is kept."""


class ReportError(Wav2GenreError):
    """A run folder that cannot be reported on; the message says why."""


class OutputBusy(Wav2GenreError):
    """Another run is writing the same output (its lock names the process)."""


class OutputError(Wav2GenreError):
    """A predictions file that cannot be written as asked (it exists, or another bundle made it)."""


class ExportError(Wav2GenreError):
    """A bundle that cannot be exported to ONNX, or an ONNX export that cannot be used."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what the output keeps and how to go on."""
