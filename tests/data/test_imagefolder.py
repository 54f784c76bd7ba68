"""Tests of facefuse/data/imagefolder.py: sorted identities, labels, decoding and errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from facefuse.data import ImageFolderDataset
from facefuse.errors import DataFormatError

from .conftest import smooth_images


def _write(root, layout: dict[str, list[str]], size=(112, 112)) -> dict:
    images = {}
    k = 0
    for ident, names in layout.items():
        (root / ident).mkdir(parents=True)
        for name in names:
            im = smooth_images(1, size=size, seed=k)[0]
            k += 1
            Image.fromarray(im).save(root / ident / name)
            images[(ident, name)] = im
    return images


def test_labels_follow_sorted_identities(tmp_path) -> None:
    images = _write(tmp_path, {"zed": ["b.png", "a.PNG"], "amy": ["x.jpg"], "bob": ["1.jpeg", "2.png"]})
    (tmp_path / "bob" / "notes.txt").write_text("ignored")
    ds = ImageFolderDataset(tmp_path)
    assert ds.classes == ["amy", "bob", "zed"] and ds.num_classes == 3
    assert len(ds) == 5 and ds.labels.dtype == np.int64 and ds.labels.tolist() == [0, 1, 1, 2, 2]
    assert [p.name for p in ds.files] == ["x.jpg", "1.jpeg", "2.png", "a.PNG", "b.png"]
    image, label = ds[4]
    assert label == 2 and image.dtype == np.uint8 and image.shape == (112, 112, 3)
    np.testing.assert_array_equal(image, images[("zed", "b.png")])  # PNG: lossless
    jpg, _ = ds[0]
    assert np.abs(jpg.astype(int) - images[("amy", "x.jpg")]).mean() < 3.0
    batch = ds.images([4, 2])
    np.testing.assert_array_equal(batch[0], image)
    assert ds.images().shape == (5, 112, 112, 3)


def test_errors(tmp_path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(DataFormatError, match="no identity"):
        ImageFolderDataset(tmp_path)
    _write(tmp_path, {"a": ["1.png"]})
    (tmp_path / "b").mkdir()
    with pytest.raises(DataFormatError) as info:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path / "b") in str(info.value)


def test_wrong_size_and_corrupt_image(tmp_path) -> None:
    _write(tmp_path, {"a": ["1.png"]}, size=(100, 90))
    (tmp_path / "a" / "2.jpg").write_bytes(b"not an image")
    ds = ImageFolderDataset(tmp_path)
    with pytest.raises(DataFormatError, match="90x100"):
        ds[0]
    with pytest.raises(DataFormatError) as info:
        ds[1]
    assert "2.jpg" in str(info.value)
