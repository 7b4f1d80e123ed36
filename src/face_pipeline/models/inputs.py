"""Faces from class folders into tf.data: parallel decode, resize, flip, ``(x - 127.5) / 128``."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from face_pipeline.errors import FacePipelineError
from face_pipeline.labels import natural_key

IMAGE_SUFFIXES = (".jpg", ".jpeg")


class NoImagesError(FacePipelineError):
    """A folder that should hold class folders of faces holds none."""


def list_class_folders(folder: Path) -> tuple[list[str], list[int], list[str]]:
    """``(image paths, class index of each, class names)`` of ``folder/<class>/*.jpg``."""
    if not folder.is_dir():
        raise NoImagesError(f"{folder}: no such folder; run the partition pipeline first")
    class_names = sorted((entry.name for entry in folder.iterdir() if entry.is_dir()), key=natural_key)
    paths, labels = [], []
    for index, name in enumerate(class_names):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(p) for p in files]
        labels += [index] * len(files)
    if not paths:
        raise NoImagesError(f"{folder}: no images in <class>/*.jpg folders")
    return paths, labels, class_names


def normalize(image):
    """insightface's input scaling: pixel values to about [-1, 1]."""
    return (tf.cast(image, tf.float32) - 127.5) / 128.0


def decode_face(path, img_size: int):
    """One JPEG file to an ``img_size`` square uint8 RGB image (greyscale faces get three channels)."""
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    image = tf.image.resize(image, (img_size, img_size), antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def face_dataset(
    paths: list[str],
    labels: list[int],
    *,
    img_size: int,
    batch_size: int,
    training: bool,
    seed: int = 0,
    cache: bool = True,
    shuffle_buffer: int = 20_000,
) -> tf.data.Dataset:
    """Batches of ``(normalised image, class index)``; shuffled and flipped when ``training``.

    With ``cache`` the decoded images stay in memory after the first epoch, so
    later epochs skip JPEG decoding (112x112 faces take 37 KiB each).
    """
    dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
    if training:  # shuffling names first spreads classes even when the buffer is smaller than the set
        dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=False)
    dataset = dataset.map(
        lambda path, label: (decode_face(path, img_size), label), num_parallel_calls=tf.data.AUTOTUNE
    )
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(min(len(paths), shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
        dataset = dataset.map(
            lambda image, label: (normalize(tf.image.random_flip_left_right(image, seed=seed)), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    else:
        dataset = dataset.map(
            lambda image, label: (normalize(image), label), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
