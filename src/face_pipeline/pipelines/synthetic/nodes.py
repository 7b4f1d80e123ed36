"""Draw the demo dataset: procedural identities as ``(label, JPEG bytes)`` pairs, grouped by label."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import cv2
import numpy as np

from face_pipeline.pipelines.synthetic.faces import render_face, sample_identity, sample_shot

logger = logging.getLogger(__name__)


def _rng(seed: int, label: int, stream: int) -> np.random.Generator:
    # One stream per (label, image): identity k and its photos stay the same
    # whatever `classes` or `images_per_class` say, so a bigger demo extends a smaller one.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(label, stream)))


def _check(params: dict) -> None:
    if params["classes"] < 1 or params["images_per_class"] < 1:
        raise ValueError(f"synthetic: classes and images_per_class must be at least 1, got {params}")
    if not 0 <= params.get("images_per_class_spread", 0) < params["images_per_class"]:
        raise ValueError("synthetic: images_per_class_spread must be in [0, images_per_class)")
    if not 1 <= params["jpeg_quality"] <= 100:
        raise ValueError(f"synthetic: jpeg_quality must be in [1, 100], got {params['jpeg_quality']}")
    if params["image_size"] < 32:
        raise ValueError(f"synthetic: image_size must be at least 32, got {params['image_size']}")


def _encode(image: np.ndarray, quality: int) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("OpenCV could not encode a synthetic face as JPEG")
    return jpeg.tobytes()


def _faces(params: dict) -> Iterator[tuple[int, bytes]]:
    started, total = time.perf_counter(), 0
    seed, size, quality = params["seed"], params["image_size"], params["jpeg_quality"]
    spread = params.get("images_per_class_spread", 0)
    for label in range(params["classes"]):
        rng = _rng(seed, label, 0)
        identity = sample_identity(rng)
        count = params["images_per_class"] + int(rng.integers(-spread, spread + 1))
        for index in range(count):
            shot_rng = _rng(seed, label, index + 1)
            image = render_face(identity, sample_shot(shot_rng), shot_rng, size)
            yield label, _encode(image, quality)
        total += count
    logger.info(
        "Drew %d faces of %d identities in %.1fs", total, params["classes"], time.perf_counter() - started
    )


def generate_demo_faces(params: dict) -> Iterator[tuple[int, bytes]]:
    """``(label, JPEG bytes)`` for labels ``0 .. classes-1``, each label's images together.

    This returns an iterator instead of being a generator function on purpose:
    Kedro saves every item a generator *function* yields as a separate save(),
    while an iterator goes whole to the dataset's one save(), which streams it to disk.
    """
    _check(params)
    return _faces(params)
