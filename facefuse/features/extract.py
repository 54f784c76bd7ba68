"""Running frozen backbones over image batches: the one code path for cached and on-the-fly maps."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from facefuse.backbones.iresnet import to_input

logger = logging.getLogger(__name__)

#: Name of the preprocessing applied before the backbone; part of every cache key, so a change
#: of normalisation or alignment invalidates old entries instead of silently reusing them.
PREPROCESSING = "rgb112-pm1-v1"


@torch.no_grad()
def extract_maps(backbone: torch.nn.Module, images: np.ndarray, flip: bool = False,
                 device: Optional[torch.device] = None) -> np.ndarray:
    """Returns the backbone's last feature maps [N, C, 7, 7] as float16 for uint8 RGB images.

    On CUDA the backbone runs under fp16 autocast on channels-last input (``to_cuda_input``); on
    the CPU in float32, as ``to_input`` gives it.
    """
    device = device or next(backbone.parameters()).device
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.float16):
            fmap = backbone.forward_features(to_cuda_input(images, flip, device))
    else:
        fmap = backbone.forward_features(to_input(images, flip=flip).to(device))
    # fp16 is what the cache stores; rounding here too keeps on-the-fly maps bit-identical.
    return fmap.to(torch.float16).contiguous().cpu().numpy()


def to_cuda_input(images: np.ndarray, flip: bool, device: torch.device) -> torch.Tensor:
    """Returns ``to_input(images, flip)`` computed on the GPU, channels-last ([N, 3, H, W] view
    of NHWC memory).

    The uint8 images cross to the device (a quarter of float32's bytes) and are converted there;
    an NHWC tensor permuted to NCHW already has channels-last strides, so no copy is made for
    the layout. Same element-wise operations as ``to_input``, so the same values.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3] uint8, got shape {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float()  # [N,H,W,3] -> [N,3,H,W], memory stays NHWC
    if flip:
        x = torch.flip(x, dims=[3])
    return x.div_(127.5).sub_(1.0).contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class ImageSource:
    """A dataset's images, readable in index batches without loading the whole set."""

    name: str
    count: int
    read: Callable[[np.ndarray], np.ndarray]  # indices -> uint8 [n, 112, 112, 3]

    def batches(self, batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yields (start offset, uint8 images) batches covering the whole dataset in order."""
        for start in range(0, self.count, batch_size):
            idx = np.arange(start, min(start + batch_size, self.count))
            yield start, self.read(idx)


def image_source(name: str, data_root: Path) -> ImageSource:
    """Returns the ImageSource of a registered dataset (verification .bin, IJB folder or train set)."""
    from facefuse.data import dataset_path
    from facefuse.errors import DataFormatError

    source = _image_source(name, data_root)
    if source.count == 0:  # the cache would fail later with a bare StopIteration
        raise DataFormatError(dataset_path(name, data_root), f"dataset {name!r} has no images",
                              field="images", fix="re-create or re-download the dataset")
    return source


def _image_source(name: str, data_root: Path) -> ImageSource:
    from facefuse.data import (RecordIODataset, ImageFolderDataset, dataset_path, get_dataset,
                               read_ijb, read_verification_bin)

    spec = get_dataset(name)
    path = dataset_path(name, data_root)
    if spec.kind == "verification":
        images, _ = read_verification_bin(path)
        return ImageSource(name, len(images), lambda idx: images[idx])
    if spec.kind == "ijb":
        ijb = read_ijb(path, spec.ijb_name)
        return ImageSource(name, len(ijb.templates), lambda idx: ijb.aligned_images(idx))
    if spec.kind == "recordio":
        ds = RecordIODataset(path)
        return ImageSource(name, len(ds), lambda idx: ds.images(idx))
    if spec.kind == "imagefolder":
        ds = ImageFolderDataset(path)
        return ImageSource(name, len(ds), lambda idx: ds.images(idx))
    raise ValueError(f"dataset {name!r} has unknown kind {spec.kind!r}")


def maps_for_indices(backbone: torch.nn.Module, source: ImageSource, indices: Sequence[int],
                     flip: bool) -> np.ndarray:
    """Returns float16 maps for arbitrary indices (the on-the-fly data path)."""
    return extract_maps(backbone, source.read(np.asarray(indices)), flip=flip)
