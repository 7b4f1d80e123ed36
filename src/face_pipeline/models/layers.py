"""Keras 3 layers and the loss of the face model: channel attention and the ArcFace margin.

Everything is registered as serializable, so a saved ``.keras`` model loads with
``safe_mode=True`` and no ``custom_objects``. Only ``keras.ops`` is used, so the
code is not tied to one backend.
"""

from __future__ import annotations

import math

import keras
from keras import ops

PACKAGE = "face_pipeline"


@keras.saving.register_keras_serializable(PACKAGE)
class SqueezeExcitation(keras.layers.Layer):
    """Squeeze-and-Excitation (Hu et al.): reweights channels from their global average.

    ``reduction`` sets the bottleneck: ``channels // reduction`` hidden units.
    """

    def __init__(self, reduction: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.reduction = reduction

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden = max(1, channels // self.reduction)
        # The gates are a few numbers per image: float32 costs nothing there and spares
        # bfloat16's slow small kernels on CPUs.
        self.squeeze = keras.layers.Dense(hidden, activation="relu", name="squeeze", dtype="float32")
        self.excite = keras.layers.Dense(channels, activation="sigmoid", name="excite", dtype="float32")
        self.squeeze.build((None, channels))
        self.excite.build((None, self.squeeze.units))

    def channel_weights(self, inputs):
        """The per-channel gates in (0, 1), shape ``(batch, channels)``."""
        return self.excite(self.squeeze(ops.cast(ops.mean(inputs, axis=(1, 2)), "float32")))

    def call(self, inputs):
        return inputs * ops.cast(self.channel_weights(inputs), inputs.dtype)[:, None, None, :]

    def get_config(self):
        return {**super().get_config(), "reduction": self.reduction}


def eca_kernel_size(channels: int, gamma: int = 2, b: int = 1) -> int:
    """ECA's adaptive kernel: the odd number nearest ``|(log2(C) + b) / gamma|``, rounding up."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


@keras.saving.register_keras_serializable(PACKAGE)
class EfficientChannelAttention(keras.layers.Layer):
    """Efficient Channel Attention (Wang et al.): a 1-D convolution across the pooled channels.

    No dimensionality reduction and only ``k`` weights, with ``k`` from the channel count.
    """

    def __init__(self, gamma: int = 2, b: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.gamma = gamma
        self.b = b

    def build(self, input_shape):
        self.kernel_size = eca_kernel_size(input_shape[-1], self.gamma, self.b)
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, 1, 1), initializer="glorot_uniform"
        )

    def channel_weights(self, inputs):
        """The per-channel gates in (0, 1), shape ``(batch, channels)``."""
        pooled = ops.cast(ops.mean(inputs, axis=(1, 2)), "float32")[:, :, None]  # channels: the conv's length
        kernel = ops.cast(self.kernel, "float32")
        return ops.sigmoid(ops.conv(pooled, kernel, padding="same"))[:, :, 0]

    def call(self, inputs):
        return inputs * ops.cast(self.channel_weights(inputs), inputs.dtype)[:, None, None, :]

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "b": self.b}


@keras.saving.register_keras_serializable(PACKAGE)
class ArcFaceHead(keras.layers.Layer):
    """The class head of ArcFace: cosine similarity of the normalised embedding to each class centre.

    It outputs ``cos(theta)`` per class; :class:`ArcFaceLoss` adds the angular margin
    to the true class during training, so inference needs no labels.
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            name="kernel", shape=(input_shape[-1], self.units), initializer="glorot_uniform"
        )

    def call(self, inputs):
        embeddings = inputs / ops.maximum(ops.norm(inputs, axis=-1, keepdims=True), 1e-12)
        centres = self.kernel / ops.maximum(ops.norm(self.kernel, axis=0, keepdims=True), 1e-12)
        return ops.matmul(embeddings, ops.cast(centres, embeddings.dtype))

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(PACKAGE)
class ArcFaceLoss(keras.losses.Loss):
    """Additive angular margin loss: ``s * cos(theta + m)`` for the true class, ``s * cos(theta)`` else.

    Where ``theta + m`` would pass pi, ``cos(theta + m)`` stops falling with theta;
    there, as in insightface, the logit is ``cos(theta) - m * sin(m)`` instead.
    """

    def __init__(self, scale: float = 64.0, margin: float = 0.5, name: str = "arcface_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.scale = scale
        self.margin = margin

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        cosine = ops.clip(ops.cast(y_pred, "float32"), -1.0 + 1e-7, 1.0 - 1e-7)
        sine = ops.sqrt(1.0 - ops.square(cosine))
        with_margin = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        past_pi = cosine <= math.cos(math.pi - self.margin)
        with_margin = ops.where(past_pi, cosine - math.sin(math.pi - self.margin) * self.margin, with_margin)
        target = ops.one_hot(labels, ops.shape(cosine)[-1], dtype=cosine.dtype)
        logits = self.scale * (target * with_margin + (1.0 - target) * cosine)
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "margin": self.margin}
