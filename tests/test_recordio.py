"""The native RecordIO reader/writer on its own (no MXNet; see test_recordio_mxnet.py for that)."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from face_pipeline.recordio import (
    MAGIC,
    MAGIC_BYTES,
    DamagedRecord,
    IRHeader,
    RecordIOError,
    RecordIOReader,
    RecordIOWriter,
    pack,
    read_index,
    split_at_magic,
    unpack,
    write_insightface,
)


def head(cflag: int, length: int) -> bytes:
    return struct.pack("<II", MAGIC, (cflag << 29) | length)


def write_records(tmp_path: Path, records: list[bytes], keys: list[int] | None = None) -> tuple[Path, Path]:
    rec, idx = tmp_path / "t.rec", tmp_path / "t.idx"
    keys = list(range(len(records))) if keys is None else keys
    with RecordIOWriter(rec, idx) as writer:
        for key, record in zip(keys, records, strict=True):
            writer.write(record, key=key)
    return rec, idx


def idx_lines(idx: Path) -> list[tuple[int, int]]:
    return [tuple(map(int, line.split("\t"))) for line in idx.read_text().splitlines()]


# Records of every length modulo 4, with and without the magic number in them.
SAMPLES = [
    b"",
    b"a",
    b"ab",
    b"abc",
    b"abcd",
    b"hello, world",
    bytes(range(256)) * 3 + b"xy",
    MAGIC_BYTES,
    MAGIC_BYTES + b"after",
    b"befo" + MAGIC_BYTES + b"re",
    b"abcdefgh" + MAGIC_BYTES,
    b"abcd" + MAGIC_BYTES + MAGIC_BYTES + b"ef",
    b"a" + MAGIC_BYTES + b"xyz",
    b"abc" + MAGIC_BYTES + MAGIC_BYTES[:3],
    b"ab" + MAGIC_BYTES + b"cd" + MAGIC_BYTES + b"e",
]


# -- IRHeader ----------------------------------------------------------------------------------------


def test_pack_layout_single_label():
    payload = pack(IRHeader(0, 3.0, 17, 2**64 - 1), b"JPEG")
    assert payload == struct.pack("<IfQQ", 0, 3.0, 17, 2**64 - 1) + b"JPEG"
    header, image = unpack(payload)
    assert header == IRHeader(0, 3.0, 17, 2**64 - 1)
    assert header.class_label == 3.0
    assert isinstance(image, memoryview)
    assert bytes(image) == b"JPEG"


def test_pack_layout_multi_label():
    payload = pack(IRHeader(99, (7.0, 1.5, -2.25), 4, 5), b"img")
    # flag is the number of labels whatever the caller put there; label field is 0.0, as mx.recordio.pack does
    assert payload == struct.pack("<IfQQ3f", 3, 0.0, 4, 5, 7.0, 1.5, -2.25) + b"img"
    header, image = unpack(payload)
    assert header == IRHeader(3, (7.0, 1.5, -2.25), 4, 5)
    assert header.class_label == 7.0
    assert bytes(image) == b"img"


def test_unpack_header_only_and_flag_on_scalar_ignored():
    header, image = unpack(pack(IRHeader(5, 1.0, 0, 0)))
    assert header == IRHeader(0, 1.0, 0, 0)
    assert len(image) == 0


def test_unpack_rejects_short_payloads():
    with pytest.raises(ValueError, match="shorter than the 24-byte IRHeader"):
        unpack(b"\0" * 23)
    with pytest.raises(ValueError, match="announces 3 labels"):
        unpack(struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 8)


# -- magic splitting, checked against hand-written bytes ---------------------------------------------


@pytest.mark.parametrize(
    ("data", "parts"),
    [
        (b"", [b""]),
        (MAGIC_BYTES, [b"", b""]),
        (MAGIC_BYTES + b"x", [b"", b"x"]),
        (b"abcd" + MAGIC_BYTES, [b"abcd", b""]),
        (b"abcd" + MAGIC_BYTES + MAGIC_BYTES + b"ef", [b"abcd", b"", b"ef"]),
        (b"a" + MAGIC_BYTES + b"xyz", [b"a" + MAGIC_BYTES + b"xyz"]),  # unaligned: no split
        (b"ab" + MAGIC_BYTES + b"cd" + MAGIC_BYTES, [b"ab" + MAGIC_BYTES + b"cd", b""]),
        (b"abc" + MAGIC_BYTES, [b"abc" + MAGIC_BYTES]),
    ],
)
def test_split_at_magic(data, parts):
    assert split_at_magic(data) == parts
    assert MAGIC_BYTES.join(parts) == data


def test_on_disk_bytes_of_whole_and_split_records(tmp_path):
    records = [b"xyz", b"abcd" + MAGIC_BYTES + MAGIC_BYTES + b"ef", b"q" + MAGIC_BYTES]
    rec, idx = write_records(tmp_path, records)
    expected = (
        head(0, 3) + b"xyz\0"
        # split at the two aligned magics: first part, an empty middle part, last part, then padding
        + head(1, 4) + b"abcd" + head(2, 0) + head(3, 2) + b"ef\0\0"
        + head(0, 5) + b"q" + MAGIC_BYTES + b"\0\0\0"  # unaligned magic stays in the data
    )  # fmt: skip
    assert rec.read_bytes() == expected
    assert idx.read_text() == "0\t0\n1\t12\n2\t44\n"


# -- round trips -------------------------------------------------------------------------------------


def test_round_trip(tmp_path):
    rec, idx = write_records(tmp_path, SAMPLES)
    offsets = [offset for _, offset in idx_lines(idx)]
    assert all(offset % 4 == 0 for offset in offsets)
    assert rec.stat().st_size % 4 == 0
    with RecordIOReader(rec, idx) as reader:
        assert reader.index_source == str(idx)
        assert len(reader) == len(SAMPLES)
        for key, record in enumerate(SAMPLES):
            assert bytes(reader.read(key)) == record, key
        assert reader.keys_in_file_order() == list(range(len(SAMPLES)))


def test_round_trip_random(tmp_path):
    rng = random.Random(1234)
    records = []
    for _ in range(300):
        data = bytearray(rng.randbytes(rng.randrange(0, 200)))
        for _ in range(rng.randrange(0, 4)):  # sprinkle magics, aligned or not
            if len(data) >= 4:
                at = rng.randrange(0, len(data) - 3)
                data[at : at + 4] = MAGIC_BYTES
        records.append(bytes(data))
    rec, idx = write_records(tmp_path, records)
    with RecordIOReader(rec, idx) as reader:
        assert [bytes(reader.read(k)) for k in range(len(records))] == records
    with RecordIOReader(rec) as scanned:
        assert scanned.scan_problems == []
        assert [bytes(scanned.read(k)) for k in range(len(records))] == records


def test_round_trip_packed_records(tmp_path):
    headers = [IRHeader(0, 1.0, 1, 0), IRHeader(2, (4.0, 1.0), 2, 0), IRHeader(1, (9.0,), 3, 77)]
    images = [b"\xff\xd8one\xff\xd9", MAGIC_BYTES * 2 + b"two", b""]
    rec, idx = write_records(tmp_path, [pack(h, i) for h, i in zip(headers, images, strict=True)])
    with RecordIOReader(rec, idx) as reader:
        for key, (expected_header, expected_image) in enumerate(zip(headers, images, strict=True)):
            header, image = reader.read_unpacked(key)
            assert header == expected_header
            assert bytes(image) == expected_image


def test_whole_records_are_views_into_the_file(tmp_path):
    rec, idx = write_records(tmp_path, [b"abcdef", b"abcd" + MAGIC_BYTES + b"ef"])
    reader = RecordIOReader(rec, idx)
    whole, joined = reader.read(0), reader.read(1)
    assert isinstance(whole, memoryview)
    assert joined == b"abcd" + MAGIC_BYTES + b"ef"
    reader.close()  # views still alive: closing must not fail, and they stay readable
    assert bytes(whole) == b"abcdef"


# -- the .idx file -----------------------------------------------------------------------------------


def test_idx_in_any_order_with_gaps(tmp_path):
    keys = [5, 17, 3, 1000, 42, 8]
    records = [f"record {k}".encode() for k in keys]
    rec, idx = write_records(tmp_path, records, keys)
    written = dict(idx_lines(idx))
    lines = idx.read_text().splitlines()
    random.Random(7).shuffle(lines)
    idx.write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")  # and a blank line
    assert read_index(idx) == written
    with RecordIOReader(rec, idx) as reader:
        assert sorted(reader.index) == sorted(keys)
        for key, record in zip(keys, records, strict=True):
            assert bytes(reader.read(key)) == record
        assert reader.keys_in_file_order() == keys  # file order, whatever the .idx order
        assert reader.keys_in_file_order([1000, 3, 99]) == [3, 1000]
        with pytest.raises(DamagedRecord, match="key not in the index"):
            reader.read(4)


@pytest.mark.parametrize(
    "content",
    ["0\t0\n1\t8\n", "0\t0\n1\t8", "0\t0\r\n1\t8\r\n", "  0 0\n\n1\t\t8  \n\n", "1\t8\n0\t0\n1\t8\n"],
)
def test_idx_line_endings_and_spacing(tmp_path, content):
    idx = tmp_path / "t.idx"
    idx.write_bytes(content.encode())
    assert read_index(idx) == {0: 0, 1: 8}


def test_empty_idx(tmp_path):
    idx = tmp_path / "t.idx"
    idx.write_bytes(b"")
    assert read_index(idx) == {}


@pytest.mark.parametrize(
    ("content", "line"),
    [
        ("0\t0\n1\t8\nabc\t16\n", 3),
        ("0\t0\n7\n", 2),
        ("0\t0\n1\t8.5\n", 2),
        ("\n\n0\tzero\n", 3),
        # bad lines whose fields add up to whole pairs must not be paired across lines
        ("0\t0\n7\n8\n", 2),
        ("1\t2\t3\n4\n", 1),
        ("0\t0\n1\t8\n5\t6\t7\t8\n", 3),
    ],
)
def test_malformed_idx_line_names_file_and_line(tmp_path, content, line):
    rec, idx = write_records(tmp_path, [b"abcd", b"efgh"])
    idx.write_text(content)
    with pytest.raises(RecordIOError) as raised:
        RecordIOReader(rec, idx)
    assert f"{idx}:{line}:" in str(raised.value)


def test_missing_idx_is_rebuilt_by_scanning(tmp_path):
    records = [*SAMPLES, pack(IRHeader(0, 2.0, 9, 0), MAGIC_BYTES + b"jpeg")]
    keys = [10 * k + 3 for k in range(len(records))]  # the .idx keys do not matter to the scan
    rec, idx = write_records(tmp_path, records, keys)
    offsets = [offset for _, offset in idx_lines(idx)]
    idx.unlink()
    for reader in (RecordIOReader(rec), RecordIOReader(rec, idx)):
        with reader:
            assert reader.index_source == "scan"
            assert reader.scan_problems == []
            assert reader.index == dict(enumerate(offsets))  # keys are positions; split records count once
            assert [bytes(reader.read(k)) for k in range(len(records))] == records


# -- damage ------------------------------------------------------------------------------------------

RECORDS = [b"first record", b"split at" + MAGIC_BYTES + b"here", b"third record!", b"last record, cut short"]


def test_file_cut_short_inside_the_last_record(tmp_path):
    rec, idx = write_records(tmp_path, RECORDS)
    rec.write_bytes(rec.read_bytes()[:-10])
    for reader in (RecordIOReader(rec, idx), RecordIOReader(rec)):
        with reader:
            assert len(reader) == 4
            with pytest.raises(DamagedRecord, match="runs past the end of the file") as damage:
                reader.read(3)
            assert damage.value.key == 3
            assert "cut short" in damage.value.reason
            assert [bytes(reader.read(k)) for k in range(3)] == RECORDS[:3]


def test_file_cut_short_inside_a_record_head(tmp_path):
    rec, idx = write_records(tmp_path, RECORDS)
    last = idx_lines(idx)[-1][1]
    rec.write_bytes(rec.read_bytes()[: last + 5])
    with RecordIOReader(rec, idx) as reader:
        with pytest.raises(DamagedRecord, match="file ends inside the record head"):
            reader.read(3)
        assert [bytes(reader.read(k)) for k in range(3)] == RECORDS[:3]
    with RecordIOReader(rec) as scanned:
        assert len(scanned) == 3
        assert scanned.scan_problems == ["5 stray bytes at the end of the file"]


def test_file_cut_short_inside_a_split_record(tmp_path):
    rec, idx = write_records(tmp_path, RECORDS[:2])
    rec.write_bytes(rec.read_bytes()[:-4])
    with RecordIOReader(rec, idx) as reader:
        with pytest.raises(DamagedRecord, match="multi-part record is cut short"):
            reader.read(1)
        assert bytes(reader.read(0)) == RECORDS[0]


def test_no_magic_at_an_idx_offset(tmp_path):
    rec, idx = write_records(tmp_path, RECORDS)
    lines = idx_lines(idx)
    lines[1] = (1, lines[1][1] + 4)  # points into the record's head
    idx.write_text("".join(f"{k}\t{o}\n" for k, o in lines))
    with RecordIOReader(rec, idx) as reader:
        with pytest.raises(DamagedRecord, match=f"no RecordIO magic at offset {lines[1][1]}"):
            reader.read(1)
        assert [bytes(reader.read(k)) for k in (0, 2, 3)] == [RECORDS[0], *RECORDS[2:]]


def test_overwritten_magic_is_damage_and_the_scan_resumes_after_it(tmp_path):
    rec, idx = write_records(tmp_path, RECORDS)
    offset = idx_lines(idx)[2][1]
    data = bytearray(rec.read_bytes())
    data[offset : offset + 4] = b"JUNK"
    rec.write_bytes(bytes(data))
    with RecordIOReader(rec, idx) as reader:
        with pytest.raises(DamagedRecord, match=f"no RecordIO magic at offset {offset}"):
            reader.read(2)
        assert [bytes(reader.read(k)) for k in (0, 1, 3)] == [*RECORDS[:2], RECORDS[3]]
    with RecordIOReader(rec) as scanned:
        assert scanned.scan_problems == [f"garbage at offset {offset}, resumed at {idx_lines(idx)[3][1]}"]
        assert [bytes(scanned.read(k)) for k in range(len(scanned))] == [*RECORDS[:2], RECORDS[3]]


def test_offset_past_the_end(tmp_path):
    rec, idx = write_records(tmp_path, RECORDS)
    size = rec.stat().st_size
    with idx.open("a") as lines:
        lines.write(f"7\t{size}\n8\t{size + 4000}\n9\t-4\n")
    with RecordIOReader(rec, idx) as reader:
        for key in (7, 8, 9):
            with pytest.raises(DamagedRecord, match="past the end of the file") as damage:
                reader.read(key)
            assert damage.value.key == key
        assert [bytes(reader.read(k)) for k in range(4)] == RECORDS


def test_offset_at_a_continuation_part(tmp_path):
    rec, idx = write_records(tmp_path, RECORDS)
    continuation = idx_lines(idx)[1][1] + 8 + len(b"split at")  # the head of the record's last part
    assert rec.read_bytes()[continuation : continuation + 8] == head(3, 4)
    with idx.open("a") as lines:
        lines.write(f"9\t{continuation}\n")
    with RecordIOReader(rec, idx) as reader:
        with pytest.raises(DamagedRecord, match="continuation part"):
            reader.read(9)
        assert bytes(reader.read(1)) == RECORDS[1]


def test_broken_split_record(tmp_path):
    rec, idx = write_records(tmp_path, RECORDS)
    continuation = idx_lines(idx)[1][1] + 8 + len(b"split at")
    data = bytearray(rec.read_bytes())
    data[continuation : continuation + 4] = b"JUNK"
    rec.write_bytes(bytes(data))
    with RecordIOReader(rec, idx) as reader:
        with pytest.raises(DamagedRecord, match=f"multi-part record broken at offset {continuation}"):
            reader.read(1)
        assert [bytes(reader.read(k)) for k in (0, 2, 3)] == [RECORDS[0], *RECORDS[2:]]


def test_payload_shorter_than_the_header(tmp_path):
    good = pack(IRHeader(0, 1.0, 1, 0), b"image")
    records = [good, b"\0" * 10, struct.pack("<IfQQ", 4, 0.0, 2, 0) + b"\0" * 8, pack(IRHeader(0, 2.0, 3, 0))]
    rec, idx = write_records(tmp_path, records)
    with RecordIOReader(rec, idx) as reader:
        assert bytes(reader.read(1)) == b"\0" * 10  # the record itself is fine
        with pytest.raises(DamagedRecord, match="shorter than the 24-byte IRHeader") as damage:
            reader.read_unpacked(1)
        assert damage.value.key == 1
        with pytest.raises(DamagedRecord, match="announces 4 labels"):
            reader.read_unpacked(2)
        header, image = reader.read_unpacked(3)  # header only: valid, no image bytes
        assert (header, bytes(image)) == (IRHeader(0, 2.0, 3, 0), b"")
        found = list(reader.iter_images())
        assert [(k, h) for k, h, _ in found] == [
            (0, IRHeader(0, 1.0, 1, 0)),
            (1, None),
            (2, None),
            (3, IRHeader(0, 2.0, 3, 0)),
        ]
        assert bytes(found[0][2]) == b"image"
        assert "24-byte IRHeader" in found[1][2]


def test_empty_or_missing_rec_file(tmp_path):
    empty = tmp_path / "empty.rec"
    empty.write_bytes(b"")
    with pytest.raises(RecordIOError, match="empty") as raised:
        RecordIOReader(empty)
    assert str(empty) in str(raised.value)
    with pytest.raises(RecordIOError, match="no such RecordIO file") as raised:
        RecordIOReader(tmp_path / "nowhere.rec")
    assert str(tmp_path / "nowhere.rec") in str(raised.value)


def test_writer_refusals(tmp_path):
    with RecordIOWriter(tmp_path / "no-idx.rec") as writer:
        writer.write(b"fine")
        with pytest.raises(RecordIOError, match=r"needs an \.idx file"):
            writer.write(b"keyed", key=1)

    class Huge:
        def __len__(self):
            return 1 << 29

    writer = RecordIOWriter(tmp_path / "huge.rec")
    with pytest.raises(RecordIOError, match=r"under 2\*\*29"):
        writer.write(Huge())
    writer.close()


# -- insightface layout ------------------------------------------------------------------------------


def test_write_insightface_layout(tmp_path):
    images = [(3, b"a3"), (3, b"b3" + MAGIC_BYTES), (0, b"c0"), (7, b"d7"), (7, b"e7"), (7, b"f7")]
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    assert write_insightface(rec, idx, images) == 6
    with RecordIOReader(rec, idx) as reader:
        assert sorted(reader.index) == list(range(10))
        header, rest = reader.read_unpacked(0)
        assert header == IRHeader(2, (7.0, 10.0), 0, 0)
        assert bytes(rest) == b""
        assert reader.identity_key_range() == (7, 10)
        assert reader.image_keys() == [1, 2, 3, 4, 5, 6]
        for key, (label, image) in enumerate(images, 1):
            header, data = reader.read_unpacked(key)
            assert header == IRHeader(0, float(label), key, 0)
            assert bytes(data) == image
        identities = [reader.read_unpacked(k)[0].label for k in range(7, 10)]
        assert identities == [(1.0, 3.0), (3.0, 4.0), (4.0, 7.0)]
        assert [k for k, h, _ in reader.iter_images()] == [1, 2, 3, 4, 5, 6]


def test_write_insightface_without_images(tmp_path):
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    assert write_insightface(rec, idx, []) == 0
    with RecordIOReader(rec, idx) as reader:
        assert reader.identity_key_range() == (1, 1)
        assert reader.image_keys() == []


def test_write_insightface_needs_contiguous_labels(tmp_path):
    with pytest.raises(RecordIOError, match="label 1 must be contiguous"):
        write_insightface(tmp_path / "t.rec", tmp_path / "t.idx", [(1, b"x"), (2, b"y"), (1, b"z")])


def test_im2rec_layout_has_no_identity_range(tmp_path):
    keys = [4, 9, 2]
    records = [pack(IRHeader(0, float(k % 3), k, 0), b"img%d" % k) for k in keys]
    rec, idx = write_records(tmp_path, records, keys)
    with RecordIOReader(rec, idx) as reader:
        assert reader.identity_key_range() is None
        assert reader.image_keys() == keys
        assert [(k, bytes(i)) for k, _, i in reader.iter_images()] == [(k, b"img%d" % k) for k in keys]
