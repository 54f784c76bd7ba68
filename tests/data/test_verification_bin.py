"""Tests of facefuse/data/verification_bin.py: insightface .bin round trips and refusals."""

from __future__ import annotations

import io
import os
import pickle
import struct

import numpy as np
import pytest
from PIL import Image

from facefuse.data import read_verification_bin, write_verification_bin
from facefuse.errors import DataFormatError, UnsafePickleError

from .conftest import smooth_images


def _py2_bin(bins: list[bytes], issame: list[bool]) -> bytes:
    """Returns the bytes Python 2's pickle.dump((bins, issame), f, protocol=2) writes (str = BINSTRING)."""
    out = [b"\x80\x02", b"]"]  # PROTO 2, EMPTY_LIST
    for b in bins:
        out.append(b"T" + struct.pack("<I", len(b)) + b + b"a")  # BINSTRING, APPEND
    out.append(b"]")
    for s in issame:
        out.append((b"\x88" if s else b"\x89") + b"a")  # NEWTRUE/NEWFALSE, APPEND
    out.append(b"\x86.")  # TUPLE2, STOP
    return b"".join(out)


def test_round_trip_jpeg(tmp_path, images6) -> None:
    path = tmp_path / "lfw.bin"
    write_verification_bin(path, images6, [True, False, True])
    images, issame = read_verification_bin(path)
    assert images.dtype == np.uint8 and images.shape == (6, 112, 112, 3)
    assert issame.dtype == bool and issame.tolist() == [True, False, True]
    assert np.abs(images.astype(int) - images6).mean() < 3.0


def test_round_trip_png_is_lossless(tmp_path, images6) -> None:
    path = tmp_path / "lfw.bin"
    write_verification_bin(path, images6, np.array([True, False, False]), image_format="png")
    images, issame = read_verification_bin(path)
    np.testing.assert_array_equal(images, images6)


def test_file_is_what_insightface_loads(tmp_path, images6) -> None:
    path = tmp_path / "x.bin"
    write_verification_bin(path, images6, [True, False, True])
    with open(path, "rb") as fh:  # insightface's own loading line
        bins, issame_list = pickle.load(fh, encoding="bytes")
    assert type(bins) is list and all(type(b) is bytes for b in bins)
    assert issame_list == [True, False, True] and all(type(s) is bool for s in issame_list)
    assert bins[0][:2] == b"\xff\xd8"  # JPEG SOI
    assert Image.open(io.BytesIO(bins[3])).size == (112, 112)


def test_reads_python2_protocol2_pickle(tmp_path, images6) -> None:
    bins = []
    for im in images6[:4]:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="PNG")
        bins.append(buf.getvalue())
    path = tmp_path / "py2.bin"
    path.write_bytes(_py2_bin(bins, [False, True]))
    images, issame = read_verification_bin(path)
    np.testing.assert_array_equal(images, images6[:4])
    assert issame.tolist() == [False, True]


def test_grayscale_images_become_rgb(tmp_path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((112, 112), 77, np.uint8)).save(buf, format="PNG")
    path = tmp_path / "g.bin"
    path.write_bytes(pickle.dumps(([buf.getvalue()] * 2, [True]), protocol=4))
    images, _ = read_verification_bin(path)
    assert images.shape == (2, 112, 112, 3) and (images == 77).all()


def test_malicious_bin_is_refused(tmp_path) -> None:
    target = tmp_path / "created"

    class Gadget:
        def __reduce__(self):
            return (os.system, (f"touch '{target}'",))

    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([b"x", Gadget()], [True]), protocol=4))
    with pytest.raises(UnsafePickleError) as info:
        read_verification_bin(path)
    assert str(path) in str(info.value) and "system" in str(info.value)
    assert not target.exists()


def test_numpy_issame_is_refused_with_a_fix(tmp_path, images6) -> None:
    path = tmp_path / "np.bin"
    path.write_bytes(pickle.dumps(([b"x", b"y"], np.array([True])), protocol=4))
    with pytest.raises(UnsafePickleError, match="numpy"):
        read_verification_bin(path)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_bin_names_the_file(tmp_path, images6, keep: float) -> None:
    path = tmp_path / "cut.bin"
    write_verification_bin(path, images6, [True, False, True])
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DataFormatError) as info:
        read_verification_bin(path)
    assert str(path) in str(info.value)


def test_corrupt_image_names_the_entry(tmp_path) -> None:
    good = io.BytesIO()
    Image.fromarray(smooth_images(1)[0]).save(good, format="JPEG")
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(([good.getvalue(), b"\xff\xd8 not a jpeg"], [True]), protocol=4))
    with pytest.raises(DataFormatError, match=r"bins\[1\]") as info:
        read_verification_bin(path)
    assert str(path) in str(info.value)


def test_wrong_image_size_is_an_error(tmp_path) -> None:
    buf = io.BytesIO()
    Image.fromarray(smooth_images(1, size=(96, 112))[0]).save(buf, format="PNG")
    path = tmp_path / "s.bin"
    path.write_bytes(pickle.dumps(([buf.getvalue()] * 2, [True]), protocol=4))
    with pytest.raises(DataFormatError, match="112x96"):
        read_verification_bin(path)


@pytest.mark.parametrize("obj, field", [
    ([b"a"], "root"),
    (([b"a", b"b", b"c"], [True]), "bins"),
    (([b"a", "text"], [True]), r"bins\[1\]"),
    (([b"a", b"b"], [2]), r"issame_list\[0\]"),
])
def test_wrong_structure(tmp_path, obj, field) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(DataFormatError, match=field):
        read_verification_bin(path)


def test_writer_checks_inputs_and_leaves_no_file(tmp_path, images6) -> None:
    path = tmp_path / "o.bin"
    with pytest.raises(DataFormatError):
        write_verification_bin(path, images6, [True, False])
    with pytest.raises(DataFormatError):
        write_verification_bin(path, images6[:, :100], [True, False, True])
    assert list(tmp_path.iterdir()) == []
