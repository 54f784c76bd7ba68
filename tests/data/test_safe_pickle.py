"""Tests of facefuse/data/safe_pickle.py: plain data loads, every global is refused before it runs."""

from __future__ import annotations

import os
import pickle

import pytest

from facefuse.data.safe_pickle import safe_load, safe_loads
from facefuse.errors import DataFormatError, UnsafePickleError


class _TouchFile:
    """Unpickling this object runs a shell command that creates a file (a real malicious pickle)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch '{self.target}'",))


class _ExecCode:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').close()",))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_data_round_trips(protocol: int) -> None:
    obj = ([b"\xff\xd8abc", b"xy"], [True, False], {"a": 1.5, 2: None}, (1, -3, 2**70), "s", {1, 2})
    if protocol < 4:
        # protocols 0-3 store sets (and 0-2 Python 3 bytes) as calls to globals, which are refused
        obj = obj[1:-1]
    assert safe_loads(pickle.dumps(obj, protocol=protocol)) == obj


@pytest.mark.parametrize("gadget", [_TouchFile, _ExecCode])
@pytest.mark.parametrize("protocol", [0, 2, 5])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, gadget, protocol) -> None:
    target = tmp_path / "pwned"
    payload = pickle.dumps(([gadget(str(target))], [b"jpeg"]), protocol=protocol)
    bad = tmp_path / "evil.bin"
    bad.write_bytes(payload)
    with pytest.raises(UnsafePickleError) as info:
        safe_load(bad)
    assert not target.exists()
    message = str(info.value)
    assert str(bad) in message
    expected = ".system" if gadget is _TouchFile else ".exec"
    assert expected in message and "refused" in message
    # the same bytes really are malicious: a plain pickle.loads runs the command
    if gadget is _TouchFile:
        pickle.loads(payload)
        assert target.exists()


def test_bytes_via_codecs_global_is_refused() -> None:
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        safe_loads(pickle.dumps([b"abc"], protocol=2))


def test_persistent_id_is_refused() -> None:
    data = b"P42\n."  # protocol 0 PERSID opcode
    with pytest.raises(UnsafePickleError, match="persistent"):
        safe_loads(data)


@pytest.mark.parametrize("cut", [1, 5, 20, -1])
def test_truncated_pickle_names_the_file(tmp_path, cut: int) -> None:
    data = pickle.dumps(([b"a" * 50, b"b" * 50], [True]), protocol=4)
    path = tmp_path / "cut.bin"
    path.write_bytes(data[:cut])
    with pytest.raises(DataFormatError) as info:
        safe_load(path)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, UnsafePickleError)


def test_garbage_is_a_data_format_error(tmp_path) -> None:
    path = tmp_path / "junk.bin"
    path.write_bytes(b"this is not a pickle at all")
    with pytest.raises(DataFormatError, match="junk.bin"):
        safe_load(path)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        safe_load(tmp_path / "nope.bin")
