"""The partition pipeline on the real ORL faces, as extraction and validation leave them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from face_pipeline.errors import FacePipelineError
from face_pipeline.pipelines.partition.nodes import PartitionError

IMAGES = "02_intermediate/casia-images"
PARTITIONED = "03_primary/partitioned"
TABLE = "03_primary/partition_table.parquet"
SUMMARY = "08_reporting/partition_summary.json"
PARTIES = ("server", "client1", "client2")
# 40 ORL classes, one cut to 6 images: 39 eligible, 3 x 8 + 6 = 30 of them used.
PARAMS = {"classes_per_party": 8, "holdout_classes": 6, "min_images_per_class": 10, "test_fraction": 0.2}


@pytest.fixture
def validated(kedro_project, orl_rec):
    kedro_project.run("extraction", params={"raw_dir": str(orl_rec)})
    for name in ("1.jpg", "2.jpg", "3.jpg", "4.jpg"):  # class 0 keeps 6 images: not eligible
        kedro_project.data(f"{IMAGES}/0/{name}").unlink()
    kedro_project.run("validation")
    return kedro_project


def run_partition(project, seed: int, **overrides) -> tuple[pd.DataFrame, dict]:
    project.run("partition", params={"partition": {**PARAMS, "seed": seed, **overrides}})
    table = pd.read_parquet(project.data(TABLE))
    summary = json.loads(project.data(SUMMARY).read_text())
    return table, summary


def files_under(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def classes_of(table: pd.DataFrame) -> dict[str, set[str]]:
    return {party: set(group["label"]) for party, group in table.groupby("party")}


def test_parties_are_disjoint_equal_and_linked_in_place(validated):
    table, summary = run_partition(validated, seed=42)
    classes = classes_of(table)

    assert set(classes) == {*PARTIES, "holdout"}
    assert [len(classes[party]) for party in PARTIES] == [8, 8, 8]
    assert len(classes["holdout"]) == 6
    every = [label for labels in classes.values() for label in labels]
    assert len(every) == len(set(every)) == 30  # no identity in two parties
    assert "0" not in every  # 6 images, under min_images_per_class

    # Each training class: 10 images, 2 test (0.2) and 8 train; held-out classes keep all 10.
    for (party, label), group in table.groupby(["party", "label"]):
        counts = group["split"].value_counts().to_dict()
        assert counts == ({"holdout": 10} if party == "holdout" else {"train": 8, "test": 2}), (party, label)
    assert table["key"].is_unique and len(table) == 300

    # Layout, hard links, and nothing else in the folder.
    images, partitioned = validated.data(IMAGES), validated.data(PARTITIONED)
    for row in table.itertuples():
        expected = (
            f"holdout/{row.label}/{row.key}.jpg"
            if row.party == "holdout"
            else f"{row.party}/{row.split}/{row.label}/{row.key}.jpg"
        )
        assert row.dest_path == expected
        assert row.source_path == f"{row.label}/{row.key}.jpg"
        source, dest = os.stat(images / row.source_path), os.stat(partitioned / row.dest_path)
        assert (dest.st_ino, dest.st_dev) == (source.st_ino, source.st_dev)
    assert files_under(partitioned) == set(table["dest_path"])
    for party in PARTIES:
        assert {p.name for p in (partitioned / party).iterdir()} == {"train", "test"}
        assert {p.name for p in (partitioned / party / "train").iterdir()} == classes[party]

    assert summary["seed"] == 42
    assert summary["eligible_classes"] == 39 and summary["classes_in_clean_manifest"] == 40
    assert summary["unused_eligible_classes"] == 9
    for party in PARTIES:
        info = summary["parties"][party]
        assert (info["classes"], info["images"], info["train_images"], info["test_images"]) == (8, 80, 64, 16)
        assert info["images_per_class"] == {"min": 10, "median": 10.0, "max": 10}
        assert set(info["labels"]) == classes[party]
    assert summary["parties"]["holdout"]["classes"] == 6 and summary["parties"]["holdout"]["images"] == 60
    assert summary["totals"] == {
        "classes": 30,
        "images": 300,
        "train_images": 192,
        "test_images": 48,
        "holdout_images": 60,
    }


def test_same_seed_same_partition_other_seed_other_partition_and_no_stale_files(validated):
    first, _ = run_partition(validated, seed=7)
    again, _ = run_partition(validated, seed=7)
    pd.testing.assert_frame_equal(first, again)

    other, _ = run_partition(validated, seed=8)
    assert classes_of(other) != classes_of(first)
    assert set(other["dest_path"]) != set(first["dest_path"])
    partitioned = validated.data(PARTITIONED)
    assert files_under(partitioned) == set(other["dest_path"])  # nothing left from seed 7
    leftover_dirs = [path for path in partitioned.rglob("*") if path.is_dir() and not any(path.iterdir())]
    assert leftover_dirs == []


def test_test_fraction_keeps_at_least_one_image_each_side(validated):
    table, _ = run_partition(validated, seed=1, test_fraction=0.01)
    training = table[table["party"] != "holdout"]
    assert (training.groupby("label")["split"].apply(lambda s: (s == "test").sum()) == 1).all()
    table, _ = run_partition(validated, seed=1, test_fraction=0.99)
    training = table[table["party"] != "holdout"]
    assert (training.groupby("label")["split"].apply(lambda s: (s == "train").sum()) == 1).all()


def test_too_few_classes_is_one_clear_error(validated):
    with pytest.raises(PartitionError) as caught:
        validated.run("partition", params={"partition": {**PARAMS, "classes_per_party": 20, "seed": 1}})
    message = str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, FacePipelineError)
    assert "\n" not in message
    assert "needs 66 classes with at least min_images_per_class=10 images" in message
    assert "3 x classes_per_party=20 + holdout_classes=6" in message
    assert "only 39 of 40 classes have that many" in message
    assert "lower classes_per_party, holdout_classes or min_images_per_class" in message
    assert not validated.data(PARTITIONED).exists()


def test_demo_parameters_fit_the_demo_data(kedro_project):
    base = kedro_project.catalog().load("parameters")
    demo = kedro_project.catalog(env="demo", params={"training": {"epochs": 2}}).load("parameters")
    # The project merges parameters softly: the demo and --params change single keys.
    assert demo["partition"].keys() == base["partition"].keys()
    assert demo["partition"]["seed"] == base["partition"]["seed"]
    assert demo["training"]["epochs"] == 2 and demo["training"]["optimizer"] == base["training"]["optimizer"]
    needed = 3 * demo["partition"]["classes_per_party"] + demo["partition"]["holdout_classes"]
    assert needed == 80 <= demo["synthetic"]["classes"]
