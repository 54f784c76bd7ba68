"""Shared file helpers of facefuse.data: atomic writes and image encode/decode."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
from PIL import Image

from facefuse.errors import DataFormatError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_SIZE = 112


def default_workers() -> int:
    """Returns the thread count for batch image work: decoders release the GIL, so threads scale."""
    return max(1, min(8, os.cpu_count() or 1))


def run_each(work: Callable[[int], None], n: int, workers: Optional[int] = None,
             min_parallel: int = 8) -> None:
    """Calls ``work(j)`` for j in 0..n-1, on a thread pool when the batch is big enough."""
    workers = workers or default_workers()
    if workers == 1 or n < min_parallel:
        for j in range(n):
            work(j)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, range(n)))


def _umask() -> int:
    """Returns the process umask without changing it (Linux /proc; 0o022 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO]:
    """Yields a file object whose content appears at ``path`` only if the block completes.

    The temp file lives in the destination directory so ``os.replace`` is a same-filesystem rename:
    a crash leaves a stray ``.tmp`` file, never a half-written file under the real name. Its name
    is unique (mkstemp), so processes writing the same file at once never share a temp file: the
    last rename wins and every reader sees one whole version. The finished file has the
    permissions the umask gives, and its bytes are on disk before it appears under its name.
    Every file the project writes in place goes through here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; the finished file gets what open() would have given it, so
        # other users' trials on a shared node can read datasets and checkpoints
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename makes it visible under its name
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Returns the path after writing ``text`` to it through ``atomic_write``."""
    with atomic_write(path, "w") as fh:
        fh.write(text)
    return Path(path)


def atomic_write_json(path: PathLike, data: Any, indent: int = 1) -> None:
    """Writes ``data`` as JSON through ``atomic_write`` (readers see the old file or the new)."""
    with atomic_write(path, "w") as fh:
        fh.write(json.dumps(data, indent=indent, sort_keys=True, default=str))


def encode_image(image: np.ndarray, image_format: str = "jpg", quality: int = 95) -> bytes:
    """Returns the JPEG or PNG encoding of an RGB uint8 HxWx3 (or HxW) image."""
    fmt = image_format.lower()
    if fmt in ("jpg", "jpeg"):
        pil_format, kwargs = "JPEG", {"quality": int(quality)}
    elif fmt == "png":
        pil_format, kwargs = "PNG", {}
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f"expected a uint8 HxWx3 RGB image, got dtype {arr.dtype} shape {arr.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format=pil_format, **kwargs)
    return buf.getvalue()


def encode_images(images: Sequence[np.ndarray], image_format: str = "jpg", quality: int = 95,
                  workers: Optional[int] = None) -> list[bytes]:
    """Returns the encodings of a batch of images, encoded on a thread pool."""
    workers = workers or default_workers()
    if workers == 1 or len(images) < 8:
        return [encode_image(im, image_format, quality) for im in images]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda im: encode_image(im, image_format, quality), images))


def decode_image(payload: bytes, source: PathLike, item: str,
                 size: Optional[tuple[int, int]] = (IMAGE_SIZE, IMAGE_SIZE)) -> np.ndarray:
    """Returns an encoded image as RGB uint8 HxWx3; ``size`` (H, W) is enforced when given.

    Errors name ``source`` (the file holding the payload) and ``item`` (which image in it).
    """
    try:
        with Image.open(io.BytesIO(payload)) as im:
            im.load()
            rgb = im.convert("RGB") if im.mode != "RGB" else im
            arr = np.asarray(rgb, dtype=np.uint8)
    except Exception as exc:  # PIL raises many types for corrupt data; all mean "not an image"
        raise DataFormatError(source, f"cannot decode image: {exc}", field=item,
                              fix="re-export the file; the encoded image bytes are corrupt") from exc
    if size is not None and arr.shape[:2] != tuple(size):
        raise DataFormatError(
            source, f"image is {arr.shape[1]}x{arr.shape[0]} (WxH), expected {size[1]}x{size[0]}",
            field=item, fix="faces must be aligned 112x112 crops; align/resize them before packing")
    return arr


def decode_images(payloads: Sequence[bytes], source: PathLike, items: Sequence[str],
                  size: Optional[tuple[int, int]] = (IMAGE_SIZE, IMAGE_SIZE),
                  workers: Optional[int] = None) -> np.ndarray:
    """Returns a batch of encoded images decoded on a thread pool, as uint8 [n, H, W, 3]."""
    n = len(payloads)
    if size is None:
        raise ValueError("decode_images needs a fixed size to stack a batch")
    out = np.empty((n, size[0], size[1], 3), dtype=np.uint8)
    if n == 0:
        return out

    def work(i: int) -> None:
        out[i] = decode_image(payloads[i], source, items[i], size)

    workers = workers or default_workers()
    if workers == 1 or n < 8:
        for i in range(n):
            work(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            # list() re-raises the first worker exception here
            list(pool.map(work, range(n)))
    return out
