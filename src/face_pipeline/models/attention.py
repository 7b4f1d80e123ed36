"""Where a face model looks: Grad-CAM over its last convolutional stage, and its SE/ECA gates.

Grad-CAM (Selvaraju et al.) weights each channel of the last stage's feature map by
the mean gradient of a score with respect to it. A face model's score is the
identity the face is attributed to: a class of the head where the model has one,
else the cosine similarity of the embedding to a reference direction (a mean
embedding of an identity), which is how the global model, with no head, "recognises".
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
import tensorflow as tf

from face_pipeline.errors import FacePipelineError
from face_pipeline.models.builders import CLASS_HEAD_LAYER, EMBEDDING_LAYER
from face_pipeline.models.layers import EfficientChannelAttention, SqueezeExcitation

# Every architecture here pools the last stage's feature map in a layer of this name.
POOL_LAYER = "pool"
ATTENTION_LAYERS = {"se": SqueezeExcitation, "eca": EfficientChannelAttention}


def last_conv_stage(model: keras.Model):
    """The feature map Grad-CAM explains: what the backbone hands to global pooling."""
    try:
        return model.get_layer(POOL_LAYER).input
    except ValueError as error:
        raise FacePipelineError(f"{model.name}: no {POOL_LAYER!r} layer after the backbone") from error


def has_class_head(model: keras.Model) -> bool:
    return CLASS_HEAD_LAYER in {layer.name for layer in model.layers}


def gradcam(
    model: keras.Model,
    images: np.ndarray,
    *,
    classes: np.ndarray | None = None,
    references: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(heatmaps in [0, 1] at the images' size, scores)`` for normalised ``images``.

    Give ``classes`` for a model with a class head (the score is that class's
    output), or ``references``, one unit vector per image, for a model that ends at
    the embedding (the score is the embedding's cosine similarity to it).
    """
    if (classes is None) == (references is None):
        raise ValueError("give either classes (a model with a class head) or references (an embedding)")
    output = model.get_layer(CLASS_HEAD_LAYER if classes is not None else EMBEDDING_LAYER).output
    explain = keras.Model(model.input, [last_conv_stage(model), output])
    inputs = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        features, outputs = explain(inputs, training=False)
        outputs = tf.cast(outputs, tf.float32)
        if classes is not None:
            scores = tf.gather(outputs, np.asarray(classes, np.int32), axis=1, batch_dims=1)
        else:
            scores = tf.reduce_sum(tf.math.l2_normalize(outputs, axis=1) * references, axis=1)
    # The gradient is taken at the feature map the model computed, in its own dtype (bf16 under
    # mixed precision); a cast made before it would not lie on the path to the score.
    gradients = tf.cast(tape.gradient(scores, features), tf.float32)
    features = tf.cast(features, tf.float32)
    channel_weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
    maps = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1)).numpy()
    size = images.shape[1:3]
    heatmaps = np.stack(
        [_scaled_to_unit(cv2.resize(m, size[::-1], interpolation=cv2.INTER_LINEAR)) for m in maps]
    )
    return heatmaps, scores.numpy()


def _scaled_to_unit(heatmap: np.ndarray) -> np.ndarray:
    peak = float(heatmap.max())
    return heatmap / peak if peak > 0 else np.zeros_like(heatmap)


def overlay(face: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The uint8 RGB ``face`` under a jet-coloured ``heatmap``."""
    colours = cv2.applyColorMap(np.uint8(255 * heatmap), cv2.COLORMAP_JET)[:, :, ::-1]
    return np.uint8((1 - alpha) * face + alpha * colours)


def attention_layers(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """``(kind, layer)`` for every SE and ECA layer, in the order the image meets them."""
    found = []
    for layer in model.layers:
        for kind, cls in ATTENTION_LAYERS.items():
            if isinstance(layer, cls):
                found.append((kind, layer))
    return found


def channel_gates(model: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """``{layer name: gates (images, channels)}`` of every SE and ECA layer, in (0, 1)."""
    layers = attention_layers(model)
    if not layers:
        return {}
    block_inputs = keras.Model(model.input, [layer.input for _, layer in layers])(images, training=False)
    return {
        layer.name: keras.ops.convert_to_numpy(layer.channel_weights(block_input)).astype(np.float64)
        for (_, layer), block_input in zip(layers, block_inputs, strict=True)
    }


def peakedness(gates: np.ndarray) -> np.ndarray:
    """The Gini coefficient of each row's gates: 0 when every channel weighs the same, near 1
    when one channel takes it all."""
    ordered = np.sort(gates, axis=-1)
    n = gates.shape[-1]
    ranks = 2 * np.arange(1, n + 1) - n - 1
    return np.sum(ranks * ordered, axis=-1) / (n * np.sum(ordered, axis=-1))


def top_decile_share(gates: np.ndarray) -> np.ndarray:
    """The share of each row's total gate held by its top tenth of channels (0.1 when flat)."""
    top = max(1, gates.shape[-1] // 10)
    ordered = np.sort(gates, axis=-1)[..., ::-1]
    return ordered[..., :top].sum(axis=-1) / gates.sum(axis=-1)
