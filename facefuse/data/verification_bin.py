"""insightface verification sets (.bin): a pickle of (list of encoded images, list of issame)."""

from __future__ import annotations

import logging
import os
import pickle
from typing import Sequence, Union

import numpy as np

from facefuse.data._io import IMAGE_SIZE, atomic_write, decode_images, encode_images
from facefuse.data.safe_pickle import safe_load
from facefuse.errors import DataFormatError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Protocol 4 stores bytes with the BINBYTES opcodes; protocol 2 from Python 3 would store them as a
# call to _codecs.encode, a global that any restricted loader (ours included) must refuse.
BIN_PICKLE_PROTOCOL = 4


def read_verification_bin(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [2N, 112, 112, 3] RGB, issame bool [N]) of an insightface .bin file.

    The pickle is loaded with a restricted unpickler: a file naming any global is refused with
    ``UnsafePickleError`` and nothing in it runs. Images must be 112x112 (the shipped sets are);
    another size is an error rather than a silent resize.
    """
    obj = safe_load(path)
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise DataFormatError(path, f"expected a pickled pair (bins, issame_list), got {type(obj).__name__}",
                              field="root", fix="the file is not an insightface verification .bin")
    bins, issame_list = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame_list, (list, tuple)):
        raise DataFormatError(path, "expected two lists (encoded images, issame flags)", field="root",
                              fix="the file is not an insightface verification .bin")
    for i, b in enumerate(bins):
        if not isinstance(b, (bytes, bytearray)):
            raise DataFormatError(path, f"entry is {type(b).__name__}, expected encoded image bytes",
                                  field=f"bins[{i}]", fix="re-pack the set with encoded JPEG/PNG bytes")
    for i, s in enumerate(issame_list):
        # bool is a subclass of int; 0/1 ints are accepted as the same flags
        if not isinstance(s, int) or s not in (0, 1):
            raise DataFormatError(path, f"issame flag is {s!r}, expected a bool",
                                  field=f"issame_list[{i}]", fix="re-pack the set with bool flags")
    if len(bins) != 2 * len(issame_list):
        raise DataFormatError(path, f"{len(bins)} images for {len(issame_list)} pairs; expected 2 per pair",
                              field="bins", fix="the file is truncated or was packed incorrectly")
    images = decode_images(bins, path, [f"bins[{i}]" for i in range(len(bins))],
                           size=(IMAGE_SIZE, IMAGE_SIZE))
    issame = np.asarray([bool(s) for s in issame_list], dtype=bool)
    logger.debug("read %s: %d pairs", path, len(issame))
    return images, issame


def write_verification_bin(path: PathLike, images: np.ndarray | Sequence[np.ndarray],
                           issame: Sequence[bool] | np.ndarray, image_format: str = "jpg",
                           quality: int = 95) -> None:
    """Writes images (uint8 [2N, 112, 112, 3] RGB) and issame [N] as an insightface .bin, atomically.

    Pair k is (images[2k], images[2k+1]), as insightface packs them. The file holds python bytes and
    python bools only, so it loads with insightface's ``pickle.load(f, encoding='bytes')`` and with
    our restricted loader.
    """
    issame_list = [bool(s) for s in np.asarray(issame).reshape(-1)]
    n_images = len(images)
    if n_images != 2 * len(issame_list):
        raise DataFormatError(path, f"{n_images} images for {len(issame_list)} pairs; expected 2 per pair",
                              field="images", fix="pass two images per issame flag")
    for i, im in enumerate(images):
        arr = np.asarray(im)
        if arr.dtype != np.uint8 or arr.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise DataFormatError(path, f"image {i} has dtype {arr.dtype} shape {arr.shape}",
                                  field=f"images[{i}]", fix="pass uint8 [112, 112, 3] RGB images")
    bins = encode_images([np.asarray(im) for im in images], image_format, quality)
    with atomic_write(path) as fh:
        pickle.dump((bins, issame_list), fh, protocol=BIN_PICKLE_PROTOCOL)
    logger.debug("wrote %s: %d pairs", path, len(issame_list))
