"""One error hierarchy for the whole package.

Every error a user can cause (bad input, a mismatched or damaged store, an impossible setting)
derives from LabelstoreError. The CLI prints such an error as one line, `error: <message>`,
and exits with status 2; anything else is a bug and keeps its traceback.

    LabelstoreError
      StoreError            a store that cannot be used as asked: wrong format, unfinished, corrupt, or
                            not writable (a full disk, a read-only file system: the message names the
                            store and says whether --resume finishes it)
        StoreMismatch       built from another dataset, teacher, policy or format version
      DataError             input data that cannot be read (the message names the file / row / line)
      ConfigError           an impossible configuration or argument, refused before anything is written
      TeacherOutputError    the teacher returned a wrong shape or NaN/inf (names the samples)
"""

from __future__ import annotations


class LabelstoreError(ValueError):
    """Base of every user-facing error (a ValueError, so callers catching ValueError still work)."""


class StoreError(LabelstoreError):
    """A store that cannot be used as asked: wrong format, unfinished, corrupt."""


class StoreMismatch(StoreError):
    """The store was built from another dataset, teacher or format than the one given."""


class DataError(LabelstoreError):
    """Input data that cannot be read or does not fit; the message names the file, row or line."""


class ConfigError(LabelstoreError):
    """An impossible configuration or argument, refused before anything is written."""


class TeacherOutputError(LabelstoreError):
    """The teacher returned a wrong shape or NaN/inf for some views (the message names them)."""
