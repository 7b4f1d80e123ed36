"""Embeddings and class predictions of saved face models, for the evaluation pipeline."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from face_pipeline.models.builders import CLASS_HEAD_LAYER, EMBEDDING_LAYER, embedding_model
from face_pipeline.models.inputs import decode_face, normalize


def ends_at_embedding(model: keras.Model) -> keras.Model:
    """The model itself if it ends at the embedding (the global model), else its embedding part."""
    if model.layers[-1].name == EMBEDDING_LAYER:
        return model
    return embedding_model(model)


def face_batches(paths: Sequence[str], img_size: int, batch_size: int) -> tf.data.Dataset:
    """Normalised faces in file order, decoded in parallel; no shuffling, no flipping."""
    dataset = tf.data.Dataset.from_tensor_slices(list(paths))
    dataset = dataset.map(
        lambda path: normalize(decode_face(path, img_size)), num_parallel_calls=tf.data.AUTOTUNE
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def embed_faces(model: keras.Model, paths: Sequence[str], *, batch_size: int, flip: bool) -> np.ndarray:
    """One L2-normalised embedding per face; with ``flip``, of the face plus its mirror image.

    Adding the mirror image's embedding is what insightface's verification does;
    it makes the embedding less sensitive to which way the face turns.
    """
    embed = ends_at_embedding(model)
    img_size = embed.input.shape[1]
    chunks = []
    for images in face_batches(paths, img_size, batch_size):
        embeddings = keras.ops.convert_to_numpy(embed(images, training=False)).astype(np.float64)
        if flip:
            mirrored = embed(tf.image.flip_left_right(images), training=False)
            embeddings += keras.ops.convert_to_numpy(mirrored).astype(np.float64)
        chunks.append(embeddings)
    embeddings = np.concatenate(chunks)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


def predict_classes(model: keras.Model, paths: Sequence[str], *, batch_size: int) -> np.ndarray:
    """The class head's top-1 class index for each face."""
    if CLASS_HEAD_LAYER not in {layer.name for layer in model.layers}:
        raise ValueError(f"{model.name} has no {CLASS_HEAD_LAYER!r} layer to predict classes with")
    img_size = model.input.shape[1]
    predictions = [
        np.argmax(keras.ops.convert_to_numpy(model(images, training=False)), axis=1)
        for images in face_batches(paths, img_size, batch_size)
    ]
    return np.concatenate(predictions)
