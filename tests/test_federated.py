"""Federated rounds and evaluation: FedAvg of the shared layers, heads kept per party, real verification."""

from __future__ import annotations

import json
import shutil

import keras
import numpy as np
import pandas as pd
import pytest
from conftest import QUICK_DEMO, TINY, KedroProject

from face_pipeline.datasets import ImageFolder
from face_pipeline.errors import FacePipelineError
from face_pipeline.models.builders import build_face_model
from face_pipeline.models.federated import (
    AggregationError,
    assign_weights,
    federated_average,
    kept_weights,
    shared_weights,
    weights_to_restore,
)
from face_pipeline.pipelines.evaluation.nodes import make_verification_pairs
from face_pipeline.verification import VerificationError

PARAMS = QUICK_DEMO  # what the demo_outputs fixture ran with
MODELS = ("federated", "centralized", "server", "client1", "client2")


def tiny_model(num_classes: int = 3, **changes) -> keras.Model:
    options = {"backbone": TINY["backbone"], "img_size": 32, "embedding_size": 8, **changes}
    return build_face_model(num_classes, **options)


# ---- FedAvg and the split between shared and kept layers -----------------------------


def test_the_class_head_is_never_shared_and_batch_norm_is_kept_too():
    model = tiny_model()

    shared, kept = shared_weights(model), kept_weights(model)

    assert not any(path.startswith("class_head/") for path in shared)
    assert "embedding_dense/kernel" in shared and "conv1_bn/moving_mean" in shared
    assert set(kept) >= {"class_head/kernel", "conv1_bn/moving_mean", "embedding/gamma"}
    assert "conv1_conv/kernel" not in kept
    assert set(weights_to_restore(kept, "shared")) == {"class_head/kernel"}
    assert weights_to_restore(kept, "local") == kept


def test_federated_average_weights_parties_by_their_images():
    first = {"dense/kernel": np.array([0.0, 4.0], np.float32)}
    second = {"dense/kernel": np.array([3.0, 1.0], np.float32)}

    by_images = federated_average([("server", first, 100), ("client1", second, 300)])
    equal = federated_average([("server", first, 1), ("client1", second, 1)])

    np.testing.assert_allclose(by_images["dense/kernel"], [2.25, 1.75])
    np.testing.assert_allclose(equal["dense/kernel"], [1.5, 2.5])
    assert by_images["dense/kernel"].dtype == np.float32


def test_averaging_real_models_is_exact_and_loads_back():
    models = [tiny_model(num_classes) for num_classes in (3, 5)]  # heads differ; shared layers do not
    updates = [
        (f"party{i}", shared_weights(m), n) for i, (m, n) in enumerate(zip(models, (1, 3), strict=True))
    ]

    average = federated_average(updates)
    assign_weights(models[0], average, "global")

    for path, value in shared_weights(models[0]).items():
        expected = 0.25 * updates[0][1][path] + 0.75 * updates[1][1][path]
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7, err_msg=path)


def test_parties_whose_shared_layers_differ_are_refused_naming_the_layer():
    small, wide = tiny_model(embedding_size=8), tiny_model(embedding_size=16)

    with pytest.raises(AggregationError, match=r"layer 'embedding_dense' \(embedding_dense/kernel\) is"):
        federated_average([("server", shared_weights(small), 1), ("client1", shared_weights(wide), 1)])


def test_a_party_with_an_extra_layer_is_refused_naming_it():
    plain, attention = tiny_model(attention="none"), tiny_model(attention="se")

    with pytest.raises(AggregationError, match=r"client2 has layer 'conv2_block1_se' .*, server does not"):
        federated_average([("server", shared_weights(plain), 1), ("client2", shared_weights(attention), 1)])


def test_weights_that_do_not_fit_the_model_name_the_layer():
    model = tiny_model(embedding_size=8)

    with pytest.raises(AggregationError, match=r"client1's own layers: layer 'class_head' .* has shape"):
        assign_weights(model, kept_weights(tiny_model(num_classes=7)), "client1's own layers")


# ---- the pipelines on the demo faces ------------------------------------------------------


@pytest.fixture(scope="module")
def federated_demo(demo_outputs: KedroProject) -> KedroProject:
    """The whole demo run: three parties trained, two federated rounds, the baseline, the evaluation."""
    return demo_outputs


@pytest.fixture
def demo(federated_demo: KedroProject, monkeypatch: pytest.MonkeyPatch) -> KedroProject:
    monkeypatch.chdir(federated_demo.path)
    return federated_demo


def load_model(project: KedroProject, relative: str) -> keras.Model:
    return keras.saving.load_model(project.data(relative), safe_mode=True)


def test_every_round_is_a_model_and_every_party_is_in_the_history(demo):
    rounds = sorted(p.name for p in demo.data("06_models/federated/rounds").iterdir())
    assert rounds == ["round_00.keras", "round_01.keras", "round_02.keras"]
    history = json.loads(demo.data("07_model_output/federated/history.json").read_text())
    assert [entry["round"] for entry in history["rounds"]] == [1, 2]
    assert set(history["rounds"][0]["parties"]) == {"server", "client1", "client2"}
    table = pd.read_parquet(demo.data("07_model_output/federated/round_metrics.parquet"))
    assert len(table) == 6 and (table["train_images"] > 0).all()
    assert demo.data("08_reporting/federated/round_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_global_model_is_the_last_round_and_ends_at_the_embedding(demo):
    final = load_model(demo, "06_models/federated/global_model.keras")
    last = load_model(demo, "06_models/federated/rounds/round_02.keras")

    assert final.layers[-1].name == "embedding" and final.output.shape[-1] == TINY["embedding_size"]
    for ours, theirs in zip(final.weights, last.weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_round_zero_is_the_servers_own_model(demo):
    server = load_model(demo, "06_models/server/model.keras")
    round_zero = load_model(demo, "06_models/federated/rounds/round_00.keras")

    shared = shared_weights(server)
    for path, value in shared_weights(round_zero).items():
        np.testing.assert_array_equal(value, shared[path], err_msg=path)


def test_each_party_keeps_its_own_head_over_the_global_layers(demo):
    final = shared_weights(load_model(demo, "06_models/federated/global_model.keras"))
    heads = {}
    for party in ("server", "client1", "client2"):
        model = load_model(demo, f"06_models/federated/parties/{party}.keras")
        heads[party] = model.get_layer("class_head").kernel.numpy()
        for path, value in shared_weights(model).items():
            np.testing.assert_array_equal(value, final[path], err_msg=f"{party} {path}")
    assert heads["server"].shape == (TINY["embedding_size"], 20)
    assert not np.allclose(heads["client1"], heads["client2"])


def test_every_model_verifies_unseen_identities_far_above_chance(demo):
    metrics = json.loads(demo.data("08_reporting/evaluation_metrics.json").read_text())

    verification = metrics["verification"]
    assert set(verification) == set(MODELS)
    for name, result in verification.items():
        assert result["matched"] == result["unmatched"] == 3000
        assert result["accuracy"] >= 0.6, (name, result)  # chance is 0.5
        assert result["auc"] >= result["accuracy"], (name, result)
    # The global model has seen every party's identities; each party's model a third of them.
    assert verification["federated"]["accuracy"] >= 0.8, verification["federated"]
    assert verification["federated"]["accuracy"] > verification["client1"]["accuracy"]
    closed = pd.DataFrame(metrics["closed_set"])
    assert set(closed["model"]) == {"single party", "federated", "centralized"}
    assert len(closed) == 9 and (closed["top1"] >= 0.3).all(), closed  # chance is 0.05


def test_the_report_has_every_model_in_both_tables(demo):
    report = demo.data("08_reporting/evaluation_report.md").read_text()

    for name in MODELS:
        assert f"| {name} | " in report
    for party in ("server", "client1", "client2"):
        assert f"| {party} | " in report
    assert "TAR @ FAR=0.001" in report
    assert demo.data("08_reporting/roc_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_the_centralized_baseline_trains_on_all_parties_for_the_same_epochs(demo):
    metrics = json.loads(demo.data("08_reporting/centralized/closed_set_metrics.json").read_text())

    assert metrics["classes"] == 60
    assert metrics["epochs"] == 10 + 2 * 2  # the server's round 0 plus every round's local epochs


# ---- bad inputs -----------------------------------------------------------------------


def test_zero_rounds_is_refused(demo):
    with pytest.raises(FacePipelineError, match=r"aggregation.rounds is 0: it must be at least 1"):
        demo.run("aggregation", env="demo", params={**PARAMS, "aggregation": {"rounds": 0}})


def test_an_unknown_batch_norm_mode_names_the_choices(demo):
    with pytest.raises(
        FacePipelineError, match=r"aggregation.batch_norm is 'fedbn': choose one of shared, local"
    ):
        demo.run("aggregation", env="demo", params={**PARAMS, "aggregation": {"batch_norm": "fedbn"}})


def test_a_server_model_built_with_other_parameters_names_the_layer(demo):
    params = {**PARAMS, "training": {**PARAMS["training"], "embedding_size": 32}}

    with pytest.raises(
        AggregationError, match=r"server.party_model: layer 'embedding_dense' \(embedding_dense/kernel\)"
    ):
        demo.run("aggregation", env="demo", params=params, node_names=["run_federated_rounds"])


def test_a_missing_party_model_names_the_file_and_the_node_that_makes_it(demo_party_folders, kedro_project):
    shutil.copytree(demo_party_folders.data("03_primary"), kedro_project.data("03_primary"))

    with pytest.raises(
        FacePipelineError,
        match=r"^server.party_model: \S*data/06_models/server/model.keras does not exist; "
        r"run `kedro run --nodes=server.train_party` first$",
    ):
        kedro_project.run("aggregation", env="demo", params=PARAMS, node_names=["run_federated_rounds"])


def test_evaluation_names_every_missing_model(demo_party_folders, kedro_project):
    shutil.copytree(demo_party_folders.data("03_primary"), kedro_project.data("03_primary"))
    missing = ["centralized_model", "client1.party_model", "client2.party_model", "federated_party_models"]

    with pytest.raises(FacePipelineError) as error:
        kedro_project.run("evaluation", env="demo", params=PARAMS)

    for name in [*missing, "global_model", "server.party_model"]:
        assert f"{name}: " in str(error.value)
    assert "06_models/federated/parties does not exist; run `kedro run --nodes=run_federated_rounds`" in str(
        error.value
    )


def test_a_holdout_with_one_identity_is_refused(demo_party_folders, tmp_path):
    holdout = demo_party_folders.data("03_primary/partitioned/holdout")
    one = sorted(p for p in holdout.iterdir() if p.is_dir())[0]
    shutil.copytree(one, tmp_path / "holdout" / one.name)

    with pytest.raises(VerificationError, match=r"holdout has 1 identity .*at least two"):
        make_verification_pairs(ImageFolder(tmp_path), {"pairs": 600, "folds": 10, "seed": 0})
