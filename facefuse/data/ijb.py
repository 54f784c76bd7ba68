"""IJB-B / IJB-C 1:1 folders: meta tables, loose crops and their 5-point alignment.

Layout (as insightface's eval_ijbc.py reads it, ``name`` = 'ijbb' / 'ijbc'):
    root/meta/<name>_face_tid_mid.txt        image_name template_id media_id      (one line per face)
    root/meta/<name>_name_5pts_score.txt     image_name x1 y1 ... x5 y5 score     (same faces, same order)
    root/meta/<name>_template_pair_label.txt template_id_1 template_id_2 label    (label 1 = same person)
    root/loose_crop/<image_name>
Columns are separated by single spaces in the released files; any whitespace is accepted here.
eval_ijbc.py reads columns 1 and 2 of the tid_mid file and columns 0..2 of the pair file (extra
columns are ignored the same way), and takes the landmarks as the 10 values between the name and the
last column (the detector score), so that file must have exactly 12 columns.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from facefuse.data._io import atomic_write, default_workers, encode_image, run_each
from facefuse.data.align import align_face
from facefuse.errors import DataFormatError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Landmarks may sit a little outside a loose crop when a face touches its border; further out than
# this fraction of the crop size they cannot belong to it (a wrong file or swapped coordinates).
LANDMARK_MARGIN = 0.05


def meta_paths(root: PathLike, name: str) -> dict[str, Path]:
    """Returns the three meta file paths of an IJB set: keys 'tid_mid', 'pts_score', 'pairs'."""
    meta = Path(root) / "meta"
    return {"tid_mid": meta / f"{name}_face_tid_mid.txt",
            "pts_score": meta / f"{name}_name_5pts_score.txt",
            "pairs": meta / f"{name}_template_pair_label.txt"}


@dataclass
class IJBSet:
    """The tables of one IJB set; row m of every per-face array is line m+1 of the face files."""

    root: Path
    name: str
    image_names: list[str]
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    face_scores: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    labels: np.ndarray
    line_numbers: Optional[np.ndarray] = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.image_names)

    def __repr__(self) -> str:
        return (f"IJBSet(root={str(self.root)!r}, name={self.name!r}, faces={len(self)}, "
                f"templates={len(np.unique(self.templates))}, pairs={len(self.p1)})")

    @property
    def crop_dir(self) -> Path:
        """Returns the folder of the loose crops."""
        return Path(self.root) / "loose_crop"

    def image_path(self, index: int) -> Path:
        """Returns the loose-crop file of face ``index``."""
        return self.crop_dir / self.image_names[index]

    def _pts_location(self, index: int) -> tuple[Path, str]:
        line = int(self.line_numbers[index]) if self.line_numbers is not None else index + 1
        return meta_paths(self.root, self.name)["pts_score"], f"line {line}"

    def load_crop(self, index: int) -> np.ndarray:
        """Returns the loose crop of face ``index`` as RGB uint8 HxWx3."""
        path = self.image_path(index)
        try:
            with Image.open(path) as im:
                im.load()
                arr = np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8)
        except FileNotFoundError as exc:
            meta, where = self._pts_location(index)
            raise DataFormatError(path, f"loose crop listed in {meta} ({where}) is missing", field="image_name",
                                  fix="restore the loose_crop folder of the release") from exc
        except Exception as exc:  # PIL raises many types for corrupt data
            raise DataFormatError(path, f"cannot decode image: {exc}", field="image",
                                  fix="re-extract the loose_crop folder") from exc
        return arr

    def check_landmarks(self, index: int, width: int, height: int) -> None:
        """Raises DataFormatError when face ``index``'s landmarks lie outside its crop."""
        lm = self.landmarks[index]
        mx, my = LANDMARK_MARGIN * width, LANDMARK_MARGIN * height
        bad = (lm[:, 0] < -mx) | (lm[:, 0] > width + mx) | (lm[:, 1] < -my) | (lm[:, 1] > height + my)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            meta, where = self._pts_location(index)
            raise DataFormatError(meta, f"landmark {k + 1} ({lm[k, 0]:g}, {lm[k, 1]:g}) of "
                                  f"{self.image_names[index]} lies outside its {width}x{height} crop",
                                  field=f"{where}, x{k + 1}/y{k + 1}",
                                  fix="landmarks are pixel (x, y) coordinates in the loose crop")

    def aligned_image(self, index: int, size: int = 112) -> np.ndarray:
        """Returns face ``index`` aligned to the ArcFace template, RGB uint8 [size, size, 3]."""
        crop = self.load_crop(index)
        self.check_landmarks(index, crop.shape[1], crop.shape[0])
        try:
            return align_face(crop, self.landmarks[index], size)
        except ValueError as exc:
            meta, where = self._pts_location(index)
            raise DataFormatError(meta, str(exc), field=f"{where}, landmarks",
                                  fix="the 5 landmarks must be distinct points") from exc

    def aligned_images(self, indices: Optional[Sequence[int] | np.ndarray] = None, size: int = 112,
                       workers: Optional[int] = None) -> np.ndarray:
        """Returns the faces at ``indices`` (all when None) aligned, RGB uint8 [m, size, size, 3].

        Decoding and warping release the GIL, so a thread pool scales with cores.
        """
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((idx.size, size, size, 3), dtype=np.uint8)

        def work(j: int) -> None:
            out[j] = self.aligned_image(int(idx[j]), size)

        run_each(work, idx.size, workers, min_parallel=4)
        return out


def _inside_crop_dir(name: str) -> bool:
    """Returns whether an image name stays inside loose_crop/ (relative, no '..' component)."""
    parts = Path(name.replace("\\", "/")).parts
    return not os.path.isabs(name) and not name.startswith(("/", "\\")) and ".." not in parts


def _data_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Returns (line number, whitespace-split fields) of every non-blank line of a meta file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataFormatError(path, "meta file not found", fix="an IJB folder holds meta/ and loose_crop/") from exc
    rows = [(i, line.split()) for i, line in enumerate(text.splitlines(), 1)]
    rows = [(i, f) for i, f in rows if f]
    if not rows:
        raise DataFormatError(path, "meta file is empty", fix="restore the file from the release")
    return rows


def _need(path: Path, lineno: int, fields: list[str], n: int, names: str, exact: bool = False) -> None:
    if len(fields) < n or (exact and len(fields) != n):
        raise DataFormatError(path, f"{len(fields)} columns, expected {'exactly ' if exact else ''}{n} ({names})",
                              field=f"line {lineno}", fix=f"each line must read '{names}'")


def _parse(path: Path, lineno: int, column: str, value: str, kind: type) -> float | int:
    try:
        out = kind(value)
    except ValueError:
        raise DataFormatError(path, f"{column} is {value!r}, not a{'n integer' if kind is int else ' number'}",
                              field=f"line {lineno}, {column}", fix="fix or regenerate this line") from None
    if kind is float and not np.isfinite(out):
        raise DataFormatError(path, f"{column} is {value!r}", field=f"line {lineno}, {column}",
                              fix="landmarks and scores must be finite numbers")
    return out


_PTS_COLUMNS = ["x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4", "x5", "y5"]


def read_ijb(root: PathLike, name: str) -> IJBSet:
    """Returns the meta tables of the IJB set ``name`` ('ijbb', 'ijbc', ...) under ``root``.

    Every line is checked (column count, numbers, faces matching across the two face files,
    pair templates that have faces); landmarks are checked against each crop when it is aligned.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(root, "IJB folder not found", fix="check the data root (FACEFUSE_DATA)")
    paths = meta_paths(root, name)

    tid_rows = _data_lines(paths["tid_mid"])
    image_names: list[str] = []
    templates = np.empty(len(tid_rows), dtype=np.int64)
    medias = np.empty(len(tid_rows), dtype=np.int64)
    for m, (ln, f) in enumerate(tid_rows):
        _need(paths["tid_mid"], ln, f, 3, "image_name template_id media_id")
        if not _inside_crop_dir(f[0]):  # crop_dir / name would follow it out of loose_crop/
            raise DataFormatError(paths["tid_mid"], f"image name {f[0]!r} is absolute or leaves loose_crop/",
                                  field=f"line {ln}, image_name",
                                  fix="image names are paths relative to loose_crop/ without '..'")
        image_names.append(f[0])
        templates[m] = _parse(paths["tid_mid"], ln, "template_id", f[1], int)
        medias[m] = _parse(paths["tid_mid"], ln, "media_id", f[2], int)

    pts_rows = _data_lines(paths["pts_score"])
    if len(pts_rows) != len(tid_rows):
        raise DataFormatError(paths["pts_score"], f"{len(pts_rows)} faces but {paths['tid_mid'].name} lists "
                              f"{len(tid_rows)}", field="line count",
                              fix="both face files list the same faces in the same order")
    landmarks = np.empty((len(pts_rows), 5, 2), dtype=np.float32)
    scores = np.empty(len(pts_rows), dtype=np.float32)
    line_numbers = np.empty(len(pts_rows), dtype=np.int64)
    for m, (ln, f) in enumerate(pts_rows):
        _need(paths["pts_score"], ln, f, 12, "image_name x1 y1 x2 y2 x3 y3 x4 y4 x5 y5 score", exact=True)
        if f[0] != image_names[m]:
            raise DataFormatError(paths["pts_score"], f"image {f[0]!r} but line {tid_rows[m][0]} of "
                                  f"{paths['tid_mid'].name} is {image_names[m]!r}", field=f"line {ln}, image_name",
                                  fix="both face files list the same faces in the same order")
        landmarks[m] = np.array([_parse(paths["pts_score"], ln, c, v, float)
                                 for c, v in zip(_PTS_COLUMNS, f[1:11])], dtype=np.float32).reshape(5, 2)
        scores[m] = _parse(paths["pts_score"], ln, "score", f[11], float)
        line_numbers[m] = ln

    pair_rows = _data_lines(paths["pairs"])
    p1 = np.empty(len(pair_rows), dtype=np.int64)
    p2 = np.empty(len(pair_rows), dtype=np.int64)
    labels = np.empty(len(pair_rows), dtype=np.int64)
    known = set(templates.tolist())
    for k, (ln, f) in enumerate(pair_rows):
        _need(paths["pairs"], ln, f, 3, "template_id_1 template_id_2 label")
        p1[k] = _parse(paths["pairs"], ln, "template_id_1", f[0], int)
        p2[k] = _parse(paths["pairs"], ln, "template_id_2", f[1], int)
        labels[k] = _parse(paths["pairs"], ln, "label", f[2], int)
        for column, t in (("template_id_1", p1[k]), ("template_id_2", p2[k])):
            if int(t) not in known:
                raise DataFormatError(paths["pairs"], f"template {t} has no images in {paths['tid_mid'].name}",
                                      field=f"line {ln}, {column}", fix="the pair list and face list are from "
                                      "different releases; use matching files")
        if labels[k] not in (0, 1):
            raise DataFormatError(paths["pairs"], f"label is {labels[k]}, expected 0 or 1",
                                  field=f"line {ln}, label", fix="1 = same identity, 0 = different")
    logger.info("read %s/%s: %d faces, %d templates, %d pairs", root, name, len(image_names),
                len(known), len(p1))
    return IJBSet(root=root, name=name, image_names=image_names, templates=templates, medias=medias,
                  landmarks=landmarks, face_scores=scores, p1=p1, p2=p2, labels=labels,
                  line_numbers=line_numbers)


def _num(x: float) -> str:
    # shortest decimal that reads back as the same float32 ("0.9", not "0.899999976")
    return np.format_float_positional(np.float32(x), unique=True, trim="-")


def write_ijb(root: PathLike, name: str, crops: Sequence[np.ndarray | bytes], image_names: Sequence[str],
              templates: Sequence[int] | np.ndarray, medias: Sequence[int] | np.ndarray,
              landmarks: np.ndarray, face_scores: Sequence[float] | np.ndarray,
              p1: Sequence[int] | np.ndarray, p2: Sequence[int] | np.ndarray,
              labels: Sequence[int] | np.ndarray, quality: int = 95) -> None:
    """Writes an IJB set: root/loose_crop/<image_name> (JPEG) then the three meta files.

    ``crops``: RGB uint8 HxWx3 arrays (JPEG-encoded at ``quality``) or already-encoded bytes (written
    as they are, e.g. to control the compression artefacts). The meta files are written last, each
    atomically, so a set whose meta exists has all its crops.
    """
    root = Path(root)
    paths = meta_paths(root, name)
    m = len(image_names)
    templates = np.asarray(templates, dtype=np.int64).reshape(-1)
    medias = np.asarray(medias, dtype=np.int64).reshape(-1)
    landmarks = np.asarray(landmarks, dtype=np.float32)
    face_scores = np.asarray(face_scores, dtype=np.float32).reshape(-1)
    p1 = np.asarray(p1, dtype=np.int64).reshape(-1)
    p2 = np.asarray(p2, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    for what, n in (("crops", len(crops)), ("templates", templates.size), ("medias", medias.size),
                    ("landmarks", len(landmarks)), ("face_scores", face_scores.size)):
        if n != m:
            raise DataFormatError(root, f"{what} has {n} entries for {m} image names", field=what,
                                  fix="pass one entry per face")
    if landmarks.shape != (m, 5, 2):
        raise DataFormatError(root, f"landmarks shape {landmarks.shape}, expected ({m}, 5, 2)", field="landmarks",
                              fix="pass [M, 5, 2] (x, y) pixel landmarks")
    if not (p1.size == p2.size == labels.size):
        raise DataFormatError(root, "p1, p2 and labels differ in length", field="p1", fix="one entry per pair")
    for j, img_name in enumerate(image_names):
        if not img_name or any(c.isspace() for c in img_name) or not _inside_crop_dir(img_name):
            raise DataFormatError(paths["tid_mid"], f"image name {img_name!r} cannot be written: it is empty, "
                                  "holds whitespace, is absolute or leaves loose_crop/",
                                  field=f"line {j + 1}, image_name",
                                  fix="use names relative to loose_crop/ without whitespace or '..'")
    known = set(templates.tolist())
    missing = sorted({int(t) for t in np.concatenate([p1, p2]) if int(t) not in known})
    if missing:
        raise DataFormatError(root, f"pair templates {missing[:5]} have no faces", field="p1/p2",
                              fix="every paired template needs at least one face")
    if not set(np.unique(labels).tolist()) <= {0, 1}:
        raise DataFormatError(root, "pair labels must be 0 or 1", field="labels", fix="1 = same identity")

    def write_crop(j: int) -> None:
        crop = crops[j]
        data = bytes(crop) if isinstance(crop, (bytes, bytearray)) else encode_image(np.asarray(crop), "jpg", quality)
        with atomic_write(root / "loose_crop" / image_names[j]) as fh:
            fh.write(data)

    with ThreadPoolExecutor(default_workers()) as pool:
        list(pool.map(write_crop, range(m)))

    with atomic_write(paths["tid_mid"], "w") as fh:
        fh.writelines(f"{image_names[j]} {templates[j]} {medias[j]}\n" for j in range(m))
    with atomic_write(paths["pts_score"], "w") as fh:
        fh.writelines(" ".join([image_names[j], *(_num(v) for v in landmarks[j].reshape(-1)), _num(face_scores[j])])
                      + "\n" for j in range(m))
    with atomic_write(paths["pairs"], "w") as fh:
        fh.writelines(f"{a} {b} {c}\n" for a, b, c in zip(p1, p2, labels))
    logger.info("wrote %s/%s: %d faces, %d pairs", root, name, m, p1.size)
