"""Every exception and warning kstar raises on purpose, rooted at :class:`KStarError`.

A ``KStarError`` is a failure the *user* can fix (bad input, a missing file, a wrong profile key); its message is one
complete line that names the problem and the fix. The command line catches ``KStarError`` only and prints that line;
anything else is a programming error and keeps its traceback. Each class also derives from the built-in exception a
Python caller would expect (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class KStarError(Exception):
    """A failure the user can fix; ``str(error)`` is the whole advice."""


class KStarInputError(KStarError, ValueError):
    """Bad input to the k* engine or the command line; the message names the problem and the fix."""


class ProfileError(KStarError, ValueError):
    """A profile (built-in or a user's YAML) is malformed; the message names the file, the key and what is allowed."""


class DatasetNotFoundError(KStarError, FileNotFoundError):
    """A data set is not on disk and cannot be downloaded; the message names what to place where."""


class WeightsNotFoundError(KStarError, FileNotFoundError):
    """Model weights are missing (or broken); the message names the file to place and where."""


class UnsafeCheckpointError(KStarError, ValueError):
    """A checkpoint holds objects that only an unsafe (pickle) load could restore; it is refused, never unpickled."""


class LayerNotFoundError(KStarError, RuntimeError):
    """The requested layer cannot be found generically in this model; the message says what to use instead."""


class MissingDependencyError(KStarError, ImportError):
    """An optional dependency is missing; the message says what to install."""


class ReportFolderError(KStarError, OSError):
    """The report's output folder cannot be used (foreign files, not writable, a file); the message says why."""


class KStarWarning(UserWarning):
    """Base of kstar's warnings."""


class SmallClassWarning(KStarWarning):
    """A class has so few samples that its skewness says little."""


class ANNAccuracyWarning(KStarWarning):
    """The ANN path's audit found samples whose k* differs from the exact value."""


class CacheCorruptionWarning(KStarWarning):
    """A cache entry did not verify and is being recomputed."""
