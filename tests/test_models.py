"""The face models: ResNet50 parity with keras.applications, SE/ECA, ArcFace, saving and bad parameters.

Everything but the ResNet50 checks uses a tiny 4-stage backbone, so the file runs on a laptop CPU.
"""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml

from face_pipeline.models.builders import (
    ARCHITECTURES,
    ATTENTIONS,
    LOSSES,
    PRECISIONS,
    ModelConfigError,
    build_face_model,
    build_resnet,
    embedding_model,
)
from face_pipeline.models.layers import (
    ArcFaceHead,
    ArcFaceLoss,
    EfficientChannelAttention,
    SqueezeExcitation,
    eca_kernel_size,
)
from face_pipeline.models.training import compile_model

REPO = Path(__file__).resolve().parents[1]
TINY = {"stages": [1, 1, 1, 1], "widths": [8, 16, 32, 64], "stem_width": 8}
# ResNet50's 16 bottleneck blocks: (blocks, output channels) per stage.
RESNET50_BLOCKS = ((3, 256), (4, 512), (6, 1024), (3, 2048))


def tiny_model(num_classes: int = 5, **kwargs) -> keras.Model:
    options = {"img_size": 32, "embedding_size": 16, "backbone": TINY, **kwargs}
    return build_face_model(num_classes, **options)


def images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype("float32")


def training_params(**overrides) -> dict:
    params = yaml.safe_load((REPO / "conf/base/parameters_training.yml").read_text())["training"]
    return {**params, **overrides}


def source_layer(tensor) -> str:
    return tensor._keras_history.operation.name


# --- 1. the real ResNet50 -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet50_counts() -> dict:
    """Each ResNet50 variant built once: parameter counts, output shapes and the face model."""
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(112, 112, 3))
    built = {"reference": reference}
    for attention in ("none", "se", "eca"):
        inputs = keras.Input((112, 112, 3))
        built[attention] = keras.Model(inputs, build_resnet(inputs, attention))
    face = build_face_model(200)  # se_eca_resnet50, attention se_eca, 112x112
    built["face"] = face
    # The face model's backbone is the se_eca ResNet50: no need to build it a second time.
    built["se_eca"] = keras.Model(face.inputs, face.get_layer("conv5_block3_out").output)
    return built


def test_resnet50_matches_keras_applications(resnet50_counts):
    reference, plain = resnet50_counts["reference"], resnet50_counts["none"]
    assert plain.count_params() == reference.count_params()
    assert tuple(plain.output.shape) == (None, 4, 4, 2048) == tuple(reference.output.shape)
    # Not only the total: the same layers, in the same order, with the same weight shapes.
    assert [(w.path.split("/")[0], tuple(w.shape)) for w in plain.weights] == [
        (w.path.split("/")[0], tuple(w.shape)) for w in reference.weights
    ]
    assert not any(
        isinstance(layer, (SqueezeExcitation, EfficientChannelAttention)) for layer in plain.layers
    )


def test_resnet50_attention_parameter_counts(resnet50_counts):
    base = resnet50_counts["none"].count_params()
    added = {name: resnet50_counts[name].count_params() - base for name in ("se", "eca", "se_eca")}

    expected_se = sum(
        blocks * (2 * channels * (channels // 16) + channels // 16 + channels)
        for blocks, channels in RESNET50_BLOCKS
    )
    expected_eca = sum(blocks * eca_kernel_size(channels) for blocks, channels in RESNET50_BLOCKS)
    assert expected_eca == 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7 == 86
    assert 2_400_000 < added["se"] < 2_600_000
    assert added["se"] == expected_se
    assert added["eca"] == expected_eca < 1000
    assert added["se_eca"] == added["se"] + added["eca"]

    for name, kinds in (("se", ["se"]), ("eca", ["eca"]), ("se_eca", ["se", "eca"])):
        model = resnet50_counts[name]
        assert tuple(model.output.shape) == (None, 4, 4, 2048)
        for stage, (blocks, _) in enumerate(RESNET50_BLOCKS, start=2):
            for block in range(1, blocks + 1):
                prefix = f"conv{stage}_block{block}"
                # The residual branch runs bn -> se -> eca -> add; the shortcut is untouched.
                chain = [f"{prefix}_3_bn"] + [f"{prefix}_{kind}" for kind in kinds]
                for before, after in itertools.pairwise(chain):
                    assert source_layer(model.get_layer(after).input) == before
                add_inputs = {source_layer(t) for t in model.get_layer(f"{prefix}_add").input}
                assert chain[-1] in add_inputs
                assert f"{prefix}_3_bn" not in add_inputs or kinds == []


def test_face_model_resnet50_head_and_embedding(resnet50_counts):
    face = resnet50_counts["face"]
    assert tuple(face.output.shape) == (None, 200)
    assert face.get_layer("embedding").output.shape[-1] == 512
    head = face.get_layer("class_head")
    assert isinstance(head, ArcFaceHead)
    assert head.units == 200
    assert face.layers[-1] is head
    assert sum(isinstance(layer, SqueezeExcitation) for layer in face.layers) == 16
    assert sum(isinstance(layer, EfficientChannelAttention) for layer in face.layers) == 16
    batch = face.predict(images(1, 112), verbose=0)
    assert batch.shape == (1, 200)


# --- 2. the ECA kernel ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "kernel"), [(8, 3), (16, 3), (64, 3), (128, 5), (256, 5), (512, 5), (1024, 5), (2048, 7)]
)
def test_eca_kernel_size_known_values(channels, kernel):
    assert eca_kernel_size(channels) == kernel


def test_eca_kernel_size_is_odd_and_follows_the_formula():
    for channels in range(1, 5000):
        k = eca_kernel_size(channels)
        t = int(abs((math.log2(channels) + 1) / 2))
        assert k % 2 == 1
        assert k in (t, t + 1)


# --- 3. SE and ECA behaviour ----------------------------------------------------------------------


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def se_gates(layer: SqueezeExcitation, x: np.ndarray) -> np.ndarray:
    pooled = x.astype("float64").mean(axis=(1, 2))
    squeeze_kernel, squeeze_bias = (np.asarray(w, dtype="float64") for w in layer.squeeze.weights)
    excite_kernel, excite_bias = (np.asarray(w, dtype="float64") for w in layer.excite.weights)
    hidden = np.maximum(pooled @ squeeze_kernel + squeeze_bias, 0.0)
    return sigmoid(hidden @ excite_kernel + excite_bias)


def eca_gates(layer: EfficientChannelAttention, x: np.ndarray) -> np.ndarray:
    pooled = x.astype("float64").mean(axis=(1, 2))
    kernel = np.asarray(layer.kernel, dtype="float64").reshape(-1)
    k, half = kernel.size, kernel.size // 2
    padded = np.pad(pooled, ((0, 0), (half, half)))  # 'same' padding across the channels
    channels = pooled.shape[1]
    # A 1-D convolution as deep-learning frameworks (and ECA's Conv1d) define it: a cross-correlation.
    mixed = np.stack([padded[:, c : c + k] @ kernel for c in range(channels)], axis=1)
    return sigmoid(mixed)


def random_kernel(layer: EfficientChannelAttention, seed: int = 3) -> None:
    # Asymmetric and large enough that a flipped kernel or a wrong padding shows.
    layer.kernel.assign(np.random.default_rng(seed).normal(0, 0.6, layer.kernel.shape).astype("float32"))


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize(
    ("make", "reference", "channels"),
    [
        (lambda dtype: SqueezeExcitation(4, dtype=dtype), se_gates, 32),
        (lambda dtype: EfficientChannelAttention(dtype=dtype), eca_gates, 256),
    ],
    ids=["se", "eca"],
)
def test_channel_attention_gates(make, reference, channels, dtype):
    rng = np.random.default_rng(1)
    # A per-channel offset, so that the pooled means differ clearly between channels.
    x = (rng.normal(0, 1, (3, 5, 4, channels)) + rng.normal(0, 2, (1, 1, 1, channels))).astype("float32")
    layer = make(dtype)
    layer.build(x.shape)
    if isinstance(layer, EfficientChannelAttention):
        assert layer.kernel.shape == (eca_kernel_size(channels), 1, 1)
        random_kernel(layer)
    else:
        assert layer.squeeze.units == channels // 4
        # Non-zero biases so that they are checked too.
        layer.squeeze.bias.assign(rng.normal(0, 0.5, layer.squeeze.bias.shape).astype("float32"))
        layer.excite.bias.assign(rng.normal(0, 0.5, layer.excite.bias.shape).astype("float32"))

    out = np.asarray(layer(x), dtype="float32")
    gates = np.asarray(layer.channel_weights(x), dtype="float64")
    assert out.shape == x.shape
    assert gates.shape == (x.shape[0], channels)
    assert np.all((gates > 0) & (gates < 1))
    assert gates.std() > 0.05  # really per channel and per sample, not a constant

    if dtype == "float32":
        np.testing.assert_allclose(gates, reference(layer, x), rtol=1e-5, atol=1e-6)
        # Constant over space: the output is the input scaled by one gate per (sample, channel).
        np.testing.assert_allclose(out, x * gates[:, None, None, :], rtol=1e-5, atol=1e-6)
    else:
        assert layer.compute_dtype == "bfloat16"
        assert keras.backend.standardize_dtype(layer(x).dtype) == "bfloat16"
        assert all(w.dtype == "float32" for w in layer.weights)
        bf16 = np.asarray(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32"))
        np.testing.assert_allclose(gates, reference(layer, bf16), atol=2e-2)
        np.testing.assert_allclose(out, x * gates[:, None, None, :], rtol=2e-2, atol=2e-2)


def test_mixed_bfloat16_face_model_runs_and_restores_the_policy():
    before = keras.config.dtype_policy().name
    model = tiny_model(precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == before == "float32"
    assert model.get_layer("conv1_conv").compute_dtype == "bfloat16"
    assert model.get_layer("conv2_block1_se").compute_dtype == "bfloat16"
    assert model.get_layer("conv2_block1_eca").compute_dtype == "bfloat16"
    assert all(w.dtype == "float32" for w in model.weights)
    out = model(images(2, 32), training=False)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    out = np.asarray(out)
    assert out.shape == (2, 5)
    assert np.all(np.isfinite(out)) and np.all(np.abs(out) <= 1 + 1e-5)
    embedding = embedding_model(model)([images(2, 32)], training=False)
    assert keras.backend.standardize_dtype(embedding.dtype) == "float32"
    assert tuple(embedding.shape) == (2, 16)


# --- 4. the ArcFace head --------------------------------------------------------------------------


def test_arcface_head_outputs_cosines():
    head = ArcFaceHead(7)
    head.build((None, 12))
    rng = np.random.default_rng(2)
    x = rng.normal(0, 5, (9, 12)).astype("float32")
    cosines = np.asarray(head(x))
    assert cosines.shape == (9, 7)
    assert np.all(np.abs(cosines) <= 1 + 1e-6)
    kernel = np.asarray(head.kernel, dtype="float64")
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (kernel / np.linalg.norm(kernel, axis=0))
    np.testing.assert_allclose(cosines, expected, atol=1e-5)

    # An embedding along a class centre, at any length: cosine 1 for that class and it wins.
    centres = (kernel.T * np.array([[0.3], [2.0], [7.5], [1.0], [0.01], [40.0], [1.0]])).astype("float32")
    cosines = np.asarray(head(centres))
    np.testing.assert_allclose(np.diag(cosines), 1.0, atol=1e-5)
    assert np.array_equal(cosines.argmax(axis=1), np.arange(7))
    # The scale of the embedding does not matter.
    np.testing.assert_allclose(np.asarray(head(x * 100)), np.asarray(head(x)), atol=1e-5)


# --- 5. the ArcFace loss --------------------------------------------------------------------------


def insightface_loss(labels, cosines, s=64.0, m=0.5, plain=False):
    """insightface's ArcFace (easy_margin off), or ``plain``: cos(theta + m) everywhere, no fallback."""
    cos = np.clip(cosines.astype("float64"), -1 + 1e-7, 1 - 1e-7)
    sin = np.sqrt(1 - cos**2)
    phi = cos * math.cos(m) - sin * math.sin(m)
    if not plain:
        th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
        phi = np.where(cos > th, phi, cos - mm)
    onehot = np.eye(cos.shape[1])[labels]
    logits = s * (onehot * phi + (1 - onehot) * cos)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_softmax[np.arange(len(labels)), labels]


def test_arcface_loss_matches_insightface():
    labels = np.array([0, 2, 1, 3, 2])
    cosines = np.array(
        [
            [0.90, 0.10, -0.20, 0.05],  # well classified
            [0.30, 0.20, 0.10, -0.40],  # true class below another
            [0.10, -0.95, 0.20, 0.00],  # theta + m > pi: the fallback branch
            [0.00, 0.50, -0.30, -0.99],  # theta + m > pi again
            [-0.10, 0.00, 0.60, 0.20],
        ],
        dtype="float32",
    )
    true = cosines[np.arange(5), labels]
    past_pi = np.arccos(true) + 0.5 > math.pi
    assert past_pi.tolist() == [False, False, True, True, False]

    loss = ArcFaceLoss(scale=64.0, margin=0.5)
    per_sample = np.asarray(loss.call(labels, cosines))
    expected = insightface_loss(labels, cosines)
    np.testing.assert_allclose(per_sample, expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(float(loss(labels, cosines)), expected.mean(), rtol=1e-4)
    # Labels as a column, as Keras passes sparse targets, give the same.
    np.testing.assert_allclose(np.asarray(loss.call(labels[:, None], cosines)), per_sample)

    # Where theta + m passes pi the fallback is not cos(theta + m): it would reward a worse angle.
    plain = insightface_loss(labels, cosines, plain=True)
    assert np.all(np.abs(per_sample[past_pi] - plain[past_pi]) > 1.0)
    np.testing.assert_allclose(per_sample[~past_pi], plain[~past_pi], rtol=1e-4, atol=1e-3)
    # And the loss keeps rising as the true class gets further away, also past pi.
    sweep = np.array([[c, 0.0] for c in np.linspace(0.9, -0.99, 40)], dtype="float32")
    sweep_loss = np.asarray(loss.call(np.zeros(40, dtype="int32"), sweep))
    assert np.all(np.diff(sweep_loss) >= 0)
    sweep_past_pi = np.arccos(sweep[:, 0]) + 0.5 > math.pi
    assert sweep_past_pi.sum() >= 3
    assert np.all(np.diff(sweep_loss[sweep_past_pi]) > 0)


def test_arcface_loss_without_margin_is_softmax_cross_entropy():
    rng = np.random.default_rng(4)
    cosines = rng.uniform(-1, 1, (6, 5)).astype("float32")
    labels = rng.integers(0, 5, 6)
    loss = np.asarray(ArcFaceLoss(scale=64.0, margin=0.0).call(labels, cosines))
    softmax = np.asarray(
        keras.losses.sparse_categorical_crossentropy(labels, 64.0 * cosines, from_logits=True)
    )
    np.testing.assert_allclose(loss, softmax, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(loss, insightface_loss(labels, cosines, m=0.0), rtol=1e-4, atol=1e-3)
    # With the margin the true class is penalised: a larger loss everywhere.
    assert np.all(np.asarray(ArcFaceLoss().call(labels, cosines)) > loss)


# --- 6. saving and loading ------------------------------------------------------------------------

LOAD_IN_A_FRESH_PROCESS = textwrap.dedent(
    """
    import json, sys
    import keras
    import numpy as np

    path, images, out = sys.argv[1:4]
    try:
        keras.saving.load_model(path, safe_mode=True)
        before_import = "loaded"
    except Exception as error:
        before_import = type(error).__name__
    import face_pipeline.models.layers  # registration by import, nothing else
    model = keras.saving.load_model(path, safe_mode=True)
    np.save(out, model.predict(np.load(images), verbose=0))
    loss = model.loss
    print(json.dumps({
        "before_import": before_import,
        "loss": type(loss).__name__,
        "scale": getattr(loss, "scale", None),
        "margin": getattr(loss, "margin", None),
    }))
    """
)


@pytest.mark.parametrize("loss", LOSSES)
def test_saved_model_loads_safely_without_custom_objects(tmp_path, loss):
    assert set(LOSSES) == {"arcface", "softmax"}
    model = tiny_model(loss=loss, attention="se_eca")
    params = training_params(loss=loss, epochs=2, arcface={"scale": 30.0, "margin": 0.4})
    compile_model(model, params, steps_per_epoch=3)
    model.optimizer.build(model.trainable_variables)  # so that its state is saved too
    x = images(4, 32, seed=5)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)

    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    assert isinstance(loaded.get_layer("conv2_block1_se"), SqueezeExcitation)
    assert isinstance(loaded.get_layer("conv2_block1_eca"), EfficientChannelAttention)
    if loss == "arcface":
        assert isinstance(loaded.get_layer("class_head"), ArcFaceHead)
        assert isinstance(loaded.loss, ArcFaceLoss)
        assert (loaded.loss.scale, loaded.loss.margin) == (30.0, 0.4)
    else:
        assert isinstance(loaded.get_layer("class_head"), keras.layers.Dense)
        assert not isinstance(loaded.loss, ArcFaceLoss)

    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_IN_A_FRESH_PROCESS,
            str(path),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    # Without the import Keras cannot find the classes: the registration is what makes it load.
    assert report["before_import"] != "loaded"
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-6, atol=1e-6)
    if loss == "arcface":
        assert report == {
            "before_import": report["before_import"],
            "loss": "ArcFaceLoss",
            "scale": 30.0,
            "margin": 0.4,
        }
    else:
        assert report["loss"] != "ArcFaceLoss"


def test_custom_layers_round_trip_their_config():
    for layer in (SqueezeExcitation(8, name="s"), EfficientChannelAttention(gamma=3, b=2), ArcFaceHead(11)):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()
    loss = ArcFaceLoss(scale=32.0, margin=0.3)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, ArcFaceLoss)
    assert (clone.scale, clone.margin) == (32.0, 0.3)


def test_lambda_layer_is_refused_in_safe_mode(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(ValueError, match=r"Lambda|safe_mode"):
        keras.saving.load_model(path, safe_mode=True)


# --- 7. bad parameters ----------------------------------------------------------------------------


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ModelConfigError, match="architecture 'vgg16'") as error:
        build_face_model(10, architecture="vgg16")
    assert ARCHITECTURES == ("se_eca_resnet50", "resnet50", "mobilenetv2")
    for choice in ARCHITECTURES:
        assert choice in str(error.value)


def test_unknown_attention_lists_the_choices():
    with pytest.raises(ModelConfigError, match="attention 'cbam'") as error:
        build_face_model(10, attention="cbam", backbone=TINY, img_size=32)
    assert set(ATTENTIONS) == {"none", "se", "eca", "se_eca"}
    assert str(error.value).endswith(", ".join(ATTENTIONS))
    inputs = keras.Input((32, 32, 3))
    with pytest.raises(ModelConfigError, match="none, se, eca, se_eca"):
        build_resnet(inputs, "cbam")


def test_unknown_loss_lists_the_choices():
    with pytest.raises(ModelConfigError, match="loss 'cosface'") as error:
        build_face_model(10, loss="cosface", backbone=TINY, img_size=32)
    for choice in ("arcface", "softmax"):
        assert choice in str(error.value)


def test_unknown_precision_lists_the_choices_and_leaves_the_policy_alone():
    with pytest.raises(ModelConfigError, match="precision 'float16'") as error:
        tiny_model(precision="float16")
    for choice in PRECISIONS:
        assert choice in str(error.value)
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.parametrize(
    ("kwargs", "minimum"),
    [
        ({"architecture": "resnet50", "img_size": 16}, 32),
        ({"architecture": "mobilenetv2", "img_size": 16}, 32),
        ({"architecture": "se_eca_resnet50", "img_size": 16}, 32),  # ResNet50's default stages
        ({"backbone": TINY, "img_size": 16}, 32),  # 4 stages downsample by 32
        ({"backbone": TINY, "img_size": 31}, 32),
        ({"backbone": {**TINY, "stages": [1, 1, 1], "widths": [8, 16, 32]}, "img_size": 8}, 16),
    ],
)
def test_img_size_too_small_names_the_minimum(kwargs, minimum):
    with pytest.raises(ModelConfigError, match=f"at least {minimum}"):
        build_face_model(10, **kwargs)


def test_img_size_at_the_minimum_builds():
    three_stages = {**TINY, "stages": [1, 1, 1], "widths": [8, 16, 32]}
    model = build_face_model(3, backbone=three_stages, img_size=16, embedding_size=8)
    assert tuple(model.get_layer("conv4_block1_out").output.shape) == (None, 1, 1, 128)
    assert model.predict(images(1, 16), verbose=0).shape == (1, 3)


@pytest.mark.parametrize("num_classes", [1, 0, -3])
def test_too_few_classes(num_classes):
    with pytest.raises(ModelConfigError, match="at least 2 classes"):
        tiny_model(num_classes=num_classes)


# --- 8. the keras.applications baselines ----------------------------------------------------------


@pytest.mark.parametrize(("architecture", "embedding_size"), [("mobilenetv2", 512), ("resnet50", 24)])
def test_baselines_build_offline_and_embed(architecture, embedding_size):
    model = build_face_model(10, architecture=architecture, img_size=64, embedding_size=embedding_size)
    assert model.name == architecture
    assert not any(
        isinstance(layer, (SqueezeExcitation, EfficientChannelAttention)) for layer in model.layers
    )
    x = images(2, 64, seed=6)
    cosines = model.predict(x, verbose=0)
    assert cosines.shape == (2, 10)
    assert np.all(np.isfinite(cosines)) and np.all(np.abs(cosines) <= 1 + 1e-5)

    embedder = embedding_model(model)
    assert embedder.get_layer("embedding") is model.get_layer("embedding")  # the same weights
    embeddings = embedder.predict(x, verbose=0)
    assert embeddings.shape == (2, embedding_size)
    assert np.all(np.isfinite(embeddings))
    # The head's cosines are those of the embedding with the class centres.
    kernel = np.asarray(model.get_layer("class_head").kernel)
    expected = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)) @ (
        kernel / np.linalg.norm(kernel, axis=0)
    )
    np.testing.assert_allclose(cosines, expected, atol=1e-4)


def test_tiny_face_model_softmax_head_and_batchnorm_momentum():
    model = tiny_model(loss="softmax", attention="none", bn_momentum=0.8)
    assert model.name == "se_eca_resnet50_none"
    assert isinstance(model.get_layer("class_head"), keras.layers.Dense)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == 0.8 for layer in norms)
    assert model.predict(images(2, 32), verbose=0).shape == (2, 5)
