"""Attention maps: Grad-CAM that points where the evidence is, the SE/ECA gates, and bad inputs."""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pandas as pd
import pytest
from conftest import ORL_FACES, QUICK_DEMO, TINY, KedroProject

from face_pipeline.datasets import ImageFolder
from face_pipeline.errors import FacePipelineError
from face_pipeline.models.attention import channel_gates, gradcam, peakedness, top_decile_share
from face_pipeline.models.builders import build_face_model, embedding_model
from face_pipeline.pipelines.attention.nodes import (
    explain_image,
    measure_channel_attention,
    plot_channel_attention,
    read_face,
    write_attention_report,
)

PNG = b"\x89PNG"


# ---- Grad-CAM and the gates on models whose answer is known -------------------------------


def colour_detector() -> keras.Model:
    """Feature channel 0 is the red of each pixel, channel 1 the green; class k scores channel k."""
    image = keras.Input((16, 16, 3), name="image")
    features = keras.layers.Conv2D(2, 1, use_bias=False, name="colours")(image)
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(features)
    head = keras.layers.Dense(2, use_bias=False, name="class_head")(pooled)
    model = keras.Model(image, head)
    model.get_layer("colours").set_weights([np.array([[[[1, 0], [0, 1], [0, 0]]]], np.float32)])
    model.get_layer("class_head").set_weights([np.eye(2, dtype=np.float32)])
    return model


def test_gradcam_lights_up_where_the_evidence_for_the_class_is():
    image = np.zeros((1, 16, 16, 3), np.float32)
    image[0, 2:6, 2:6, 0] = 1.0  # a red square, top left
    image[0, 10:14, 9:15, 1] = 1.0  # a green bar, bottom right

    red, red_score = gradcam(colour_detector(), image, classes=np.array([0]))
    green, _ = gradcam(colour_detector(), image, classes=np.array([1]))

    assert red.shape == (1, 16, 16) and red.max() == pytest.approx(1.0)
    assert red[0, 2:6, 2:6].min() == pytest.approx(1.0) and red[0, 10:, 9:].max() == 0.0
    assert green[0, 10:14, 9:15].min() == pytest.approx(1.0) and green[0, :8, :8].max() == 0.0
    assert red_score[0] == pytest.approx(16 / 256)  # the class score: mean red


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_gradcam_of_the_face_model_through_head_and_embedding(precision):
    model = build_face_model(4, backbone=TINY["backbone"], img_size=64, embedding_size=8, precision=precision)
    faces = np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 3)).astype(np.float32)

    by_class, _ = gradcam(model, faces, classes=np.array([0, 1, 3]))
    embedding = embedding_model(model)
    references = np.eye(8)[:3]
    by_reference, scores = gradcam(embedding, faces, references=references)

    for heatmaps in (by_class, by_reference):
        assert heatmaps.shape == (3, 64, 64) and heatmaps.dtype == np.float32
        assert (heatmaps >= 0).all() and (heatmaps <= 1).all()
        assert heatmaps.max(axis=(1, 2)).max() == pytest.approx(1.0)  # a gradient reached the features
    assert np.all(np.abs(scores) <= 1.0 + 1e-6)  # cosines
    with pytest.raises(ValueError, match="either classes"):
        gradcam(model, faces)


def test_the_gates_of_every_se_and_eca_layer_in_block_order():
    model = build_face_model(4, backbone=TINY["backbone"], img_size=32, embedding_size=8)
    faces = np.random.default_rng(1).uniform(-1, 1, (5, 32, 32, 3)).astype(np.float32)

    gates = channel_gates(model, faces)

    widths = [4 * w for w in TINY["backbone"]["widths"]]
    expected = [f"conv{stage}_block1_{kind}" for stage in (2, 3, 4, 5) for kind in ("se", "eca")]
    assert list(gates) == expected
    for name, values in gates.items():
        stage = int(name[4])
        assert values.shape == (5, widths[stage - 2]), name
        assert ((values > 0) & (values < 1)).all(), name
    # The gates are what the layer multiplies its input by.
    se = model.get_layer("conv2_block1_se")
    block_input = keras.Model(model.input, se.input)(faces)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(se(block_input)),
        keras.ops.convert_to_numpy(block_input) * gates["conv2_block1_se"][:, None, None, :],
        rtol=1e-5,
        atol=1e-6,
    )


def test_models_without_se_or_eca_have_no_gates():
    plain = build_face_model(4, backbone=TINY["backbone"], img_size=32, embedding_size=8, attention="none")
    mobile = build_face_model(4, architecture="mobilenetv2", img_size=32, embedding_size=8)
    faces = np.zeros((2, 32, 32, 3), np.float32)

    assert channel_gates(plain, faces) == {}
    assert channel_gates(mobile, faces) == {}


def test_peakedness_is_zero_when_flat_and_near_one_when_one_channel_takes_all():
    flat = np.full((1, 100), 0.5)
    spike = np.full((1, 100), 1e-6)
    spike[0, 7] = 1.0

    assert peakedness(flat)[0] == pytest.approx(0.0)
    assert peakedness(spike)[0] == pytest.approx(0.99, abs=1e-3)
    assert top_decile_share(flat)[0] == pytest.approx(0.1)
    assert top_decile_share(spike)[0] == pytest.approx(1.0, abs=1e-4)


# ---- bad inputs ---------------------------------------------------------------------------


def test_an_image_path_that_does_not_exist_is_named(tmp_path):
    missing = tmp_path / "no_such_face.jpg"

    with pytest.raises(FacePipelineError, match=r"^attention.image_path: .*no_such_face.jpg does not exist$"):
        read_face(missing, 112, "attention.image_path")


def test_a_file_that_is_not_an_image_is_named(tmp_path):
    notes = tmp_path / "face.jpg"
    notes.write_text("these are not the pixels you are looking for\n")

    with pytest.raises(FacePipelineError, match=r"^attention.image_path: .*face.jpg is not an image"):
        read_face(notes, 112, "attention.image_path")


def test_a_real_orl_face_of_another_size_and_format_is_read_as_rgb():
    face = read_face(ORL_FACES / "s1" / "1.pgm", 112)  # 92x112 greyscale PGM

    assert face.shape == (112, 112, 3) and face.dtype == np.uint8
    assert np.array_equal(face[..., 0], face[..., 1])


# ---- the pipeline on the demo run ---------------------------------------------------------


def default_pipeline():
    """``__default__`` as ``kedro run`` sees it, whichever pipelines earlier runs asked Kedro to load."""
    from kedro.framework.project import pipelines

    pipelines.set_requested(None)
    return pipelines["__default__"]


@pytest.fixture
def demo(demo_outputs: KedroProject, monkeypatch: pytest.MonkeyPatch) -> KedroProject:
    monkeypatch.chdir(demo_outputs.path)
    return demo_outputs


def test_the_demo_run_draws_every_attention_picture(demo):
    for picture in ("gradcam_grid", "gradcam_image", "channel_attention"):
        assert demo.data(f"08_reporting/attention/{picture}.png").read_bytes()[:4] == PNG, picture
    samples = pd.read_parquet(demo.data("07_model_output/attention/gradcam_samples.parquet"))
    per_model = samples.groupby("model").size().to_dict()
    assert per_model == {f"{p} (federated)": 3 for p in ("server", "client1", "client2")} | {"global": 3}
    assert samples["score"].between(-1, 1).all()
    # Trained models attribute most held-out faces to their true identity.
    assert samples["top1_correct"].dropna().astype(bool).mean() >= 0.5

    channels = pd.read_parquet(demo.data("07_model_output/attention/channel_attention.parquet"))
    assert list(channels["kind"]) == ["se", "eca"] * 4
    assert channels["peakedness"].between(0, 1).all()
    report = demo.data("08_reporting/attention/attention_report.md").read_text()
    assert "| conv5_block1_se | SE | 512 |" in report and "Grad-CAM grid" in report


def test_one_real_face_given_by_path_is_explained_by_a_party_model(demo):
    face = ORL_FACES / "s7" / "3.pgm"
    params = {**QUICK_DEMO, "attention": {"image_path": str(face), "model": "client1"}}

    demo.run("attention", env="demo", params=params, node_names=["explain_image"])

    info = json.loads(demo.data("07_model_output/attention/gradcam_image.json").read_text())
    client1_classes = {p.name for p in demo.data("03_primary/partitioned/client1/train").iterdir()}
    assert info["image"] == str(face) and info["model"] == "client1"
    assert info["target"] in client1_classes and -1 <= info["score"] <= 1
    assert demo.data("08_reporting/attention/gradcam_image.png").read_bytes()[:4] == PNG


def test_a_bad_image_path_stops_the_run_with_its_name(demo, tmp_path):
    params = {**QUICK_DEMO, "attention": {"image_path": str(tmp_path / "missing.png")}}

    with pytest.raises(FacePipelineError, match=r"missing\.png does not exist"):
        demo.run("attention", env="demo", params=params, node_names=["explain_image"])


def test_an_unknown_model_to_explain_names_the_choices(demo):
    params = {**QUICK_DEMO, "attention": {"model": "client9"}}

    expected = r"attention\.model is 'client9': choose one of global, client1, client2, server"
    with pytest.raises(FacePipelineError, match=expected):
        demo.run("attention", env="demo", params=params, node_names=["explain_image"])


def test_mobilenetv2_gets_grad_cam_only_and_the_report_says_so(demo):
    """MobileNetV2 has no SE or ECA layers: the maps are drawn, the gates are a note."""
    mobile = embedding_model(build_face_model(20, architecture="mobilenetv2", img_size=32, embedding_size=8))
    partitioned = ImageFolder(demo.data("03_primary/partitioned"))
    attention = {"image_path": None, "model": "global", "channel_images": 8, "seed": 0}

    channels = measure_channel_attention(partitioned, mobile, attention)
    info, figure = explain_image(partitioned, mobile, {}, attention)
    report = write_attention_report(pd.DataFrame(), info, channels, attention)

    assert channels.empty
    assert info["architecture"].startswith("mobilenetv2") and info["img_size"] == 32
    assert len(figure.axes) == 3
    assert "has no SE or ECA layers" in report and "Grad-CAM only" in report
    assert plot_channel_attention(channels).axes[0].texts[0].get_text().endswith("Grad-CAM only.")


def test_the_default_pipeline_runs_extraction_through_attention(demo):
    """`make demo`'s run: every pipeline but the generator, each artifact on disk."""
    default = default_pipeline()
    assert {"extract_images", "validate_images", "explain_party_faces", "write_attention_report"} <= {
        node.name for node in default.nodes
    }
    catalog = demo.catalog(env="demo", params=QUICK_DEMO)
    missing = [name for name in default.all_outputs() if not catalog.exists(name)]
    assert missing == []
    assert cv2.imread(str(demo.data("08_reporting/attention/gradcam_grid.png"))).shape[0] > 100


LAYERS = ["raw", "intermediate", "primary", "feature", "model_input", "models", "model_output", "reporting"]


def test_every_artifact_is_a_catalog_entry_whose_layer_reads_left_to_right(kedro_project):
    """kedro-viz orders datasets by layer: no node may write to a layer before one it reads."""
    default = default_pipeline()
    catalog = kedro_project.catalog(env="demo")
    layer_of = {}
    for name in default.datasets():
        if name.startswith("params:") or name == "parameters":
            continue
        metadata = getattr(catalog.get(name), "metadata", None) or {}
        layer_of[name] = (metadata.get("kedro-viz") or {}).get("layer")
    assert {name for name, layer in layer_of.items() if layer not in LAYERS} == set()
    backwards = [
        (node.name, source, target)
        for node in default.nodes
        for source in node.inputs
        for target in node.outputs
        if source in layer_of and LAYERS.index(layer_of[source]) > LAYERS.index(layer_of[target])
    ]
    assert backwards == []
