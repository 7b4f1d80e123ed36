"""Per-party training: it really learns faces, and it refuses what it cannot train on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import pytest
from conftest import TINY, KedroProject

from face_pipeline.errors import TrainingError
from face_pipeline.models.builders import ModelConfigError
from face_pipeline.models.inputs import NoImagesError


@pytest.fixture
def demo(demo_party_folders: KedroProject, monkeypatch: pytest.MonkeyPatch) -> KedroProject:
    monkeypatch.chdir(demo_party_folders.path)
    return demo_party_folders


def metrics_of(project: KedroProject, party: str) -> dict:
    return json.loads(project.data(f"08_reporting/{party}/closed_set_metrics.json").read_text())


def test_a_tiny_se_eca_model_learns_the_demo_identities(demo):
    demo.run(
        "training",
        env="demo",
        params={"training": {**TINY, "epochs": 12}},
        namespaces=["server"],
    )

    metrics = metrics_of(demo, "server")
    assert metrics["classes"] == 20 and metrics["chance"] == pytest.approx(0.05)
    assert metrics["closed_set_top1"] >= 0.4, metrics  # chance is 0.05
    model = keras.saving.load_model(demo.data("06_models/server/model.keras"), safe_mode=True)
    assert model.name == "se_eca_resnet50_se_eca"
    assert model.get_layer("conv5_block1_se") and model.get_layer("conv5_block1_eca")
    history = json.loads(demo.data("07_model_output/server/training_history.json").read_text())
    assert len(history["loss"]) == 12 and history["loss"][-1] < history["loss"][0]
    assert demo.data("08_reporting/server/training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_one_namespace_trains_one_party_with_its_own_overrides(demo):
    for party in ("client1", "client2"):
        shutil.rmtree(demo.data(f"06_models/{party}"), ignore_errors=True)

    demo.run(
        "training",
        env="demo",
        params={
            "training": {**TINY, "epochs": 3},
            "client1": {"overrides": {"epochs": 1, "loss": "softmax"}},
        },
        namespaces=["client1"],
    )

    metrics = metrics_of(demo, "client1")
    assert metrics["epochs"] == 1 and metrics["params"]["loss"] == "softmax"
    assert not demo.data("06_models/client2/model.keras").exists()


def test_a_tiny_se_eca_model_learns_real_orl_faces(kedro_project, orl_rec):
    kedro_project.run("extraction", params={"raw_dir": str(orl_rec)})
    kedro_project.run("validation")
    kedro_project.run(
        "partition",
        params={"partition": {"classes_per_party": 12, "holdout_classes": 4, "min_images_per_class": 5}},
    )

    kedro_project.run("training", params={"training": {**TINY, "epochs": 20}}, namespaces=["server"])

    metrics = metrics_of(kedro_project, "server")
    assert metrics["classes"] == 12 and metrics["test_images"] == 24
    assert metrics["closed_set_top1"] >= 0.6, metrics  # chance is 1/12


def test_an_unknown_architecture_names_the_choices(demo):
    with pytest.raises(
        ModelConfigError, match="unknown architecture 'resnet18': choose one of se_eca_resnet50, "
    ):
        demo.run(
            "training", env="demo", params={"training": {"architecture": "resnet18"}}, namespaces=["server"]
        )


def test_an_unknown_override_is_refused(demo):
    with pytest.raises(TrainingError, match=r"server.overrides: unknown training parameters \['epoch'\]"):
        demo.run(
            "training", env="demo", params={"server": {"overrides": {"epoch": 3}}}, namespaces=["server"]
        )


def test_a_party_folder_without_images_is_a_clear_error(kedro_project):
    for split in ("train", "test"):
        (kedro_project.data(f"03_primary/partitioned/server/{split}/7")).mkdir(parents=True)

    with pytest.raises(NoImagesError, match=r"partitioned/server/train: no images in <class>/\*.jpg folders"):
        kedro_project.run("training", namespaces=["server"])


def copy_party(source: KedroProject, target: Path, party: str, drop_class: str | None = None) -> None:
    """A party's folder, optionally without one class, into another project."""
    destination = target / "data/03_primary/partitioned" / party
    shutil.copytree(source.data(f"03_primary/partitioned/{party}"), destination)
    if drop_class:
        for split in ("train", "test"):
            shutil.rmtree(destination / split / drop_class)


def test_resuming_continues_from_the_checkpoint(demo_party_folders, kedro_project):
    copy_party(demo_party_folders, kedro_project.path, "client2")
    params = {"training": {**TINY, "epochs": 1, "resume": True}}
    kedro_project.run("training", env="demo", params=params, namespaces=["client2"])

    params["training"]["epochs"] = 2
    kedro_project.run("training", env="demo", params=params, namespaces=["client2"])

    history = json.loads(kedro_project.data("07_model_output/client2/training_history.json").read_text())
    assert len(history["loss"]) == 2
    state = json.loads(kedro_project.data("06_models/checkpoints/client2/state.json").read_text())
    assert state["epoch"] == 2


def test_resuming_with_a_head_for_other_classes_is_refused(demo_party_folders, kedro_project):
    copy_party(demo_party_folders, kedro_project.path, "client2")
    params = {"training": {**TINY, "epochs": 1, "resume": True}}
    kedro_project.run("training", env="demo", params=params, namespaces=["client2"])
    first_class = sorted(
        p.name for p in kedro_project.data("03_primary/partitioned/client2/train").iterdir()
    )[0]
    shutil.rmtree(kedro_project.data("03_primary/partitioned/client2"))
    copy_party(demo_party_folders, kedro_project.path, "client2", drop_class=first_class)

    with pytest.raises(
        TrainingError, match=r"checkpoints/client2/model.keras: its class head has 20 classes .* 19"
    ):
        kedro_project.run("training", env="demo", params=params, namespaces=["client2"])


def test_a_checkpoint_with_a_lambda_layer_is_refused(kedro_project, demo_party_folders):
    copy_party(demo_party_folders, kedro_project.path, "client2")
    inputs = keras.Input((4,))
    unsafe = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs))
    checkpoint = kedro_project.data("06_models/checkpoints/client2")
    checkpoint.mkdir(parents=True)
    unsafe.save(checkpoint / "model.keras")

    with pytest.raises(TrainingError, match=r"client2/model.keras: cannot load the checkpoint: .*Lambda"):
        kedro_project.run(
            "training", env="demo", params={"training": {**TINY, "resume": True}}, namespaces=["client2"]
        )
