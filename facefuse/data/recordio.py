"""MXNet RecordIO (train.rec + train.idx + property) read and written without mxnet.

Record framing (dmlc-core recordio): each part is ``uint32 magic 0xced7230a``, ``uint32 lrecord``
(upper 3 bits: continuation flag, lower 29 bits: part length), the part bytes, zero padding to a
multiple of 4. A payload that contains the magic word at a 4-byte-aligned position is split there
(the magic word dropped) into parts flagged 1 (first), 2 (middle), 3 (last); a whole record is
flagged 0. The reader joins the parts with the magic word put back. All words are little-endian.

Payload (mxnet.recordio.pack): IRHeader packed as ``IfQQ`` (flag, label, id, id2); when flag > 0
the label is a float32 array of ``flag`` values stored right after the header (and the header's
label field holds 0), then the image bytes.

Index: text lines ``key\\toffset`` (offset of the record's first part in the .rec).

insightface training sets (faces_emore and friends): records 1..N are images (header label =
identity), records N+1..N+K are identity records whose label is the [start, end) key range of that
identity's images, and record 0's label is [N+1, N+K+1), the key range of the identity records.
``property`` holds ``num_classes,height,width``.
"""

from __future__ import annotations

import logging
import numbers
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np

from facefuse.data._io import (IMAGE_SIZE, atomic_write, decode_image, decode_images, default_workers,
                               encode_images)
from facefuse.errors import DataFormatError

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

RECORDIO_MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
_LENGTH_BITS = 29
_LENGTH_MASK = (1 << _LENGTH_BITS) - 1
# mxnet packs with native 'IfQQ'; on every little-endian platform that is exactly '<IfQQ' (24 bytes,
# no padding), so the explicit form reads the files the same everywhere.
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)


class IRHeader(NamedTuple):
    """Header of an image record: flag (label length, 0 for a scalar label), label, id, id2."""

    flag: int
    label: Union[float, np.ndarray]
    id: int
    id2: int


def pack_record(header: IRHeader, payload: bytes) -> bytes:
    """Returns header + payload packed as mxnet.recordio.pack does (flag set from the label)."""
    label = header.label
    if isinstance(label, numbers.Number):
        head = struct.pack(IR_FORMAT, 0, float(label), int(header.id), int(header.id2))
        return head + bytes(payload)
    arr = np.asarray(label, dtype=np.float32).reshape(-1)
    if arr.size == 0:
        raise ValueError("an array label must have at least one value")
    head = struct.pack(IR_FORMAT, arr.size, 0.0, int(header.id), int(header.id2))
    return head + arr.astype("<f4").tobytes() + bytes(payload)


def unpack_record(record: bytes, source: Optional[PathLike] = None, where: str = "record") -> tuple[IRHeader, bytes]:
    """Returns (IRHeader, payload bytes) of a packed record, as mxnet.recordio.unpack does."""
    if len(record) < IR_SIZE:
        raise DataFormatError(source, f"record is {len(record)} bytes, shorter than the {IR_SIZE}-byte IRHeader",
                              field=where, fix="the file is corrupt; re-create it")
    flag, label, rid, rid2 = struct.unpack_from(IR_FORMAT, record, 0)
    body = record[IR_SIZE:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise DataFormatError(source, f"IRHeader flag {flag} announces {flag} float labels but only "
                                  f"{len(body)} bytes follow", field=where, fix="the file is corrupt; re-create it")
        label_arr = np.frombuffer(body, dtype="<f4", count=flag).astype(np.float32)
        return IRHeader(flag, label_arr, rid, rid2), body[4 * flag:]
    return IRHeader(flag, label, rid, rid2), body


def _frame(record: bytes) -> bytes:
    """Returns the record framed as dmlc-core's RecordIOWriter::WriteRecord writes it."""
    n = len(record)
    if n >= (1 << _LENGTH_BITS):
        raise ValueError(f"record of {n} bytes exceeds the RecordIO limit of 2**29 - 1")
    parts = []
    start = 0
    # Split at every 4-byte-aligned occurrence of the magic word so a reader that resyncs on the
    # magic never mistakes payload bytes for a record start.
    pos = record.find(_MAGIC_BYTES)
    while pos != -1 and pos + 4 <= (n // 4) * 4:
        if pos % 4 == 0:
            flag = 1 if start == 0 else 2
            parts.append(struct.pack("<II", RECORDIO_MAGIC, (flag << _LENGTH_BITS) | (pos - start)))
            parts.append(record[start:pos])
            start = pos + 4
            pos = record.find(_MAGIC_BYTES, start)
        else:
            pos = record.find(_MAGIC_BYTES, pos + 1)
    flag = 3 if start != 0 else 0
    parts.append(struct.pack("<II", RECORDIO_MAGIC, (flag << _LENGTH_BITS) | (n - start)))
    parts.append(record[start:])
    parts.append(b"\0" * ((-n) % 4))
    return b"".join(parts)


class RecordIOWriter:
    """Writes an indexed RecordIO pair (.rec, .idx); both files appear only on a clean close.

    Use as a context manager; ``write(key, header, payload)`` appends one record.
    """

    def __init__(self, rec_path: PathLike, idx_path: PathLike) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        self._rec_cm = atomic_write(self.rec_path)
        self._rec = self._rec_cm.__enter__()
        self._offset = 0
        self._index: list[tuple[int, int]] = []
        self._keys: set[int] = set()
        self._closed = False

    def write(self, key: int, header: IRHeader, payload: bytes) -> None:
        """Appends one record under ``key`` (an int, unique in the file)."""
        self.write_record(key, pack_record(header, payload))

    def write_record(self, key: int, record: bytes) -> None:
        """Appends one already-packed record under ``key``."""
        if self._closed:
            raise ValueError(f"{self.rec_path}: writer is closed")
        key = int(key)
        if key in self._keys:
            raise ValueError(f"{self.rec_path}: duplicate record key {key}")
        framed = _frame(record)
        self._rec.write(framed)
        self._keys.add(key)
        self._index.append((key, self._offset))
        self._offset += len(framed)

    def close(self, ok: bool = True) -> None:
        """Finishes both files (``ok``) or discards them (not ``ok``)."""
        if self._closed:
            return
        self._closed = True
        if not ok:
            self._rec_cm.__exit__(RuntimeError, RuntimeError("aborted"), None)
            return
        self._rec_cm.__exit__(None, None, None)
        # Sorted by key so the .idx reads like the ones mxnet/im2rec write (keys ascending).
        with atomic_write(self.idx_path, "w") as fh:
            fh.writelines(f"{k}\t{off}\n" for k, off in sorted(self._index))

    def __enter__(self) -> "RecordIOWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(ok=exc_type is None)


def _read_idx(idx_path: Path) -> tuple[list[int], dict[int, int]]:
    """Returns (keys in file order, key -> byte offset) of a RecordIO .idx file."""
    keys: list[int] = []
    offsets: dict[int, int] = {}
    try:
        fh = open(idx_path, encoding="ascii")
    except FileNotFoundError as exc:
        raise DataFormatError(idx_path, "index file not found", fix="the .idx must sit beside the .rec") from exc
    with fh:
        for lineno, line in enumerate(fh, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2:
                raise DataFormatError(idx_path, f"expected 'key<TAB>offset', got {line.rstrip()!r}",
                                      field=f"line {lineno}", fix="regenerate the .idx file")
            try:
                key, off = int(fields[0]), int(fields[1])
            except ValueError as exc:
                raise DataFormatError(idx_path, f"non-integer key or offset in {line.rstrip()!r}",
                                      field=f"line {lineno}", fix="regenerate the .idx file") from exc
            if off < 0:
                raise DataFormatError(idx_path, f"negative offset {off}", field=f"line {lineno}",
                                      fix="regenerate the .idx file")
            if key in offsets:
                raise DataFormatError(idx_path, f"duplicate key {key}", field=f"line {lineno}",
                                      fix="regenerate the .idx file")
            keys.append(key)
            offsets[key] = off
    return keys, offsets


class RecordIOReader:
    """Random access to an indexed RecordIO pair; thread-safe and picklable (reopens lazily)."""

    def __init__(self, rec_path: PathLike, idx_path: PathLike) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        if not self.rec_path.is_file():
            raise DataFormatError(self.rec_path, "record file not found", fix="check the dataset folder")
        self.keys, self._offsets = _read_idx(self.idx_path)
        self._fd: Optional[int] = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._offsets

    def offset(self, key: int) -> int:
        """Returns the byte offset of a key's record in the .rec file."""
        try:
            return self._offsets[int(key)]
        except KeyError:
            raise KeyError(f"{self.rec_path}: no record with key {key} in {self.idx_path}") from None

    def _pread(self, offset: int, n: int) -> bytes:
        if self._fd is None:
            with self._lock:
                if self._fd is None:
                    self._fd = os.open(self.rec_path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        if hasattr(os, "pread"):
            return os.pread(self._fd, n, offset)
        with self._lock:  # no pread (Windows): serialise seek+read
            os.lseek(self._fd, offset, os.SEEK_SET)
            return os.read(self._fd, n)

    def read_raw(self, key: int) -> bytes:
        """Returns the packed record (IRHeader + payload) stored under ``key``."""
        start = self.offset(key)
        offset = start
        chunks: list[bytes] = []
        first = True
        while True:
            head = self._pread(offset, 8)
            if len(head) < 8:
                raise DataFormatError(self.rec_path, f"truncated record header at byte offset {offset} "
                                      f"(record key {key} starts at {start})", field=f"offset {offset}",
                                      fix="the .rec file is truncated; re-download or re-create it")
            magic, lrec = struct.unpack("<II", head)
            if magic != RECORDIO_MAGIC:
                raise DataFormatError(self.rec_path, f"bad magic 0x{magic:08x} at byte offset {offset} "
                                      f"(record key {key}); expected 0x{RECORDIO_MAGIC:08x}",
                                      field=f"offset {offset}",
                                      fix="the .rec is corrupt or the .idx does not belong to it")
            cflag, length = lrec >> _LENGTH_BITS, lrec & _LENGTH_MASK
            if (first and cflag not in (0, 1)) or (not first and cflag not in (2, 3)):
                raise DataFormatError(self.rec_path, f"unexpected continuation flag {cflag} at byte offset "
                                      f"{offset} (record key {key})", field=f"offset {offset}",
                                      fix="the .rec is corrupt or the .idx does not belong to it")
            padded = (length + 3) & ~3
            data = self._pread(offset + 8, padded)
            if len(data) < padded:
                raise DataFormatError(self.rec_path, f"truncated record at byte offset {offset}: needs "
                                      f"{padded} bytes, {len(data)} left (record key {key})",
                                      field=f"offset {offset}",
                                      fix="the .rec file is truncated; re-download or re-create it")
            chunks.append(data[:length])
            offset += 8 + padded
            if cflag in (0, 3):
                break
            chunks.append(_MAGIC_BYTES)
            first = False
        return b"".join(chunks)

    def read(self, key: int) -> tuple[IRHeader, bytes]:
        """Returns (IRHeader, payload bytes) of the record stored under ``key``."""
        return unpack_record(self.read_raw(key), self.rec_path, f"record key {key} at offset {self.offset(key)}")

    def close(self) -> None:
        """Closes the .rec file descriptor (a later read reopens it)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fd"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> "RecordIOReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _read_property(path: Path) -> tuple[int, int, int]:
    """Returns (num_classes, height, width) from an insightface ``property`` file."""
    text = path.read_text(encoding="ascii").strip()
    fields = [f.strip() for f in text.split(",")]
    try:
        values = tuple(int(f) for f in fields)
    except ValueError as exc:
        raise DataFormatError(path, f"expected 'num_classes,height,width', got {text!r}", field="property",
                              fix="write the file as e.g. '85742,112,112'") from exc
    if len(values) != 3 or min(values) <= 0:
        raise DataFormatError(path, f"expected three positive integers 'num_classes,height,width', got {text!r}",
                              field="property", fix="write the file as e.g. '85742,112,112'")
    return values  # type: ignore[return-value]


def write_recordio_dataset(folder: PathLike, images: Iterable[np.ndarray], labels: Sequence[int],
                           quality: int = 95, batch_size: int = 256) -> None:
    """Writes folder/train.rec, train.idx and property the insightface way.

    ``labels[i]`` is the identity (0..K-1) of the i-th image of ``images``; images are streamed
    (never all in memory). Image records are keyed so every identity's images form one contiguous
    key range whatever the input order: key = 1 + position in a stable sort by label.
    """
    folder = Path(folder)
    labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = labels_arr.size
    if n == 0:
        raise DataFormatError(folder, "no images to write", field="labels", fix="pass at least one image")
    if labels_arr.min() < 0:
        raise DataFormatError(folder, f"negative label {labels_arr.min()}", field="labels",
                              fix="labels must be identity indices 0..K-1")
    num_classes = int(labels_arr.max()) + 1
    order = np.argsort(labels_arr, kind="stable")
    key_of = np.empty(n, dtype=np.int64)
    key_of[order] = np.arange(1, n + 1)
    counts = np.bincount(labels_arr, minlength=num_classes)
    if (counts == 0).any():
        logger.warning("%s: %d identities have no images (empty ranges)", folder, int((counts == 0).sum()))
    starts = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])

    folder.mkdir(parents=True, exist_ok=True)
    shape: Optional[tuple[int, ...]] = None
    written = 0
    with RecordIOWriter(folder / "train.rec", folder / "train.idx") as writer:
        batch: list[np.ndarray] = []

        def flush() -> None:
            nonlocal written
            for payload in encode_images(batch, "jpg", quality):
                i = written
                writer.write(int(key_of[i]), IRHeader(0, float(labels_arr[i]), int(key_of[i]), 0), payload)
                written += 1
            batch.clear()

        for im in images:
            arr = np.asarray(im)
            if shape is None:
                shape = arr.shape
            if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape != shape:
                raise DataFormatError(folder, f"image {written + len(batch)} has dtype {arr.dtype} shape "
                                      f"{arr.shape}; expected uint8 {shape} RGB like the first image",
                                      field="images", fix="pass same-size uint8 HxWx3 RGB images")
            if written + len(batch) >= n:
                raise DataFormatError(folder, f"more images than the {n} labels", field="images",
                                      fix="pass one label per image")
            batch.append(arr)
            if len(batch) >= batch_size:
                flush()
        flush()
        if written != n:
            raise DataFormatError(folder, f"{written} images for {n} labels", field="images",
                                  fix="pass one label per image")
        for j in range(num_classes):
            key = n + 1 + j
            lo = int(starts[j])
            writer.write(key, IRHeader(2, np.array([lo, lo + counts[j]], np.float32), key, 0), b"")
        writer.write(0, IRHeader(2, np.array([n + 1, n + 1 + num_classes], np.float32), 0, 0), b"")
    assert shape is not None
    with atomic_write(folder / "property", "w") as fh:
        fh.write(f"{num_classes},{shape[0]},{shape[1]}")
    logger.info("wrote %s: %d images, %d identities", folder, n, num_classes)


class RecordIODataset:
    """An insightface RecordIO training set (folder with train.rec, train.idx, property).

    ``labels`` comes from the identity records when record 0 announces them (a few thousand reads
    instead of one per image), else from every image header.
    """

    def __init__(self, folder: PathLike) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DataFormatError(self.folder, "RecordIO dataset folder not found",
                                  fix="check the data root (FACEFUSE_DATA) and the dataset name")
        for name in ("train.rec", "train.idx"):
            if not (self.folder / name).is_file():
                raise DataFormatError(self.folder / name, "file not found",
                                      fix="a RecordIO dataset folder holds train.rec, train.idx and property")
        self.reader = RecordIOReader(self.folder / "train.rec", self.folder / "train.idx")
        prop = self.folder / "property"
        self._property: Optional[tuple[int, int, int]] = _read_property(prop) if prop.is_file() else None
        self.image_size = (self._property[1], self._property[2]) if self._property else (IMAGE_SIZE, IMAGE_SIZE)
        self._identity_ranges: Optional[np.ndarray] = None
        if 0 in self.reader:
            header0, _ = self.reader.read(0)
        else:
            header0 = None
        if header0 is not None and header0.flag > 0:
            if header0.flag < 2:
                raise DataFormatError(self.reader.rec_path, f"record 0 has {header0.flag} label values, expected 2",
                                      field="record 0", fix="the dataset header is corrupt")
            first_id, end_id = int(header0.label[0]), int(header0.label[1])
            self.header0 = (first_id, end_id)
            self.keys = np.arange(1, first_id, dtype=np.int64)
            self._identity_keys = range(first_id, end_id)
        else:
            self.header0 = None
            self.keys = np.asarray(self.reader.keys, dtype=np.int64)
            self._identity_keys = range(0)
        self._labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.keys.size)

    @property
    def labels(self) -> np.ndarray:
        """Returns the identity label of every image, int64 [N]."""
        if self._labels is None:
            self._labels = self._compute_labels()
        return self._labels

    @property
    def num_classes(self) -> int:
        """Returns the number of identities (the property file's first field when present)."""
        if self._property is not None:
            return self._property[0]
        if len(self._identity_keys):
            return len(self._identity_keys)
        return int(self.labels.max()) + 1 if len(self) else 0

    def _compute_labels(self) -> np.ndarray:
        n = len(self)
        if len(self._identity_keys):
            labels = np.full(n, -1, dtype=np.int64)
            for j, key in enumerate(self._identity_keys):
                header, _ = self.reader.read(key)
                if header.flag < 2:
                    raise DataFormatError(self.reader.rec_path, f"identity record {key} has no [start, end) range",
                                          field=f"record key {key}", fix="the dataset is corrupt")
                lo, hi = int(header.label[0]), int(header.label[1])
                if not 1 <= lo <= hi <= n + 1:
                    raise DataFormatError(self.reader.rec_path, f"identity record {key} range [{lo}, {hi}) lies "
                                          f"outside the image keys [1, {n + 1})", field=f"record key {key}",
                                          fix="the dataset is corrupt")
                labels[lo - 1:hi - 1] = j
            if (labels < 0).any():
                missing = int(np.flatnonzero(labels < 0)[0]) + 1
                raise DataFormatError(self.reader.rec_path, f"image key {missing} belongs to no identity record",
                                      field=f"record key {missing}", fix="the dataset is corrupt")
            if self._property is not None and self._property[0] != len(self._identity_keys):
                raise DataFormatError(self.folder / "property", f"num_classes {self._property[0]} but the .rec has "
                                      f"{len(self._identity_keys)} identity records", field="num_classes",
                                      fix="rewrite property with the identity count of the .rec")
            return labels
        labels = np.empty(n, dtype=np.int64)
        for i, key in enumerate(self.keys):
            labels[i] = self._label_of(self.reader.read(int(key))[0])
        return labels

    @staticmethod
    def _label_of(header: IRHeader) -> int:
        label = header.label
        # insightface convention: an array label's first value is the identity
        return int(label if isinstance(label, numbers.Number) else label[0])

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        key = int(self.keys[index])
        header, payload = self.reader.read(key)
        image = decode_image(payload, self.reader.rec_path, f"record key {key}", self.image_size)
        return image, self._label_of(header)

    def images(self, indices: Optional[Sequence[int] | np.ndarray] = None) -> np.ndarray:
        """Returns the decoded images at ``indices`` (all when None) as uint8 [n, H, W, 3]."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        keys = self.keys[idx]
        workers = default_workers()
        if len(keys) >= 8 and workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                payloads = list(pool.map(lambda k: self.reader.read(int(k))[1], keys))
        else:
            payloads = [self.reader.read(int(k))[1] for k in keys]
        return decode_images(payloads, self.reader.rec_path, [f"record key {k}" for k in keys], self.image_size)

    def __repr__(self) -> str:
        return f"RecordIODataset({str(self.folder)!r}, images={len(self)})"
