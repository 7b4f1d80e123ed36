"""The face models: an SE-ECA bottleneck ResNet50 and two keras.applications baselines.

Every model is ``backbone -> embedding (BN, dropout, dense, BN) -> class head``.
The layers named ``embedding`` and ``class_head`` are what evaluation and the
federated rounds look for: everything before ``class_head`` is shared between
parties, the head stays with its party.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import keras

from face_pipeline.errors import FacePipelineError
from face_pipeline.models.layers import ArcFaceHead, EfficientChannelAttention, SqueezeExcitation

ARCHITECTURES = ("se_eca_resnet50", "resnet50", "mobilenetv2")
ATTENTIONS = ("none", "se", "eca", "se_eca")
LOSSES = ("arcface", "softmax")
PRECISIONS = ("float32", "mixed_bfloat16")
EMBEDDING_LAYER = "embedding"
CLASS_HEAD_LAYER = "class_head"
_BN_EPSILON = 1.001e-5  # keras.applications' value, so that the parameter counts match exactly


class ModelConfigError(FacePipelineError):
    """A model parameter with no model behind it."""


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ModelConfigError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    return value


def _bottleneck(x, filters: int, stride: int, *, attention: str, projection: bool, name: str):
    """keras.applications' ResNet50 block, with SE and/or ECA on the residual branch before the add."""
    bn = {"axis": -1, "epsilon": _BN_EPSILON}
    shortcut = x
    if projection:
        shortcut = keras.layers.Conv2D(4 * filters, 1, strides=stride, name=f"{name}_0_conv")(x)
        shortcut = keras.layers.BatchNormalization(**bn, name=f"{name}_0_bn")(shortcut)
    x = keras.layers.Conv2D(filters, 1, strides=stride, name=f"{name}_1_conv")(x)
    x = keras.layers.BatchNormalization(**bn, name=f"{name}_1_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", name=f"{name}_2_conv")(x)
    x = keras.layers.BatchNormalization(**bn, name=f"{name}_2_bn")(x)
    x = keras.layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = keras.layers.Conv2D(4 * filters, 1, name=f"{name}_3_conv")(x)
    x = keras.layers.BatchNormalization(**bn, name=f"{name}_3_bn")(x)
    if attention in ("se", "se_eca"):
        x = SqueezeExcitation(16, name=f"{name}_se")(x)
    if attention in ("eca", "se_eca"):
        x = EfficientChannelAttention(name=f"{name}_eca")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.Activation("relu", name=f"{name}_out")(x)


def resnet_downsampling(stages: Sequence[int]) -> int:
    """How much the stem (x4) and each later stage (x2) shrink the input."""
    return 4 * 2 ** (len(stages) - 1)


def build_resnet(
    inputs,
    attention: str = "se_eca",
    stages: Sequence[int] = (3, 4, 6, 3),
    widths: Sequence[int] = (64, 128, 256, 512),
    stem_width: int = 64,
):
    """A bottleneck ResNet's feature map; the defaults are ResNet50 (3-4-6-3)."""
    check_choice("attention", attention, ATTENTIONS)
    x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(inputs)
    x = keras.layers.Conv2D(stem_width, 7, strides=2, name="conv1_conv")(x)
    x = keras.layers.BatchNormalization(epsilon=_BN_EPSILON, name="conv1_bn")(x)
    x = keras.layers.Activation("relu", name="conv1_relu")(x)
    x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    for stage, (blocks, filters) in enumerate(zip(stages, widths, strict=True), start=2):
        for block in range(1, blocks + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            name = f"conv{stage}_block{block}"
            x = _bottleneck(x, filters, stride, attention=attention, projection=block == 1, name=name)
    return x


def _backbone(inputs, architecture: str, attention: str, backbone: dict | None):
    if architecture == "se_eca_resnet50":
        return build_resnet(inputs, attention, **(backbone or {}))
    application = {"resnet50": keras.applications.ResNet50, "mobilenetv2": keras.applications.MobileNetV2}
    # weights=None: nothing is downloaded; these are architectures, trained from scratch like ours.
    model = application[architecture](include_top=False, weights=None, input_tensor=inputs)
    return model.output


def minimum_img_size(architecture: str, backbone: dict | None = None) -> int:
    if architecture == "se_eca_resnet50":
        return resnet_downsampling((backbone or {}).get("stages", (3, 4, 6, 3)))
    return 32


@contextlib.contextmanager
def dtype_policy(precision: str):
    """Build layers under a precision policy, then put the global policy back."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(check_choice("precision", precision, PRECISIONS))
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def build_face_model(
    num_classes: int,
    *,
    architecture: str = "se_eca_resnet50",
    attention: str = "se_eca",
    img_size: int = 112,
    loss: str = "arcface",
    embedding_size: int = 512,
    dropout: float = 0.2,
    precision: str = "float32",
    backbone: dict | None = None,
    bn_momentum: float = 0.9,
) -> keras.Model:
    """Backbone, 512-d embedding and a class head: ArcFace (cosine) or plain softmax logits.

    ``backbone`` sizes the SE-ECA ResNet (``stages``, ``widths``, ``stem_width``), e.g.
    a tiny one for tests; ``attention`` applies to it only.
    """
    check_choice("architecture", architecture, ARCHITECTURES)
    check_choice("attention", attention, ATTENTIONS)
    check_choice("loss", loss, LOSSES)
    smallest = minimum_img_size(architecture, backbone)
    if img_size < smallest:
        raise ModelConfigError(
            f"img_size {img_size} is too small for {architecture}: it downsamples by {smallest}, "
            f"so img_size must be at least {smallest}"
        )
    if num_classes < 2:
        raise ModelConfigError(f"a class head needs at least 2 classes, got {num_classes}")
    with dtype_policy(precision):
        inputs = keras.Input((img_size, img_size, 3), name="image")
        features = _backbone(inputs, architecture, attention, backbone)
        x = keras.layers.GlobalAveragePooling2D(name="pool")(features)
        x = keras.layers.BatchNormalization(name="embedding_bn_in")(x)
        x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
        x = keras.layers.Dense(embedding_size, name="embedding_dense")(x)
        embedding = keras.layers.BatchNormalization(name=EMBEDDING_LAYER, dtype="float32")(x)
        if loss == "arcface":
            head = ArcFaceHead(num_classes, name=CLASS_HEAD_LAYER, dtype="float32")(embedding)
        else:
            head = keras.layers.Dense(num_classes, name=CLASS_HEAD_LAYER, dtype="float32")(embedding)
    name = f"{architecture}_{attention}" if architecture == "se_eca_resnet50" else architecture
    model = keras.Model(inputs, head, name=name)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # insightface's 0.9 rather than Keras' 0.99: the running statistics then follow
            # the weights within tens of steps, which small parties and short runs need.
            layer.momentum = bn_momentum
    return model


def embedding_model(model: keras.Model) -> keras.Model:
    """The same weights, ending at the 512-d embedding."""
    return keras.Model(model.input, model.get_layer(EMBEDDING_LAYER).output, name=f"{model.name}_embedding")
