"""Reading and extracting an insightface RecordIO: ours against MXNet 1.9.1, in one run.

    .venv/bin/python benchmarks/extraction.py [--images 100000] [--repeats 3]

(a) a sequential read of every image record: our reader's loop against MXNet's
    ``MXIndexedRecordIO.read_idx`` + ``recordio.unpack`` loop (in the side env);
(b) ``kedro run --pipeline=extraction`` as a user runs it, start-up included,
    against a plain MXNet script that writes the same ``<label>/<key>.jpg`` folders.
Both sides read the same file from a warm page cache; the figures are ratios
(MXNet time / our time, so above 1 means we are faster).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import KedroProject  # noqa: E402
from mxnet_env import mxnet_python  # noqa: E402

from face_pipeline.recordio import RecordIOReader, write_insightface  # noqa: E402

ORL_REC = REPO.parent / "shared" / "data" / "orl_rec"
IMAGES_PER_CLASS = 50  # CASIA-WebFace averages ~47

MXNET_READ = """
import sys, time, mxnet as mx
rec, idx, first, end = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
started = time.perf_counter()
reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
total = 0
for key in range(first, end):
    header, image = mx.recordio.unpack(reader.read_idx(key))
    total += len(image)
print(time.perf_counter() - started, total)
"""

MXNET_EXTRACT = """
import os, sys, mxnet as mx
rec, idx, out = sys.argv[1], sys.argv[2], sys.argv[3]
reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
header, _ = mx.recordio.unpack(reader.read_idx(0))
made = set()
for key in range(1, int(header.label[0])):
    header, image = mx.recordio.unpack(reader.read_idx(key))
    label = int(header.label)
    if label not in made:
        os.makedirs(f"{out}/{label}", exist_ok=True)
        made.add(label)
    with open(f"{out}/{label}/{key}.jpg", "wb") as handle:
        handle.write(image)
"""


def face_jpegs() -> list[bytes]:
    """The 400 real ORL faces, resized to CASIA's 112x112 and JPEG-encoded."""
    faces = []
    with RecordIOReader(ORL_REC / "train.rec", ORL_REC / "train.idx") as reader:
        for _, _, image in reader.iter_images():
            face = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
            face = cv2.resize(face, (112, 112), interpolation=cv2.INTER_AREA)
            faces.append(cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())
    return faces


def benchmark_recordio(folder: Path, images: int) -> Path:
    """An insightface RecordIO of ``images`` 112x112 faces, made once and kept."""
    done = folder / f"done-{images}"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        faces = face_jpegs()
        pairs = ((i // IMAGES_PER_CLASS, faces[i % len(faces)]) for i in range(images))
        write_insightface(folder / "train.rec", folder / "train.idx", pairs)
        done.touch()
    return folder


def our_read_seconds(rec: Path, idx: Path) -> tuple[float, int]:
    started = time.perf_counter()
    with RecordIOReader(rec, idx) as reader:
        total = sum(len(image) for _, _, image in reader.iter_images())
    return time.perf_counter() - started, total


def mxnet_read_seconds(python: Path, rec: Path, idx: Path, images: int) -> tuple[float, int]:
    output = subprocess.run(
        [str(python), "-c", MXNET_READ, str(rec), str(idx), "1", str(images + 1)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(output[0]), int(output[1])


def timed(command: list[str], cwd: Path, env: dict | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(
        command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    python = mxnet_python()
    raw = benchmark_recordio(REPO / "benchmarks" / ".cache" / "bench-webface", args.images)
    rec, idx = raw / "train.rec", raw / "train.idx"
    rec.read_bytes()  # warm the page cache for both sides
    print(
        f"RecordIO: {args.images} images of 112x112, {rec.stat().st_size / 2**20:.0f} MiB, "
        f"{os.cpu_count()} cores"
    )

    ours, theirs = [], []
    for _ in range(args.repeats):
        seconds, our_total = our_read_seconds(rec, idx)
        ours.append(seconds)
        seconds, their_total = mxnet_read_seconds(python, rec, idx, args.images)
        theirs.append(seconds)
        assert our_total == their_total, "both readers must see the same image bytes"
    read_ours, read_theirs = statistics.median(ours), statistics.median(theirs)
    print(
        f"(a) sequential read: ours {args.images / read_ours:,.0f} records/s, "
        f"MXNet {args.images / read_theirs:,.0f} records/s "
        f"-> {read_theirs / read_ours:.1f}x MXNet (target >= 3x)"
    )

    kedro = str(Path(sys.executable).parent / "kedro")
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryDirectory(dir=REPO / "benchmarks" / ".cache") as scratch:
        project = KedroProject(Path(scratch) / "project").path
        out = Path(scratch) / "mxnet-out"
        extracted = project / "data" / "02_intermediate" / "casia-images"
        ours, theirs = [], []
        for _ in range(args.repeats):
            shutil.rmtree(extracted, ignore_errors=True)
            ours.append(
                timed([kedro, "run", "--pipeline=extraction", f"--params=raw_dir={raw}"], project, env)
            )
            shutil.rmtree(out, ignore_errors=True)
            theirs.append(timed([str(python), "-c", MXNET_EXTRACT, str(rec), str(idx), str(out)], project))
        report = json.loads((project / "data" / "08_reporting" / "extraction_report.json").read_text())
        assert report["images_written"] == args.images
        assert sum(1 for _ in out.rglob("*.jpg")) == args.images
    run_ours, run_theirs = statistics.median(ours), statistics.median(theirs)
    print(
        f"(b) extraction, start-up included: kedro run {run_ours:.1f}s "
        f"({args.images / run_ours:,.0f} records/s), "
        f"MXNet script {run_theirs:.1f}s -> {run_theirs / run_ours:.2f}x MXNet (target >= 1.0x)"
    )


if __name__ == "__main__":
    main()
