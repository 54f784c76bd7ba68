"""Exceptions with messages that name the file, the field and the fix."""

from __future__ import annotations

import os
from typing import Optional, Union

PathLike = Union[str, "os.PathLike[str]"]


class FacefuseError(Exception):
    """Base class of every error the platform raises on purpose.

    The command layer turns these into one clear line and a non-zero exit code.
    """


class DataFormatError(FacefuseError, ValueError):
    """A data file is missing, truncated, corrupt or not in the expected format."""

    def __init__(self, path: Optional[PathLike], message: str, field: Optional[str] = None,
                 fix: Optional[str] = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.field = field
        self.fix = fix
        parts = []
        if self.path is not None:
            parts.append(f"{self.path}:")
        if field:
            parts.append(f"[{field}]")
        parts.append(message)
        if fix:
            parts.append(f"-- {fix}")
        super().__init__(" ".join(parts))


class ConfigError(DataFormatError):
    """A job file, search space or argument is invalid."""


class UnsafePickleError(DataFormatError):
    """A pickle or checkpoint tried to reference a global outside the allow-list."""


class StorageError(DataFormatError):
    """A store named by a URI (local path, shared mount, s3://) cannot be reached, read or written."""


class ResourcesError(FacefuseError, RuntimeError):
    """The Ray cluster could not give a trial the resources it asked for in time."""
