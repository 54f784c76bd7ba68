"""Input checks shared by the protocols: every failure names the argument and the row."""

from __future__ import annotations

from typing import Any

import numpy as np

from facefuse.errors import DataFormatError


def _fail(field: str, message: str, fix: str) -> DataFormatError:
    return DataFormatError(None, message, field=field, fix=fix)


def float_matrix(name: str, x: Any, dtype: type = np.float64) -> np.ndarray:
    """Returns `x` as a 2-D array of `dtype` whose rows are all finite."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise _fail(name, f"{name} must be a 2-D array [rows, dims], got shape {arr.shape}",
                    "pass one embedding per row")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise _fail(name, f"{name} has dtype {arr.dtype}, expected a float array",
                    "pass numeric embeddings")
    arr = arr.astype(dtype, copy=False)
    check_finite_rows(name, arr)
    return arr


def check_finite_rows(name: str, arr: np.ndarray, row_offset: int = 0) -> None:
    """Returns None; raises naming the first row of `arr` that holds NaN or infinity."""
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = finite.reshape(len(arr), -1).all(axis=1) if arr.ndim > 1 else finite
    row = int(np.flatnonzero(~bad)[0]) + row_offset
    raise _fail(name, f"{name} row {row} contains NaN or infinity",
                "check the model output for that input (a diverged model or a broken image)")


def float_vector(name: str, x: Any) -> np.ndarray:
    """Returns `x` as a finite 1-D float64 array."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise _fail(name, f"{name} must be 1-D, got shape {arr.shape}", "pass one value per row")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == np.bool_):
        raise _fail(name, f"{name} has dtype {arr.dtype}, expected numbers", "pass numeric values")
    arr = arr.astype(np.float64, copy=False)
    check_finite_rows(name, arr)
    return arr


def int_vector(name: str, x: Any) -> np.ndarray:
    """Returns `x` as a 1-D int64 array (integral floats accepted)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise _fail(name, f"{name} must be 1-D, got shape {arr.shape}", "pass one id per row")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        ok = np.isfinite(arr) & (arr == np.round(arr))
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise _fail(name, f"{name} row {row} is {arr[row].item()!r}, not an integer id",
                        "template and media ids are integers")
        return arr.astype(np.int64)
    raise _fail(name, f"{name} has dtype {arr.dtype}, expected integer ids", "pass integer ids")


def binary_labels(name: str, x: Any) -> np.ndarray:
    """Returns `x` as a 1-D bool array; raises naming the first value that is not 0/1."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise _fail(name, f"{name} must be 1-D, got shape {arr.shape}", "pass one label per pair")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise _fail(name, f"{name} has dtype {arr.dtype}, expected 0/1 labels",
                    "pass 1 for same identity and 0 for different identities")
    ok = (arr == 0) | (arr == 1)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise _fail(name, f"{name} row {row} is {arr[row].item()!r}, expected 0 or 1",
                    "pass 1 for same identity and 0 for different identities")
    return arr == 1


def same_length(**arrays: np.ndarray) -> int:
    """Returns the common length of the named arrays; raises naming the first that differs."""
    names = list(arrays)
    n = len(arrays[names[0]])
    for name in names[1:]:
        if len(arrays[name]) != n:
            raise _fail(name, f"{name} has {len(arrays[name])} rows but {names[0]} has {n}",
                        f"pass {', '.join(names)} with one row each per item")
    return n
