"""A pickle loader that builds plain data only and refuses every global.

Every way a pickle can run code (GLOBAL/STACK_GLOBAL/INST/OBJ opcodes, the copyreg extension
registry) goes through ``Unpickler.find_class``, so refusing it there means no callable ever
reaches the stack and REDUCE/BUILD have nothing to call. What remains is what the opcodes build
by themselves: None, bools, ints, floats, str, bytes, bytearray, tuples, lists, dicts and sets.
"""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, NoReturn, Union

from facefuse.errors import DataFormatError, UnsafePickleError

PathLike = Union[str, "os.PathLike[str]"]


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global and every persistent id."""

    def __init__(self, file: Any, source: PathLike | None, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._source = source

    def find_class(self, module: str, name: str) -> NoReturn:
        raise UnsafePickleError(
            self._source, f"pickle references the global {module}.{name}; refused, nothing was run",
            field=f"{module}.{name}",
            fix="only plain containers, bytes, bools and numbers are accepted; re-create the file "
                "from a trusted source (numpy objects must be converted to lists/bytes first)")

    def persistent_load(self, pid: Any) -> NoReturn:
        raise UnsafePickleError(self._source, f"pickle uses persistent id {pid!r}; refused",
                                field="persistent_id", fix="re-create the file without persistent ids")


def safe_loads(data: bytes, source: PathLike | None = None, encoding: str = "bytes") -> Any:
    """Returns the plain-data object of a pickle; refuses globals, wraps corrupt data errors.

    ``encoding='bytes'`` keeps Python 2 ``str`` objects (how the insightface .bin files were
    written) as bytes, the same as insightface's ``pickle.load(f, encoding='bytes')``.
    """
    stream = io.BytesIO(data)
    try:
        return RestrictedUnpickler(stream, source, encoding=encoding).load()
    except DataFormatError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, OverflowError, MemoryError, UnicodeDecodeError) as exc:
        raise DataFormatError(source, f"truncated or corrupt pickle: {type(exc).__name__}: {exc}",
                              field=f"pickle byte {stream.tell()} of {len(data)}",
                              fix="re-download or re-create the file") from exc


def safe_load(path: PathLike, encoding: str = "bytes") -> Any:
    """Returns the plain-data object stored in a pickle file (see ``safe_loads``)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise DataFormatError(path, "file not found", fix="check the data root and dataset name") from exc
    return safe_loads(data, source=path, encoding=encoding)
