"""Read every image record of an MXNet RecordIO and hand its bytes, untouched, to the catalog."""

from __future__ import annotations

import logging
import time

import pandas as pd

from face_pipeline.errors import FacePipelineError
from face_pipeline.recordio import RecordIOReader

logger = logging.getLogger(__name__)

# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE_MARKERS = frozenset([0x01, *range(0xD0, 0xD9)])

MANIFEST_COLUMNS = ["key", "label", "path", "bytes", "width", "height"]


class ExtractionError(FacePipelineError):
    """The RecordIO is too damaged to extract."""


def jpeg_size(data: bytes | memoryview) -> tuple[int, int]:
    """``(width, height)`` from a JPEG's start-of-frame header, ``(0, 0)`` if there is none."""
    size = len(data)
    if size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return 0, 0
    pos = 2
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            return 0, 0
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE_MARKERS:
            pos += 2
            continue
        if marker in _SOF_MARKERS:
            if pos + 9 > size:
                return 0, 0
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            return width, height
        pos += 2 + ((data[pos + 2] << 8) | data[pos + 3])
    return 0, 0


def _class_of(label: float) -> int | None:
    return int(label) if label >= 0 and float(label).is_integer() else None


def extract_images(reader: RecordIOReader, params: dict) -> tuple[dict, pd.DataFrame, dict]:
    """Every image record as ``{'<label>/<key>.jpg': image bytes}``, its manifest and a report.

    A damaged record is skipped and reported by key and reason; past
    ``max_damaged_fraction`` of the image records the run stops instead.
    """
    started = time.perf_counter()
    keys = reader.image_keys()
    files: dict[str, memoryview] = {}
    rows: list[tuple] = []
    damaged: list[dict] = []
    for key, header, image in reader.iter_images(keys):
        if header is None:
            damaged.append({"key": key, "reason": image})
            continue
        label = _class_of(header.class_label)
        if label is None:
            damaged.append({"key": key, "reason": f"label {header.class_label} is not a class number"})
            continue
        if len(image) == 0:
            damaged.append({"key": key, "reason": "header with no image bytes"})
            continue
        path = f"{label}/{key}.jpg"
        files[path] = image
        rows.append((key, str(label), path, len(image), *jpeg_size(image)))
    _check_damage(reader, len(keys), damaged, params["max_damaged_fraction"])
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype(
        {"key": "int64", "label": "string", "bytes": "int64", "width": "int32", "height": "int32"}
    )
    report = {
        "source": str(reader.rec_path),
        "index": reader.index_source,
        "layout": "insightface" if reader.identity_key_range() else "im2rec",
        "image_records": len(keys),
        "images_written": len(files),
        "classes": int(manifest["label"].nunique()),
        "damaged_count": len(damaged),
        "damaged_records": damaged,
        "non_jpeg_headers": int((manifest["width"] == 0).sum()),
        "scan_problems": reader.scan_problems,
    }
    logger.info(
        "Read %d image records (%d classes, %d damaged) from %s in %.1fs",
        len(keys),
        report["classes"],
        len(damaged),
        reader.rec_path,
        time.perf_counter() - started,
    )
    return files, manifest, report


def _check_damage(reader: RecordIOReader, total: int, damaged: list[dict], limit: float) -> None:
    if total == 0:
        raise ExtractionError(f"{reader.rec_path}: no image records found")
    for record in damaged[:20]:
        logger.warning("%s: skipped record %d: %s", reader.rec_path, record["key"], record["reason"])
    fraction = len(damaged) / total
    if fraction > limit:
        first = damaged[0]
        raise ExtractionError(
            f"{reader.rec_path}: {len(damaged)} of {total} image records are damaged ({fraction:.1%}, "
            f"over max_damaged_fraction={limit}); first: key {first['key']}: {first['reason']}"
        )
