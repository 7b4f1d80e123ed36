"""Faces from class folders into tf.data: parallel decode, resize, flip, ``(x - 127.5) / 128``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from face_pipeline.errors import FacePipelineError
from face_pipeline.labels import natural_key

IMAGE_SUFFIXES = (".jpg", ".jpeg")


class NoImagesError(FacePipelineError):
    """A folder that should hold class folders of faces holds none."""


def list_class_folders(*folders: Path) -> tuple[list[str], list[int], list[str]]:
    """``(image paths, class index of each, class names)`` of ``folder/<class>/*.jpg``.

    Several folders pool their classes (the centralized baseline pools the parties'),
    so a class name may appear in one of them only.
    """
    class_folders: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise NoImagesError(f"{folder}: no such folder; run the partition pipeline first")
        for entry in folder.iterdir():
            if not entry.is_dir():
                continue
            if entry.name in class_folders:
                raise NoImagesError(f"class {entry.name} is in both {class_folders[entry.name]} and {entry}")
            class_folders[entry.name] = entry
    class_names = sorted(class_folders, key=natural_key)
    paths, labels = [], []
    for index, name in enumerate(class_names):
        files = sorted(p for p in class_folders[name].iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += [str(p) for p in files]
        labels += [index] * len(files)
    if not paths:
        raise NoImagesError(f"{', '.join(map(str, folders))}: no images in <class>/*.jpg folders")
    return paths, labels, class_names


@dataclass(frozen=True)
class FaceSplits:
    """A party's (or several parties' pooled) training and held-out faces, ready for Keras."""

    train: tf.data.Dataset
    test: tf.data.Dataset
    class_names: list[str]
    train_images: int
    test_images: int


def load_face_splits(party_folders: Sequence[Path], params: dict) -> FaceSplits:
    """``<party>/train`` and ``<party>/test`` of each folder, with the same classes in both."""
    train_paths, train_labels, class_names = list_class_folders(*(f / "train" for f in party_folders))
    test_paths, test_labels, test_classes = list_class_folders(*(f / "test" for f in party_folders))
    if test_classes != class_names:
        raise NoImagesError(
            f"{', '.join(map(str, party_folders))}: train/ and test/ hold different classes; "
            "rerun the partition pipeline"
        )
    options = {
        "img_size": params["img_size"],
        "batch_size": params["batch_size"],
        "seed": params["seed"],
        "cache": params["cache"],
    }
    return FaceSplits(
        train=face_dataset(train_paths, train_labels, training=True, **options),
        test=face_dataset(test_paths, test_labels, training=False, **options),
        class_names=class_names,
        train_images=len(train_paths),
        test_images=len(test_paths),
    )


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
