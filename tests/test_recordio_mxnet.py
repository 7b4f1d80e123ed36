"""Byte-for-byte compatibility with the reference implementation, MXNet 1.9.1, both ways.

MXNet runs in its own virtualenv (see mxnet_env.py); records go to it as a JSON
spec, and what it reads comes back as JSON (bytes as hex), with headers exactly as
``mx.recordio.unpack`` reports them.
"""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from mxnet_env import mxnet_python, run_mxnet
from PIL import Image

from face_pipeline.recordio import (
    MAGIC,
    MAGIC_BYTES,
    DamagedRecord,
    IRHeader,
    RecordIOReader,
    RecordIOWriter,
    pack,
    write_insightface,
)


@pytest.fixture(scope="session")
def mxnet() -> Path:
    """The MXNet side environment; building it may take a while the first time. Never skipped."""
    python = mxnet_python()
    assert run_mxnet("import mxnet; print(mxnet.__version__)").stdout.strip() == "1.9.1"
    return python


# Runs a list of jobs in one MXNet process: {"op": "write", "rec", "idx", "records": spec}
# writes with MXIndexedRecordIO.write_idx; {"op": "read", "rec", "idx", "out"} reports every
# key's read_idx payload and unpacked header, and the sequential MXRecordIO.read() payloads.
MXNET_JOBS = r"""
import json, struct, sys
import numpy as np
import mxnet as mx

def header_json(buf):
    try:
        header, image = mx.recordio.unpack(buf)
    except (ValueError, struct.error):  # too short for the header, or for the labels it announces
        return None, None
    label = header.label.tolist() if isinstance(header.label, np.ndarray) else float(header.label)
    fields = {"flag": int(header.flag), "label": label, "id": int(header.id), "id2": int(header.id2)}
    return fields, image.hex()

def write(job):
    writer = mx.recordio.MXIndexedRecordIO(job["idx"], job["rec"], "w")
    for item in job["records"]:
        if "raw" in item:
            buf = bytes.fromhex(item["raw"])
        else:
            header = mx.recordio.IRHeader(0, item["label"], item["id"], item["id2"])
            buf = mx.recordio.pack(header, bytes.fromhex(item["image"]))
        writer.write_idx(item["key"], buf)
    writer.close()

def read(job):
    reader = mx.recordio.MXIndexedRecordIO(job["idx"], job["rec"], "r")
    records = {}
    for key in reader.keys:
        buf = reader.read_idx(key)
        header, image = header_json(buf)
        records[str(key)] = {"payload": buf.hex(), "header": header, "image": image}
    keys = list(reader.keys)
    reader.close()
    sequential = []
    plain = mx.recordio.MXRecordIO(job["rec"], "r")
    while True:
        buf = plain.read()
        if buf is None:
            break
        sequential.append(buf.hex())
    plain.close()
    with open(job["out"], "w") as out:
        json.dump({"keys": keys, "records": records, "sequential": sequential}, out)

with open(sys.argv[1]) as jobs:
    for job in json.load(jobs):
        {"write": write, "read": read}[job.pop("op")](job)
"""


def mxnet_jobs(tmp_path: Path, *jobs: dict) -> list[dict | None]:
    """Run jobs in MXNet; returns the report of each read job (None for writes)."""
    jobs_file = tmp_path / f"jobs-{len(list(tmp_path.glob('jobs-*')))}.json"
    outs = []
    for number, job in enumerate(jobs):
        if job["op"] == "read":
            job["out"] = str(tmp_path / f"{jobs_file.stem}-report-{number}.json")
        outs.append(job.get("out"))
        for name in ("rec", "idx"):
            job[name] = str(job[name])
    jobs_file.write_text(json.dumps(list(jobs)))
    run_mxnet(MXNET_JOBS, jobs_file)
    return [json.loads(Path(out).read_text()) if out else None for out in outs]


def mxnet_write(tmp_path: Path, name: str, spec: list[dict]) -> tuple[Path, Path]:
    rec, idx = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    mxnet_jobs(tmp_path, {"op": "write", "rec": rec, "idx": idx, "records": spec})
    return rec, idx


def mxnet_read(tmp_path: Path, rec: Path, idx: Path) -> dict:
    return mxnet_jobs(tmp_path, {"op": "read", "rec": rec, "idx": idx})[0]


# -- record specs, shared by both directions ---------------------------------------------------------


def f32(value: float) -> float:
    """``value`` rounded to float32, so that it survives a header unchanged."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


MAGIC_AS_FLOAT = struct.unpack("<f", MAGIC_BYTES)[0]  # a label whose bits are the magic number


def raw(key: int, data: bytes) -> dict:
    return {"key": key, "raw": data.hex()}


def packed(key: int, label: float | list[float], image: bytes, id_: int | None = None, id2: int = 0) -> dict:
    return {"key": key, "label": label, "id": key if id_ is None else id_, "id2": id2, "image": image.hex()}


def our_record(item: dict) -> bytes:
    """The record bytes a spec item stands for, made with our ``pack``."""
    if "raw" in item:
        return bytes.fromhex(item["raw"])
    label = tuple(item["label"]) if isinstance(item["label"], list) else item["label"]
    return pack(IRHeader(0, label, item["id"], item["id2"]), bytes.fromhex(item["image"]))


def jpeg(seed: int, size: int = 24) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def magic_spec() -> list[dict]:
    """Records with the magic number where the writer must split them, and where it must not."""
    rng = random.Random(11)
    big = bytearray(rng.randbytes(256 * 1024 + 3))
    for at in rng.sample(range(0, len(big) - 4), 200):
        big[at : at + 4] = MAGIC_BYTES  # about a quarter of them 4-byte aligned
    datas = [
        b"",
        MAGIC_BYTES,  # the whole record is the magic: two empty parts
        MAGIC_BYTES + b"at the start",
        b"midd" + MAGIC_BYTES + b"le!",
        b"at the end. " + MAGIC_BYTES,
        b"twice in a row. " + MAGIC_BYTES + MAGIC_BYTES + b"!",
        MAGIC_BYTES * 3,
        b"x" + MAGIC_BYTES + b"yz",  # unaligned occurrences: no split
        b"xy" + MAGIC_BYTES + b"z",
        b"xyz" + MAGIC_BYTES,
        b"ab" + MAGIC_BYTES + b"cd" + MAGIC_BYTES + b"e",  # unaligned, then aligned
        b"abcd" + MAGIC_BYTES + b"ef",  # split, and the last part needs padding
        b"abcd" + MAGIC_BYTES[:3],  # a magic cut short by the end of the record
        MAGIC_BYTES[1:] + MAGIC_BYTES[:1],  # rotated: no magic
        *(b"p" * n for n in range(1, 8)),  # every padding length
        bytes(big),
    ]
    spec = [raw(100 + 3 * n, data) for n, data in enumerate(datas)]
    key = 1000
    for label, image, id_, id2 in [
        (1.0, b"", MAGIC, 0),  # the magic in the header's id (offset 8)
        (1.0, b"", MAGIC << 32, 0),  # ... at offset 12
        (2.0, b"\xff\xd8", 5, MAGIC),  # ... in id2 (offset 16)
        (MAGIC_AS_FLOAT, b"\xff\xd8", 6, 0),  # ... as the label (offset 4)
        ([MAGIC_AS_FLOAT, 2.0], b"img", 7, 0),  # ... as the first of two labels (offset 24)
        (3.0, MAGIC_BYTES + jpeg(1), 8, 0),  # ... at the start of the image (offset 24)
        (3.0, b"\xff\xd8" + MAGIC_BYTES + jpeg(2), 9, 0),  # ... unaligned in the image
        ([4.0], b"\xff\xd8\xff\xe0" + MAGIC_BYTES * 2 + jpeg(3) + MAGIC_BYTES, 10, 0),
    ]:
        spec.append(packed(key, label, image, id_, id2))
        key += 7
    return spec


def im2rec_spec() -> list[dict]:
    """Every key an image, keys not contiguous; some with several labels (im2rec --pack-label)."""
    rng = random.Random(5)
    keys = sorted(rng.sample(range(3, 5000), 40))
    spec = []
    for n, key in enumerate(keys):
        label = float(n % 7)
        if n % 3 == 0:
            label = [label, f32(rng.uniform(-1, 1)), f32(rng.uniform(0, 100))]
        spec.append(packed(key, label, jpeg(key, size=16 + n % 5), id_=key))
    return spec


def multi_label_spec() -> list[dict]:
    rng = random.Random(3)
    spec = []
    for key, count in enumerate([1, 2, 3, 5, 8, 13, 1]):
        labels = [float(key * 10)] + [f32(rng.uniform(-1e6, 1e6)) for _ in range(count - 1)]
        spec.append(packed(key, labels, jpeg(100 + key), id2=rng.getrandbits(64)))
    spec.append(packed(len(spec), [-0.0, f32(1e-30), f32(3.4e38)], b""))
    return spec


def random_spec() -> list[dict]:
    """Random records of every shape, magic numbers sprinkled in, random headers."""
    rng = random.Random(2024)
    spec = []
    for key in rng.sample(range(10**6), 300):
        data = bytearray(rng.randbytes(rng.choice([rng.randrange(0, 16), rng.randrange(16, 2000)])))
        for _ in range(rng.randrange(0, 5)):
            if len(data) >= 4:
                at = rng.randrange(0, len(data) - 3)
                data[at : at + 4] = MAGIC_BYTES
        kind = rng.randrange(3)
        if kind == 0:
            spec.append(raw(key, bytes(data)))
        else:
            labels = [f32(rng.uniform(-1e4, 1e4)) for _ in range(rng.randrange(1, 6))]
            label = labels if kind == 2 else labels[0]
            spec.append(packed(key, label, bytes(data), rng.getrandbits(64), rng.getrandbits(64)))
    return spec


SPECS = {
    "magic": magic_spec,
    "im2rec": im2rec_spec,
    "multi_label": multi_label_spec,
    "random": random_spec,
}


# -- comparing -----------------------------------------------------------------------------------------


def header_json(header: IRHeader) -> dict:
    label = list(header.label) if isinstance(header.label, tuple) else header.label
    return {"flag": header.flag, "label": label, "id": header.id, "id2": header.id2}


def assert_ours_reads_as_mxnet(reader: RecordIOReader, report: dict) -> None:
    """Every key: same payload as read_idx, same header and image as mx.recordio.unpack."""
    assert sorted(reader.index) == sorted(report["keys"])
    for key in report["keys"]:
        expected = report["records"][str(key)]
        assert bytes(reader.read(key)) == bytes.fromhex(expected["payload"]), f"payload of key {key}"
        if expected["header"] is None:  # MXNet's unpack failed: too short for the header or its labels
            with pytest.raises(
                DamagedRecord, match=r"shorter than the 24-byte IRHeader|labels but the payload"
            ):
                reader.read_unpacked(key)
            continue
        header, image = reader.read_unpacked(key)
        assert header_json(header) == expected["header"], f"header of key {key}"
        assert bytes(image) == bytes.fromhex(expected["image"]), f"image of key {key}"
        label = expected["header"]["label"]
        assert header.class_label == (label[0] if isinstance(label, list) else label)


def assert_scan_reads_as_mxnet_sequential(rec: Path, report: dict) -> None:
    """Without the .idx, ours numbers records by position, as MXRecordIO.read() walks them."""
    with RecordIOReader(rec) as scanned:
        assert scanned.scan_problems == []
        assert len(scanned) == len(report["sequential"])
        for key, payload in enumerate(report["sequential"]):
            assert bytes(scanned.read(key)) == bytes.fromhex(payload), f"record {key} in file order"


def assert_mxnet_reads_as_written(report: dict, spec: list[dict]) -> None:
    """MXNet's read_idx/unpack give back exactly the records and headers of ``spec``."""
    assert report["keys"] == [item["key"] for item in spec]
    for item in spec:
        key, record = item["key"], our_record(item)
        got = report["records"][str(key)]
        assert bytes.fromhex(got["payload"]) == record, f"payload of key {key}"
        if "raw" in item:
            continue
        label = item["label"]
        flag = len(label) if isinstance(label, list) else 0
        assert got["header"] == {"flag": flag, "label": label, "id": item["id"], "id2": item["id2"]}
        assert got["image"] == item["image"], f"image of key {key}"
    assert [bytes.fromhex(p) for p in report["sequential"]] == [our_record(item) for item in spec]


def record_flags(rec: Path) -> list[int]:
    """The cflag of every record head in the file, walking it as dmlc's reader does."""
    data, pos, flags = rec.read_bytes(), 0, []
    while pos < len(data):
        magic, lrec = struct.unpack_from("<II", data, pos)
        assert magic == MAGIC, f"no magic at offset {pos}"
        flags.append(lrec >> 29)
        pos += 8 + (((lrec & (2**29 - 1)) + 3) & ~3)
    return flags


def write_ours(spec: list[dict], rec: Path, idx: Path) -> None:
    with RecordIOWriter(rec, idx) as writer:
        for item in spec:
            writer.write(our_record(item), key=item["key"])


# -- MXNet writes, ours reads --------------------------------------------------------------------------


@pytest.mark.parametrize("name", SPECS)
def test_mxnet_writes_ours_reads(mxnet, tmp_path, name):
    spec = SPECS[name]()
    rec, idx = tmp_path / "mx.rec", tmp_path / "mx.idx"
    _, report = mxnet_jobs(
        tmp_path,
        {"op": "write", "rec": rec, "idx": idx, "records": spec},
        {"op": "read", "rec": rec, "idx": idx},
    )
    assert_mxnet_reads_as_written(report, spec)  # the spec means what we think it means to MXNet
    with RecordIOReader(rec, idx) as reader:
        assert_ours_reads_as_mxnet(reader, report)
    assert_scan_reads_as_mxnet_sequential(rec, report)
    if name == "magic":  # MXNet really did split records, and left the unaligned magics alone
        flags = record_flags(rec)
        assert {0, 1, 2, 3} <= set(flags)
        assert flags.count(0) + flags.count(1) == len(spec)


def test_mxnet_im2rec_with_shuffled_idx(mxnet, tmp_path):
    spec = im2rec_spec()
    rec, idx = mxnet_write(tmp_path, "im2rec", spec)
    lines = idx.read_text().splitlines()
    random.Random(1).shuffle(lines)
    idx.write_text("\n".join(lines) + "\n")
    report = mxnet_read(tmp_path, rec, idx)
    assert report["keys"] == [int(line.split("\t")[0]) for line in lines]
    with RecordIOReader(rec, idx) as reader:
        assert_ours_reads_as_mxnet(reader, report)
        assert reader.identity_key_range() is None  # no insightface header: every key is an image
        assert reader.image_keys() == [item["key"] for item in spec]  # in file order
        images = {key: (header, bytes(image)) for key, header, image in reader.iter_images()}
    assert list(images) == [item["key"] for item in spec]
    for key, (header, image) in images.items():
        expected = report["records"][str(key)]
        assert header_json(header) == expected["header"]
        assert image == bytes.fromhex(expected["image"])


def insightface_images() -> list[tuple[int, bytes]]:
    """(label, JPEG) grouped by label; one image carries an aligned magic number."""
    images = [
        (label, jpeg(10 * label + n))
        for label, count in [(0, 3), (5, 1), (2, 4), (9, 2)]
        for n in range(count)
    ]
    images[4] = (5, b"\xff\xd8\xff\xe0" + MAGIC_BYTES + images[4][1][4:])
    return images


def test_mxnet_writes_insightface_layout(mxnet, tmp_path):
    """As insightface's face2rec2 writes: images (label ``[class, 1.0]`` or scalar), header, identities."""
    images = insightface_images()
    spec, ranges, key = [], {}, 0
    for label, image in images:
        key += 1
        ranges.setdefault(label, [key, key])[1] = key + 1
        spec.append(packed(key, [float(label), 1.0] if key % 2 else float(label), image))
    id_start = key + 1
    id_end = id_start + len(ranges)
    spec.append(packed(0, [float(id_start), float(id_end)], b"", id_=0))
    for n, (first, end) in enumerate(ranges.values()):
        spec.append(packed(id_start + n, [float(first), float(end)], b""))
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    _, report = mxnet_jobs(
        tmp_path,
        {"op": "write", "rec": rec, "idx": idx, "records": spec},
        {"op": "read", "rec": rec, "idx": idx},
    )
    with RecordIOReader(rec, idx) as reader:
        assert_ours_reads_as_mxnet(reader, report)
        assert reader.identity_key_range() == (id_start, id_end)
        assert reader.image_keys() == list(range(1, id_start))
        found = [(key, header.class_label, bytes(image)) for key, header, image in reader.iter_images()]
    assert found == [(key, float(label), image) for key, (label, image) in enumerate(images, 1)]
    assert_scan_reads_as_mxnet_sequential(rec, report)


# -- ours writes, MXNet reads; and the files are the same as MXNet's ---------------------------------


@pytest.mark.parametrize("name", SPECS)
def test_ours_writes_mxnet_reads(mxnet, tmp_path, name):
    spec = SPECS[name]()
    ours_rec, ours_idx = tmp_path / "ours.rec", tmp_path / "ours.idx"
    write_ours(spec, ours_rec, ours_idx)
    mx_rec, mx_idx = tmp_path / "mx.rec", tmp_path / "mx.idx"
    report, _ = mxnet_jobs(
        tmp_path,
        {"op": "read", "rec": ours_rec, "idx": ours_idx},
        {"op": "write", "rec": mx_rec, "idx": mx_idx, "records": spec},
    )
    assert_mxnet_reads_as_written(report, spec)
    assert ours_rec.read_bytes() == mx_rec.read_bytes()
    assert ours_idx.read_bytes() == mx_idx.read_bytes()


def test_ours_writes_insightface_mxnet_reads(mxnet, tmp_path):
    images = insightface_images()
    ours_rec, ours_idx = tmp_path / "ours.rec", tmp_path / "ours.idx"
    assert write_insightface(ours_rec, ours_idx, images) == len(images)
    # the same records as MXNet would write them, header first
    id_start = len(images) + 1
    ranges: dict[int, list[int]] = {}
    for key, (label, _) in enumerate(images, 1):
        ranges.setdefault(label, [key, key])[1] = key + 1
    spec = [packed(0, [float(id_start), float(id_start + len(ranges))], b"", id_=0)]
    spec += [packed(key, float(label), image) for key, (label, image) in enumerate(images, 1)]
    spec += [
        packed(id_start + n, [float(first), float(end)], b"", id_=0)
        for n, (first, end) in enumerate(ranges.values())
    ]
    mx_rec, mx_idx = tmp_path / "mx.rec", tmp_path / "mx.idx"
    report, _ = mxnet_jobs(
        tmp_path,
        {"op": "read", "rec": ours_rec, "idx": ours_idx},
        {"op": "write", "rec": mx_rec, "idx": mx_idx, "records": spec},
    )
    assert_mxnet_reads_as_written(report, spec)
    header = report["records"]["0"]["header"]
    assert header["flag"] == 2
    assert header["label"] == [id_start, id_start + 4]
    assert ours_rec.read_bytes() == mx_rec.read_bytes()
    assert ours_idx.read_bytes() == mx_idx.read_bytes()


# -- real faces, written by MXNet 1.9.1 -------------------------------------------------------------


def test_orl_rec_reads_as_mxnet(mxnet, tmp_path, orl_rec):
    rec, idx = orl_rec / "train.rec", orl_rec / "train.idx"
    report = mxnet_read(tmp_path, rec, idx)
    assert len(report["keys"]) == len(idx.read_text().splitlines()) > 400
    with RecordIOReader(rec, idx) as reader:
        assert_ours_reads_as_mxnet(reader, report)
        id_start, id_end = reader.identity_key_range()
        assert report["records"]["0"]["header"]["label"] == [id_start, id_end]
        image_keys = reader.image_keys()
        assert image_keys == list(range(1, id_start))
        for key, header, image in reader.iter_images():
            expected = report["records"][str(key)]
            assert header_json(header) == expected["header"]
            assert bytes(image) == bytes.fromhex(expected["image"])
            assert bytes(image[:2]) == b"\xff\xd8"  # JPEG
    assert_scan_reads_as_mxnet_sequential(rec, report)
