"""Image folders (root/<identity>/*.jpg|png) as a training source, same interface as RecordIODataset."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from facefuse.data._io import IMAGE_SIZE, decode_image, run_each
from facefuse.errors import DataFormatError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


class ImageFolderDataset:
    """Faces in root/<identity>/<image>; identities sorted by name get labels 0..K-1.

    Files within an identity are sorted by name too, so indices are stable across machines. Every
    image must be an aligned 112x112 face (no silent resize).
    """

    def __init__(self, root: PathLike, image_size: tuple[int, int] = (IMAGE_SIZE, IMAGE_SIZE)) -> None:
        self.root = Path(root)
        self.image_size = image_size
        if not self.root.is_dir():
            raise DataFormatError(self.root, "image folder not found",
                                  fix="check the data root (FACEFUSE_DATA) and the dataset name")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not self.classes:
            raise DataFormatError(self.root, "no identity sub-folders", field="identity folders", fix="lay images out as root/<identity>/*.jpg")
        files: list[Path] = []
        labels: list[int] = []
        for label, cls in enumerate(self.classes):
            found = sorted(p for p in (self.root / cls).iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataFormatError(self.root / cls, "identity folder has no .jpg/.jpeg/.png images", field="images",
                                      fix="remove the empty folder or add its images; labels follow folder order")
            files.extend(found)
            labels.extend([label] * len(found))
        self.files = files
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> bytes:
        return self.files[index].read_bytes()

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        path = self.files[index]
        return decode_image(self._read(index), path, "image", self.image_size), int(self.labels[index])

    def images(self, indices: Optional[Sequence[int] | np.ndarray] = None) -> np.ndarray:
        """Returns the decoded images at ``indices`` (all when None) as uint8 [n, H, W, 3]."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((idx.size, *self.image_size, 3), dtype=np.uint8)

        def work(j: int) -> None:
            i = int(idx[j])
            out[j] = decode_image(self._read(i), self.files[i], "image", self.image_size)

        run_each(work, idx.size)
        return out

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, images={len(self)}, identities={self.num_classes})"
