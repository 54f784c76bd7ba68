"""Readers and writers of the face benchmark formats, 5-point alignment and the dataset registry.

Formats are the ones the community ships (insightface .bin verification sets, MXNet RecordIO
training sets, IJB-B/C folders) plus image folders; nothing here needs mxnet or the network.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

from facefuse.data.align import ARCFACE_TEMPLATE, align_face, alignment_backend, similarity_matrix
from facefuse.data.ijb import IJBSet, read_ijb, write_ijb
from facefuse.data.imagefolder import ImageFolderDataset
from facefuse.data.recordio import (IRHeader, RecordIODataset, RecordIOReader, RecordIOWriter, pack_record,
                                    unpack_record, write_recordio_dataset)
from facefuse.data.registry import (DATA_ROOT_ENV, DATASETS, DatasetSpec, dataset_path, get_dataset,
                                    resolve_data_root)
from facefuse.data.safe_pickle import safe_load, safe_loads
from facefuse.data.verification_bin import read_verification_bin, write_verification_bin
from facefuse.errors import ConfigError

PathLike = Union[str, "os.PathLike[str]"]


def load_verification_set(name: str, root: Optional[PathLike] = None) -> Union[tuple[np.ndarray, np.ndarray], IJBSet]:
    """Returns a registered evaluation set: (images, issame) for a .bin set, an IJBSet for an IJB set."""
    spec = get_dataset(name)
    path = dataset_path(name, root)
    if spec.kind == "verification":
        return read_verification_bin(path)
    if spec.kind == "ijb":
        assert spec.ijb_name is not None
        return read_ijb(path, spec.ijb_name)
    raise ConfigError(None, f"dataset {name!r} is a {spec.kind} training set, not an evaluation set",
                      field="dataset", fix="use load_train_set for training sets")


def load_train_set(name: str, root: Optional[PathLike] = None) -> Union[RecordIODataset, ImageFolderDataset]:
    """Returns a registered training set as a RecordIODataset or ImageFolderDataset."""
    spec = get_dataset(name)
    path = dataset_path(name, root)
    if spec.kind == "recordio":
        return RecordIODataset(path)
    if spec.kind == "imagefolder":
        return ImageFolderDataset(path)
    raise ConfigError(None, f"dataset {name!r} is a {spec.kind} evaluation set, not a training set",
                      field="dataset", fix="use load_verification_set for evaluation sets")


__all__ = [
    "ARCFACE_TEMPLATE", "DATASETS", "DATA_ROOT_ENV", "DatasetSpec", "IJBSet", "IRHeader", "ImageFolderDataset",
    "RecordIODataset", "RecordIOReader", "RecordIOWriter", "align_face", "alignment_backend", "dataset_path",
    "get_dataset", "load_train_set", "load_verification_set", "pack_record", "read_ijb", "read_verification_bin",
    "resolve_data_root", "safe_load", "safe_loads", "similarity_matrix", "unpack_record", "write_ijb",
    "write_recordio_dataset", "write_verification_bin",
]
