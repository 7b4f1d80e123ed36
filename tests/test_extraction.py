"""The extraction pipeline on real MXNet-written faces and on damaged RecordIO files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from kedro.io import DatasetError
from mxnet_env import run_mxnet

from face_pipeline.pipelines.extraction.nodes import ExtractionError, jpeg_size
from face_pipeline.recordio import IRHeader, RecordIOReader, pack, write_insightface

IMAGES = "02_intermediate/casia-images"


def orl_images(orl_rec: Path) -> list[tuple[int, bytes]]:
    """The 400 real ORL faces as ``(label, jpeg)``, read with our reader."""
    with RecordIOReader(orl_rec / "train.rec", orl_rec / "train.idx") as reader:
        return [(int(header.class_label), bytes(image)) for _, header, image in reader.iter_images()]


def files_under(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()
    }


def test_extracts_every_orl_record_byte_for_byte(kedro_project, orl_rec):
    kedro_project.run("extraction", params={"raw_dir": str(orl_rec)})

    written = files_under(kedro_project.data(IMAGES))
    with RecordIOReader(orl_rec / "train.rec", orl_rec / "train.idx") as reader:
        expected = {f"{int(h.class_label)}/{key}.jpg": bytes(image) for key, h, image in reader.iter_images()}
    assert len(expected) == 400
    assert written == expected

    manifest = pd.read_parquet(kedro_project.data("02_intermediate/extraction_manifest.parquet"))
    assert len(manifest) == 400
    assert manifest["label"].nunique() == 40
    assert set(manifest["width"]) == {92} and set(manifest["height"]) == {112}
    assert (manifest["bytes"] == manifest["path"].map(lambda p: len(written[p]))).all()

    report = json.loads(kedro_project.data("08_reporting/extraction_report.json").read_text())
    assert report["images_written"] == 400
    assert report["damaged_records"] == []
    assert report["layout"] == "insightface"


MXNET_DIGESTS = """
import hashlib, json, sys, mxnet as mx
reader = mx.recordio.MXIndexedRecordIO(sys.argv[2], sys.argv[1], "r")
header, _ = mx.recordio.unpack(reader.read_idx(0))
digests = {}
for key in range(1, int(header.label[0])):
    header, image = mx.recordio.unpack(reader.read_idx(key))
    digests[f"{int(header.label)}/{key}.jpg"] = hashlib.sha256(image).hexdigest()
print(json.dumps(digests))
"""


def test_extracted_orl_files_equal_what_mxnet_reads(kedro_project, orl_rec):
    kedro_project.run("extraction", params={"raw_dir": str(orl_rec)})

    mxnet_digests = json.loads(run_mxnet(MXNET_DIGESTS, orl_rec / "train.rec", orl_rec / "train.idx").stdout)
    written = files_under(kedro_project.data(IMAGES))
    assert len(mxnet_digests) == 400
    assert {path: hashlib.sha256(data).hexdigest() for path, data in written.items()} == mxnet_digests


def damaged_recordio(folder: Path, orl_rec: Path) -> dict[int, str]:
    """An insightface file of 40 real faces with four damaged image records; returns their keys."""
    images = orl_images(orl_rec)[:40]
    folder.mkdir(parents=True)
    rec, idx = folder / "train.rec", folder / "train.idx"
    write_insightface(rec, idx, images[:36])
    index = dict(line.split("\t") for line in idx.read_text().splitlines())
    # keep the header and the 36 good images; identity records are dropped from the index
    lines = [f"{key}\t{offset}" for key, offset in index.items() if int(key) <= 36]
    size = rec.stat().st_size
    # key 37: no magic at its offset; key 38: offset past the end of the file
    lines += [f"37\t{int(index['5']) + 8}", f"38\t{size + 4096}"]
    with open(rec, "ab") as handle:
        # key 39: a header with no image bytes
        lines.append(f"39\t{handle.tell()}")
        record = pack(IRHeader(0, 3.0, 39, 0))
        handle.write(struct.pack("<II", 0xCED7230A, len(record)) + record)
        # key 40: the file is cut short in the middle of this record
        lines.append(f"40\t{handle.tell()}")
        record = pack(IRHeader(0, 3.0, 40, 0), images[36][1])
        handle.write(struct.pack("<II", 0xCED7230A, len(record)) + record[: len(record) // 2])
    # the header record says images are keys 1..40
    header = pack(IRHeader(2, (41.0, 41.0), 0, 0))
    with open(rec, "r+b") as handle:
        handle.seek(8)
        handle.write(header)
    idx.write_text("\n".join(reversed(lines)) + "\n")
    return {37: "no RecordIO magic", 38: "past the end", 39: "no image bytes", 40: "cut short"}


def test_damaged_records_are_reported_and_every_good_record_is_written(kedro_project, orl_rec, tmp_path):
    damaged = damaged_recordio(tmp_path / "raw", orl_rec)

    kedro_project.run(
        "extraction", params={"raw_dir": str(tmp_path / "raw"), "extraction": {"max_damaged_fraction": 0.2}}
    )

    report = json.loads(kedro_project.data("08_reporting/extraction_report.json").read_text())
    reasons = {record["key"]: record["reason"] for record in report["damaged_records"]}
    assert set(reasons) == set(damaged)
    for key, words in damaged.items():
        assert words in reasons[key]
    assert report["images_written"] == 36
    written = files_under(kedro_project.data(IMAGES))
    assert len(written) == 36
    with RecordIOReader(tmp_path / "raw" / "train.rec", tmp_path / "raw" / "train.idx") as reader:
        for key in range(1, 37):
            header, image = reader.read_unpacked(key)
            assert written[f"{int(header.class_label)}/{key}.jpg"] == bytes(image)


def test_too_many_damaged_records_stop_the_run_with_a_clear_error(kedro_project, orl_rec, tmp_path):
    damaged_recordio(tmp_path / "raw", orl_rec)

    with pytest.raises(
        ExtractionError, match=r"4 of 40 image records are damaged .*max_damaged_fraction=0.01"
    ):
        kedro_project.run("extraction", params={"raw_dir": str(tmp_path / "raw")})
    assert not kedro_project.data(IMAGES).exists()


def test_rec_without_idx_is_indexed_by_scanning(kedro_project, orl_rec, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(orl_rec / "train.rec", raw / "train.rec")

    kedro_project.run("extraction", params={"raw_dir": str(raw)})

    report = json.loads(kedro_project.data("08_reporting/extraction_report.json").read_text())
    assert report["index"] == "scan"
    assert report["images_written"] == 400
    with RecordIOReader(orl_rec / "train.rec", orl_rec / "train.idx") as reader:
        expected = {f"{int(h.class_label)}/{key}.jpg": bytes(image) for key, h, image in reader.iter_images()}
    assert files_under(kedro_project.data(IMAGES)) == expected


@pytest.mark.parametrize(
    ("make_raw", "message"),
    [
        (lambda raw: None, r"raw_dir '.*missing' does not exist: put insightface's CASIA-WebFace"),
        (
            lambda raw: (raw.mkdir(), (raw / "train.idx").write_text("0\t0\n")),
            r"train.idx is there but .*train.rec is missing",
        ),
        (
            lambda raw: (raw.mkdir(), (raw / "train.rec").write_bytes(b"")),
            r"train.rec: the file is empty \(0 bytes\)",
        ),
    ],
    ids=["no raw_dir", "idx without rec", "empty rec"],
)
def test_unusable_raw_folder_gives_one_clear_error(kedro_project, tmp_path, make_raw, message):
    raw = tmp_path / "missing"
    make_raw(raw)
    with pytest.raises(DatasetError, match=message):
        kedro_project.run("extraction", params={"raw_dir": str(raw)})


def test_cli_prints_one_line_instead_of_a_traceback(kedro_project, tmp_path):
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "kedro"),
            "run",
            "--pipeline=extraction",
            f"--params=raw_dir={tmp_path}/nowhere",
        ],
        cwd=kedro_project.path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1
    assert f"{tmp_path}/nowhere" in error_lines[0] and "make demo" in error_lines[0]


def test_rerun_keeps_files_in_place_and_removes_stale_ones(kedro_project, orl_rec):
    kedro_project.run("extraction", params={"raw_dir": str(orl_rec)})
    root = kedro_project.data(IMAGES)
    before = {path: path.stat() for path in root.rglob("*.jpg")}
    (root / "0" / "1.jpg").unlink()
    (root / "999").mkdir()
    (root / "999" / "5.jpg").write_bytes(b"left over from another run")
    (root / "3" / "31.jpg.part").write_bytes(b"half")

    kedro_project.run("extraction", params={"raw_dir": str(orl_rec)})

    after = {path: path.stat() for path in root.rglob("*") if path.is_file()}
    assert set(after) == set(before)
    rewritten = [
        path
        for path in before
        if (after[path].st_ino, after[path].st_mtime_ns) != (before[path].st_ino, before[path].st_mtime_ns)
    ]
    assert rewritten == [root / "0" / "1.jpg"]


def count_jpegs(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.jpg")) if root.exists() else 0


def big_recordio(folder: Path, orl_rec: Path, count: int) -> None:
    """``count`` real faces (the ORL ones repeated) in 500 classes."""
    faces = [image for _, image in orl_images(orl_rec)]
    folder.mkdir(parents=True)
    per_class = count // 500
    write_insightface(
        folder / "train.rec",
        folder / "train.idx",
        ((i // per_class, faces[i % len(faces)]) for i in range(per_class * 500)),
    )


def test_a_killed_run_leaves_no_partial_jpeg_and_the_rerun_resumes(kedro_project, orl_rec, tmp_path):
    raw = tmp_path / "raw"
    big_recordio(raw, orl_rec, 60_000)
    command = [
        str(Path(sys.executable).parent / "kedro"),
        "run",
        "--pipeline=extraction",
        f"--params=raw_dir={raw}",
    ]
    root = kedro_project.data(IMAGES)

    run = subprocess.Popen(
        command,
        cwd=kedro_project.path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    while run.poll() is None and count_jpegs(root) < 5000:
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()

    with RecordIOReader(raw / "train.rec", raw / "train.idx") as reader:
        expected = {f"{int(h.class_label)}/{key}.jpg": bytes(image) for key, h, image in reader.iter_images()}
    survivors = {path.relative_to(root).as_posix(): path for path in root.rglob("*.jpg")}
    assert 0 < len(survivors) < len(expected), "the kill should land in the middle of writing"
    for relative, path in survivors.items():
        assert path.read_bytes() == expected[relative]
    inodes = {relative: path.stat().st_ino for relative, path in survivors.items()}

    subprocess.run(command, cwd=kedro_project.path, check=True, capture_output=True)

    assert files_under(root) == expected
    kept = sum((root / relative).stat().st_ino == inode for relative, inode in inodes.items())
    assert kept == len(inodes)
    manifest = pd.read_parquet(kedro_project.data("02_intermediate/extraction_manifest.parquet"))
    assert len(manifest) == len(expected)


def test_jpeg_size_reads_the_frame_header(orl_rec):
    _, image = orl_images(orl_rec)[0]
    assert jpeg_size(image) == (92, 112)
    assert jpeg_size(b"GIF89a....") == (0, 0)
    assert jpeg_size(image[:20]) == (0, 0)


def test_extraction_does_not_import_tensorflow(kedro_project, orl_rec):
    """Kedro imports every pipeline at start-up; only training may pull TensorFlow in."""
    script = (
        "import sys\n"
        "from kedro.framework.startup import bootstrap_project\n"
        "from kedro.framework.session import KedroSession\n"
        "bootstrap_project('.')\n"
        "with KedroSession.create(project_path='.', runtime_params={'raw_dir': sys.argv[1]}) as session:\n"
        "    session.run(pipeline_names=['extraction'])\n"
        "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(orl_rec)],
        cwd=kedro_project.path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert len(list(kedro_project.data(IMAGES).rglob("*.jpg"))) == 400
