"""Tests of facefuse/data/recordio.py: framing, IRHeader packing, insightface layout, errors."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

from facefuse.data import (IRHeader, RecordIODataset, RecordIOReader, RecordIOWriter, pack_record,
                           unpack_record, write_recordio_dataset)
from facefuse.data.recordio import RECORDIO_MAGIC
from facefuse.errors import DataFormatError

from .conftest import smooth_images

MAGIC = struct.pack("<I", RECORDIO_MAGIC)


def test_pack_scalar_label_is_byte_exact() -> None:
    packed = pack_record(IRHeader(7, 3.0, 11, 12), b"abc")
    # a scalar label forces flag 0, as mxnet.recordio.pack does
    assert packed == struct.pack("<IfQQ", 0, 3.0, 11, 12) + b"abc"
    header, payload = unpack_record(packed)
    assert header == IRHeader(0, 3.0, 11, 12) and payload == b"abc"


def test_pack_array_label_is_byte_exact() -> None:
    packed = pack_record(IRHeader(0, [5, 9.5], 1, 0), b"xy")
    assert packed == struct.pack("<IfQQ", 2, 0.0, 1, 0) + struct.pack("<2f", 5, 9.5) + b"xy"
    header, payload = unpack_record(packed)
    assert header.flag == 2 and header.label.dtype == np.float32 and header.label.tolist() == [5.0, 9.5]
    assert (header.id, header.id2, payload) == (1, 0, b"xy")


def test_frame_layout_and_padding(tmp_path) -> None:
    rec, idx = tmp_path / "a.rec", tmp_path / "a.idx"
    with RecordIOWriter(rec, idx) as w:
        w.write_record(3, b"12345")       # 5 bytes -> 3 bytes of padding
        w.write_record(1, b"abcd")        # no padding
    raw = rec.read_bytes()
    assert raw[:8] == MAGIC + struct.pack("<I", 5) and raw[8:16] == b"12345\0\0\0"
    assert raw[16:24] == MAGIC + struct.pack("<I", 4) and raw[24:28] == b"abcd"
    assert idx.read_text() == "1\t16\n3\t0\n"


def test_payload_containing_magic_is_split_and_rejoined(tmp_path) -> None:
    rec, idx = tmp_path / "m.rec", tmp_path / "m.idx"
    # aligned magic at 0, 8 and 12; an unaligned one at 18 stays in the data
    record = MAGIC + b"abcd" + MAGIC + MAGIC + b"xy" + MAGIC + b"zzz"
    with RecordIOWriter(rec, idx) as w:
        w.write_record(0, record)
        w.write_record(1, b"next")
    raw = rec.read_bytes()
    flags, offset = [], 0
    while offset < len(raw):
        magic, lrec = struct.unpack_from("<II", raw, offset)
        assert magic == RECORDIO_MAGIC
        flags.append(lrec >> 29)
        offset += 8 + (((lrec & ((1 << 29) - 1)) + 3) & ~3)
    assert flags == [1, 2, 2, 3, 0]
    reader = RecordIOReader(rec, idx)
    assert reader.read_raw(0) == record and reader.read_raw(1) == b"next"


def test_random_access_many_records(tmp_path) -> None:
    rng = np.random.default_rng(1)
    rec, idx = tmp_path / "r.rec", tmp_path / "r.idx"
    records = {int(k): rng.bytes(int(rng.integers(0, 200))) for k in rng.permutation(300)}
    with RecordIOWriter(rec, idx) as w:
        for k, data in records.items():
            w.write(k, IRHeader(0, float(k), k, 0), data)
    reader = RecordIOReader(rec, idx)
    assert len(reader) == 300 and sorted(reader.keys) == sorted(records)
    for k in rng.permutation(list(records)):
        header, payload = reader.read(int(k))
        assert payload == records[int(k)] and header.label == float(k) and header.id == k
    clone = pickle.loads(pickle.dumps(reader))  # Ray ships readers to workers
    assert clone.read(5)[1] == records[5]


def test_writer_refuses_duplicate_keys_and_discards_on_error(tmp_path) -> None:
    rec, idx = tmp_path / "d.rec", tmp_path / "d.idx"
    with pytest.raises(ValueError, match="duplicate"):
        with RecordIOWriter(rec, idx) as w:
            w.write_record(1, b"a")
            w.write_record(1, b"b")
    assert not rec.exists() and not idx.exists() and list(tmp_path.iterdir()) == []


def _small_rec(tmp_path):
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    with RecordIOWriter(rec, idx) as w:
        w.write(0, IRHeader(0, 1.0, 0, 0), b"A" * 40)
        w.write(1, IRHeader(0, 2.0, 1, 0), b"B" * 40)
    return rec, idx


def test_truncated_record_names_file_and_offset(tmp_path) -> None:
    rec, idx = _small_rec(tmp_path)
    offset1 = RecordIOReader(rec, idx).offset(1)
    rec.write_bytes(rec.read_bytes()[:-10])
    reader = RecordIOReader(rec, idx)
    assert reader.read(0)[1] == b"A" * 40
    with pytest.raises(DataFormatError) as info:
        reader.read(1)
    message = str(info.value)
    assert str(rec) in message and f"byte offset {offset1}" in message and "truncated" in message


def test_truncated_header_names_offset(tmp_path) -> None:
    rec, idx = _small_rec(tmp_path)
    offset1 = RecordIOReader(rec, idx).offset(1)
    rec.write_bytes(rec.read_bytes()[: offset1 + 3])
    with pytest.raises(DataFormatError, match=f"offset {offset1}"):
        RecordIOReader(rec, idx).read(1)


def test_corrupt_magic_names_offset(tmp_path) -> None:
    rec, idx = _small_rec(tmp_path)
    offset1 = RecordIOReader(rec, idx).offset(1)
    data = bytearray(rec.read_bytes())
    data[offset1] ^= 0xFF
    rec.write_bytes(bytes(data))
    with pytest.raises(DataFormatError, match=f"bad magic .* at byte offset {offset1}") as info:
        RecordIOReader(rec, idx).read(1)
    assert str(rec) in str(info.value)


def test_idx_pointing_into_a_record_is_an_error(tmp_path) -> None:
    rec, idx = _small_rec(tmp_path)
    idx.write_text("0\t0\n1\t4\n")
    with pytest.raises(DataFormatError, match="offset 4"):
        RecordIOReader(rec, idx).read(1)


def test_short_record_and_bad_flag(tmp_path) -> None:
    with pytest.raises(DataFormatError, match="IRHeader"):
        unpack_record(b"short", "x.rec", "record key 3")
    with pytest.raises(DataFormatError, match="flag 5"):
        unpack_record(struct.pack("<IfQQ", 5, 0.0, 0, 0) + b"\0" * 8, "x.rec")


@pytest.mark.parametrize("text, line", [("0\t0\nabc\t5\n", "line 2"), ("0\t0\n1\n", "line 2"),
                                         ("0\t0\n0\t8\n", "line 2"), ("0\t-1\n", "line 1")])
def test_bad_idx(tmp_path, text: str, line: str) -> None:
    rec, idx = _small_rec(tmp_path)
    idx.write_text(text)
    with pytest.raises(DataFormatError, match=line) as info:
        RecordIOReader(rec, idx)
    assert str(idx) in str(info.value)


def test_insightface_dataset_round_trip(tmp_path) -> None:
    images = smooth_images(9, seed=3)
    labels = [2, 0, 1, 0, 2, 1, 3, 0, 3]  # not grouped: the writer still makes contiguous ranges
    folder = tmp_path / "faces_emore"
    write_recordio_dataset(folder, iter(images), labels, batch_size=4)
    assert (folder / "property").read_text() == "4,112,112"

    reader = RecordIOReader(folder / "train.rec", folder / "train.idx")
    assert reader.keys == list(range(0, 14))  # .idx sorted by key like im2rec's
    h0, payload0 = reader.read(0)
    assert (h0.flag, h0.label.tolist(), h0.id, h0.id2, payload0) == (2, [10.0, 14.0], 0, 0, b"")
    ranges = [reader.read(k)[0] for k in range(10, 14)]
    assert [h.label.tolist() for h in ranges] == [[1.0, 4.0], [4.0, 6.0], [6.0, 8.0], [8.0, 10.0]]
    assert [h.id for h in ranges] == [10, 11, 12, 13]
    h3, jpeg = reader.read(3)
    assert (h3.flag, h3.label, h3.id, h3.id2) == (0, 0.0, 3, 0) and jpeg[:2] == b"\xff\xd8"

    ds = RecordIODataset(folder)
    assert len(ds) == 9 and ds.num_classes == 4 and ds.header0 == (10, 14)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == sorted(labels)
    order = np.argsort(labels, kind="stable")
    for i in range(9):
        image, label = ds[i]
        assert label == sorted(labels)[i] and image.shape == (112, 112, 3) and image.dtype == np.uint8
        assert np.abs(image.astype(int) - images[order[i]]).mean() < 3.0
    batch = ds.images([8, 0, 4])
    np.testing.assert_array_equal(batch[1], ds[0][0])
    assert batch.shape == (3, 112, 112, 3)
    assert ds.images().shape == (9, 112, 112, 3)


def test_dataset_without_identity_records_reads_labels_from_headers(tmp_path) -> None:
    from facefuse.data._io import encode_image

    folder = tmp_path / "plain"
    folder.mkdir()
    images = smooth_images(3, seed=5)
    with RecordIOWriter(folder / "train.rec", folder / "train.idx") as w:
        w.write(0, IRHeader(0, 0.0, 0, 0), encode_image(images[0]))
        w.write(1, IRHeader(0, [1.0, 7.0], 1, 0), encode_image(images[1]))  # array label: first value
        w.write(2, IRHeader(0, 0.0, 2, 0), encode_image(images[2]))
    ds = RecordIODataset(folder)
    assert ds.header0 is None and len(ds) == 3
    assert ds.labels.tolist() == [0, 1, 0] and ds.num_classes == 2
    assert ds[1][1] == 1


def test_missing_files_and_property_mismatch(tmp_path) -> None:
    with pytest.raises(DataFormatError, match="not found"):
        RecordIODataset(tmp_path / "nope")
    folder = tmp_path / "ds"
    write_recordio_dataset(folder, smooth_images(3), [0, 1, 1])
    (folder / "property").write_text("5,112,112")
    with pytest.raises(DataFormatError, match="num_classes 5"):
        _ = RecordIODataset(folder).labels
    (folder / "property").write_text("two,112")
    with pytest.raises(DataFormatError, match="property"):
        RecordIODataset(folder)
    (folder / "train.idx").unlink()
    with pytest.raises(DataFormatError) as info:
        RecordIODataset(folder)
    assert str(folder / "train.idx") in str(info.value)


def test_writer_input_errors(tmp_path) -> None:
    images = smooth_images(3)
    with pytest.raises(DataFormatError, match="labels"):
        write_recordio_dataset(tmp_path / "a", images, [0, 1])
    with pytest.raises(DataFormatError, match="2 images for 3 labels"):
        write_recordio_dataset(tmp_path / "b", images[:2], [0, 1, 2])
    with pytest.raises(DataFormatError, match="shape"):
        write_recordio_dataset(tmp_path / "c", [images[0], images[1][:50]], [0, 1])
    assert not (tmp_path / "b" / "train.rec").exists()
