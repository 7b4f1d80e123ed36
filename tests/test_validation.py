"""The validation pipeline on the real ORL faces, with damaged files written into the extracted folder."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from face_pipeline.pipelines.validation.nodes import check_files, check_image

IMAGES = "02_intermediate/casia-images"
REPORT = "08_reporting/validation_report.json"
MANIFEST = "03_primary/clean_manifest.parquet"


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), color=128).save(buffer, "JPEG")
    return buffer.getvalue()


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (width, height), color=128).save(buffer, "PNG")
    return buffer.getvalue()


def first_file(root: Path, label: str) -> Path:
    return sorted((root / label).iterdir())[0]


@pytest.fixture
def extracted(kedro_project, orl_rec) -> Path:
    kedro_project.run("extraction", params={"raw_dir": str(orl_rec)})
    root = kedro_project.data(IMAGES)
    assert len(list(root.rglob("*.jpg"))) == 400
    return root


def damage(root: Path) -> dict:
    """Damage the extracted ORL faces in every way validation must catch; returns what was done."""
    originals = sorted(path.relative_to(root).as_posix() for path in root.rglob("*.jpg"))
    cut = first_file(root, "0")
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])

    # A JPEG whose end marker is in place but whose scan data is overwritten with zeros.
    undecodable = first_file(root, "6")
    data = undecodable.read_bytes()
    undecodable.write_bytes(data[:600] + bytes(200) + data[800:])

    (root / "1" / "9001.jpg").write_text("this is not an image, just some text\n")
    (root / "1" / "9002.jpg").write_bytes(b"")
    (root / "2" / "9003.jpg").write_bytes(png(92, 112))
    (root / "2" / "9004.jpg").write_bytes(jpeg(16, 16))

    original = first_file(root, "3")
    duplicate = root / "3" / "9005.jpg"
    shutil.copyfile(original, duplicate)

    # Class 5 has nothing usable left: every file is cut or emptied.
    for index, path in enumerate(sorted((root / "5").iterdir())):
        path.write_bytes(b"" if index % 2 else path.read_bytes()[:100])
    (root / "77").mkdir()  # a class folder with no files at all

    return {
        "originals": originals,
        "cut": cut.relative_to(root).as_posix(),
        "undecodable": undecodable.relative_to(root).as_posix(),
        "kept_duplicate": original.relative_to(root).as_posix(),
        "dropped_duplicate": "3/9005.jpg",
        "damaged": {cut.relative_to(root).as_posix(), undecodable.relative_to(root).as_posix()}
        | {f"5/{path.name}" for path in (root / "5").iterdir()},
    }


def test_reports_each_kind_of_bad_file_and_keeps_every_good_one(kedro_project, extracted):
    done = damage(extracted)
    kedro_project.run("validation")

    report = json.loads(kedro_project.data(REPORT).read_text())
    reasons = {item["path"]: item["reason"] for item in report["corrupt"]}

    assert reasons[done["cut"]].startswith("truncated JPEG: no end-of-image marker")
    assert "Pillow" in reasons[done["cut"]]
    assert reasons[done["undecodable"]].startswith("undecodable: Pillow: ")
    assert reasons["1/9001.jpg"] == "not a JPEG: text, starts with 'this is not an image, just some text\\n'"
    assert reasons["1/9002.jpg"] == "zero-byte file"
    assert reasons["2/9003.jpg"] == "not a JPEG: a PNG image, starts with 89 50 4e 47 0d 0a 1a 0a"
    assert reasons["2/9004.jpg"] == "too small: 16x16 pixels, under min_image_size=32"
    for index, path in enumerate(sorted(path for path in reasons if path.startswith("5/"))):
        if index % 2:
            assert reasons[path] == "zero-byte file"
        else:
            assert reasons[path].startswith("truncated JPEG: no end-of-image marker")
    assert len(reasons) == 2 + 4 + 10
    assert report["corrupt_by_reason"] == {
        "not a JPEG": 2,
        "too small": 1,
        "truncated JPEG": 6,
        "undecodable": 1,
        "zero-byte file": 6,
    }

    assert report["duplicates"] == [[done["kept_duplicate"], done["dropped_duplicate"]]]
    assert report["duplicates_dropped"] == 1
    assert report["empty_classes_removed"] == {"count": 2, "labels": ["5", "77"]}
    assert report["small_classes_removed"]["count"] == 0

    assert report["images_checked"] == 400 + 5
    assert report["images_valid"] == 400 - 12 + 1  # the duplicate copy is a good image too
    assert report["classes_checked"] == 41

    manifest = pd.read_parquet(kedro_project.data(MANIFEST))
    good = sorted(set(done["originals"]) - done["damaged"])
    assert len(good) == 388
    assert sorted(manifest["path"]) == good
    assert report["images_kept"] == 388
    assert report["classes_kept"] == 39 == manifest["label"].nunique()
    assert list(manifest.columns) == ["key", "label", "path", "bytes", "width", "height", "sha256"]
    assert str(manifest["key"].dtype) == "int64" and str(manifest["label"].dtype) == "string"
    assert (manifest["path"] == manifest["label"] + "/" + manifest["key"].astype(str) + ".jpg").all()
    assert set(manifest["width"]) == {92} and set(manifest["height"]) == {112}
    for row in manifest.itertuples():
        data = (extracted / row.path).read_bytes()
        assert row.bytes == len(data)
        assert row.sha256 == hashlib.sha256(data).hexdigest()

    # Reported, never deleted.
    for path in [*reasons, done["dropped_duplicate"]]:
        assert (extracted / path).is_file()

    for plot in ("validation_sample_faces.png", "validation_images_per_class.png"):
        with Image.open(kedro_project.data(f"08_reporting/{plot}")) as image:
            assert image.format == "PNG"
            assert min(image.size) > 200


def test_clean_orl_faces_pass_untouched(kedro_project, extracted):
    kedro_project.run("validation")
    report = json.loads(kedro_project.data(REPORT).read_text())
    assert report["images_checked"] == report["images_valid"] == report["images_kept"] == 400
    assert report["corrupt"] == [] and report["duplicates"] == []
    assert report["empty_classes_removed"] == {"count": 0, "labels": []}
    manifest = pd.read_parquet(kedro_project.data(MANIFEST))
    assert len(manifest) == 400 and manifest["label"].nunique() == 40


def test_small_classes_removed_and_duplicates_kept_when_asked(kedro_project, extracted):
    (extracted / "4" / "41.jpg").unlink()
    (extracted / "4" / "42.jpg").write_bytes(b"")
    shutil.copyfile(extracted / "7" / "71.jpg", extracted / "8" / "9000.jpg")
    kedro_project.run(
        "validation", params={"validation": {"min_images_per_class": 10, "drop_duplicates": False}}
    )
    report = json.loads(kedro_project.data(REPORT).read_text())
    assert report["small_classes_removed"] == {
        "min_images_per_class": 10,
        "count": 1,
        "labels": ["4"],
        "images": 8,
    }
    assert report["duplicates"] == [["7/71.jpg", "8/9000.jpg"]]
    assert report["duplicates_dropped"] == 0
    manifest = pd.read_parquet(kedro_project.data(MANIFEST))
    assert "4" not in set(manifest["label"])
    assert {"7/71.jpg", "8/9000.jpg"} <= set(manifest["path"])
    assert len(manifest) == 400 - 10 + 1


def test_pool_and_single_process_agree(extracted):
    paths = sorted(path.relative_to(extracted).as_posix() for path in extracted.rglob("*.jpg"))
    (extracted / paths[5]).write_bytes(b"")
    assert check_files(extracted, paths, workers=2) == check_files(extracted, paths, workers=1)


def test_jpeg_missing_only_its_end_marker_is_truncated(extracted):
    image = (extracted / "0" / "1.jpg").read_bytes()
    assert check_image(image)[1:3] == (92, 112) and check_image(image)[4] is None
    reason = check_image(image[:-2])[4]
    assert reason.startswith("truncated JPEG: no end-of-image marker")
