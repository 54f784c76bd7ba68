"""Tests of facefuse/data/ijb.py: IJB folder round trips, bad meta, aligned batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from facefuse.data import ARCFACE_TEMPLATE, read_ijb, write_ijb
from facefuse.data.align import warp_affine
from facefuse.data.ijb import meta_paths
from facefuse.errors import DataFormatError

from .conftest import smooth_images


def _make_set(root: Path, name: str = "ijbx") -> dict:
    """Writes a 5-face, 3-template IJB set whose crops are known warps of known faces."""
    faces = smooth_images(5, seed=11)
    crops, landmarks = [], []
    for j, face in enumerate(faces):
        s, a = 1.0 + 0.15 * j, np.deg2rad(-10 + 5 * j)
        fwd = np.array([[s * np.cos(a), -s * np.sin(a), 0.0], [s * np.sin(a), s * np.cos(a), 0.0]])
        size = (250 + 10 * j, 260)  # (W, H)
        fwd[:, 2] = np.array([size[0] / 2, size[1] / 2]) - fwd[:, :2] @ np.array([56.0, 56.0])
        full = warp_affine(face, fwd, size=max(size))
        crops.append(full[: size[1], : size[0]])
        landmarks.append(ARCFACE_TEMPLATE.astype(np.float64) @ fwd[:, :2].T + fwd[:, 2])
    args = dict(crops=crops, image_names=["1.jpg", "2.jpg", "sub/3.jpg", "4.jpg", "5.png"],
                templates=[10, 10, 20, 30, 30], medias=[100, 101, 200, 300, 300],
                landmarks=np.array(landmarks, np.float32), face_scores=[0.99, 0.5, 0.875, 1.0, 0.25],
                p1=[10, 10, 20], p2=[20, 30, 30], labels=[1, 0, 0])
    write_ijb(root, name, **args)
    return dict(args, faces=faces)


def test_round_trip(tmp_path) -> None:
    made = _make_set(tmp_path)
    ijb = read_ijb(tmp_path, "ijbx")
    assert ijb.name == "ijbx" and Path(ijb.root) == tmp_path and len(ijb) == 5
    assert ijb.image_names == made["image_names"]
    for field in ("templates", "medias", "p1", "p2", "labels"):
        arr = getattr(ijb, field)
        assert arr.dtype == np.int64 and arr.tolist() == list(made[field])
    assert ijb.landmarks.dtype == np.float32 and ijb.landmarks.shape == (5, 5, 2)
    np.testing.assert_array_equal(ijb.landmarks, made["landmarks"])  # float32 values survive exactly
    np.testing.assert_array_equal(ijb.face_scores, np.float32(made["face_scores"]))
    assert (tmp_path / "loose_crop" / "sub" / "3.jpg").is_file()
    lines = meta_paths(tmp_path, "ijbx")["tid_mid"].read_text().splitlines()
    assert lines[0] == "1.jpg 10 100"
    assert meta_paths(tmp_path, "ijbx")["pairs"].read_text().splitlines() == ["10 20 1", "10 30 0", "20 30 0"]
    assert meta_paths(tmp_path, "ijbx")["pts_score"].read_text().splitlines()[1].split()[-1] == "0.5"


def test_aligned_images_recover_the_faces(tmp_path) -> None:
    made = _make_set(tmp_path)
    ijb = read_ijb(tmp_path, "ijbx")
    aligned = ijb.aligned_images()
    assert aligned.shape == (5, 112, 112, 3) and aligned.dtype == np.uint8
    inner = (slice(None), slice(8, -8), slice(8, -8))
    assert np.abs(aligned[inner].astype(int) - made["faces"][inner]).mean() < 4.0
    some = ijb.aligned_images(np.array([4, 0]))
    np.testing.assert_array_equal(some, aligned[[4, 0]])
    np.testing.assert_array_equal(ijb.aligned_images([2], size=112)[0], ijb.aligned_image(2))


def _rewrite(path: Path, lineno: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("which, lineno, new, field", [
    ("tid_mid", 2, "2.jpg 10", "line 2"),
    ("tid_mid", 3, "sub/3.jpg twenty 200", "line 3, template_id"),
    ("tid_mid", 4, "4.jpg 30 3x", "line 4, media_id"),
    ("pts_score", 2, "2.jpg 1 2 3 4 5 6 7 8 9 0.5", "line 2"),
    ("pts_score", 3, "sub/3.jpg 1 2 3 4 5 abc 7 8 9 10 0.5", "line 3, y3"),
    ("pts_score", 1, "1.jpg 1 2 3 4 5 6 7 8 9 10 nan", "line 1, score"),
    ("pts_score", 5, "other.png 1 2 3 4 5 6 7 8 9 10 0.5", "line 5, image_name"),
    ("pairs", 1, "10 20", "line 1"),
    ("pairs", 2, "10 x 0", "line 2, template_id_2"),
    ("pairs", 3, "20 99 0", "line 3, template_id_2"),
    ("pairs", 3, "20 30 2", "line 3, label"),
])
def test_bad_meta_names_file_line_and_field(tmp_path, which, lineno, new, field) -> None:
    _make_set(tmp_path)
    path = meta_paths(tmp_path, "ijbx")[which]
    _rewrite(path, lineno, new)
    with pytest.raises(DataFormatError) as info:
        read_ijb(tmp_path, "ijbx")
    message = str(info.value)
    assert str(path) in message and f"[{field}]" in message


def test_template_without_images_is_reported(tmp_path) -> None:
    _make_set(tmp_path)
    _rewrite(meta_paths(tmp_path, "ijbx")["pairs"], 2, "10 31 0")
    with pytest.raises(DataFormatError, match="template 31 has no images"):
        read_ijb(tmp_path, "ijbx")


def test_face_count_mismatch(tmp_path) -> None:
    _make_set(tmp_path)
    path = meta_paths(tmp_path, "ijbx")["pts_score"]
    path.write_text("\n".join(path.read_text().splitlines()[:4]) + "\n")
    with pytest.raises(DataFormatError, match="4 faces"):
        read_ijb(tmp_path, "ijbx")


def test_landmarks_outside_the_image(tmp_path) -> None:
    _make_set(tmp_path)
    path = meta_paths(tmp_path, "ijbx")["pts_score"]
    fields = path.read_text().splitlines()[3].split()
    fields[7] = "900"  # x4 of 4.jpg, a 280x260 crop
    _rewrite(path, 4, " ".join(fields))
    ijb = read_ijb(tmp_path, "ijbx")
    ijb.aligned_images([0, 1])  # other faces are fine
    with pytest.raises(DataFormatError) as info:
        ijb.aligned_images([0, 3])
    message = str(info.value)
    assert str(path) in message and "[line 4, x4/y4]" in message and "outside" in message


def test_missing_crop_and_missing_meta(tmp_path) -> None:
    _make_set(tmp_path)
    (tmp_path / "loose_crop" / "2.jpg").unlink()
    ijb = read_ijb(tmp_path, "ijbx")
    with pytest.raises(DataFormatError, match="2.jpg"):
        ijb.aligned_images([1])
    meta_paths(tmp_path, "ijbx")["pairs"].unlink()
    with pytest.raises(DataFormatError, match="template_pair_label.txt"):
        read_ijb(tmp_path, "ijbx")
    with pytest.raises(DataFormatError, match="not found"):
        read_ijb(tmp_path / "nope", "ijbx")


def test_reads_insightface_style_files_with_extra_columns(tmp_path) -> None:
    _make_set(tmp_path)
    # eval_ijbc.py only reads columns 1-2 / 0-2: extra columns and CRLF line ends are tolerated
    path = meta_paths(tmp_path, "ijbx")["tid_mid"]
    path.write_bytes(b"".join(line.encode() + b" extra\r\n" for line in path.read_text().splitlines()))
    assert read_ijb(tmp_path, "ijbx").templates.tolist() == [10, 10, 20, 30, 30]


def test_writer_validates(tmp_path) -> None:
    made = _make_set(tmp_path / "ok")
    args = {k: v for k, v in made.items() if k != "faces"}
    with pytest.raises(DataFormatError, match="p1/p2"):
        write_ijb(tmp_path / "bad", "x", **dict(args, p2=[20, 30, 99]))
    with pytest.raises(DataFormatError, match="landmarks"):
        write_ijb(tmp_path / "bad", "x", **dict(args, landmarks=args["landmarks"][:, :4]))
    with pytest.raises(DataFormatError, match="image name"):
        write_ijb(tmp_path / "bad", "x", **dict(args, image_names=["a b.jpg", "2", "3", "4", "5"]))
    assert not (tmp_path / "bad" / "meta").exists()


def test_encoded_bytes_are_written_as_given(tmp_path) -> None:
    made = _make_set(tmp_path / "a")
    raw = (tmp_path / "a" / "loose_crop" / "1.jpg").read_bytes()
    args = {k: v for k, v in made.items() if k != "faces"}
    write_ijb(tmp_path / "b", "x", **dict(args, crops=[raw] * 5))
    assert (tmp_path / "b" / "loose_crop" / "4.jpg").read_bytes() == raw


@pytest.mark.parametrize("name", ["../escape.jpg", "sub/../../escape.jpg", "/etc/passwd"])
def test_image_names_leaving_loose_crop_are_refused_by_reader_and_writer(tmp_path, name) -> None:
    made = _make_set(tmp_path / "ok")
    args = {k: v for k, v in made.items() if k != "faces"}
    with pytest.raises(DataFormatError) as err:
        write_ijb(tmp_path / "bad", "x", **dict(args, image_names=["1.jpg", name, "3", "4", "5"]))
    msg = str(err.value)
    assert "\n" not in msg and "[line 2, image_name]" in msg and "tid_mid" in msg and name in msg
    assert not (tmp_path / "bad").exists() and not (tmp_path / "escape.jpg").exists()
    # a meta file edited by hand: the reader names the file and the line
    path = meta_paths(tmp_path / "ok", "ijbx")["tid_mid"]
    lines = path.read_text().splitlines()
    lines[2] = f"{name} 20 200"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataFormatError) as err:
        read_ijb(tmp_path / "ok", "ijbx")
    msg = str(err.value)
    assert msg.startswith(str(path)) and "[line 3, image_name]" in msg and "loose_crop" in msg
