"""The synthetic pipeline: procedural faces written as an insightface-layout RecordIO."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from face_pipeline.pipelines.synthetic.nodes import generate_demo_faces
from face_pipeline.recordio import RecordIOReader, write_insightface

REPO = Path(__file__).resolve().parents[1]
CONF_PARAMS = yaml.safe_load((REPO / "conf/base/parameters_synthetic.yml").read_text())["synthetic"]


def _params(**overrides) -> dict:
    return {**CONF_PARAMS, "images_per_class_spread": 0, **overrides}


def _decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def _faces(**overrides) -> tuple[np.ndarray, np.ndarray]:
    pairs = list(generate_demo_faces(_params(**overrides)))
    return np.array([label for label, _ in pairs]), np.stack([_decode(jpeg) for _, jpeg in pairs])


def _nearest_centroid_accuracy(features: np.ndarray, labels: np.ndarray, per_class: int) -> float:
    """Centroids from each identity's first half of images, scored on the second half."""
    features = features.reshape(len(features), -1).astype(np.float64)
    train = np.arange(len(labels)) % per_class < per_class // 2
    classes = np.unique(labels)
    centroids = np.stack([features[train & (labels == c)].mean(0) for c in classes])
    distances = ((features[~train, None] - centroids[None]) ** 2).sum(-1)
    return float((classes[distances.argmin(1)] == labels[~train]).mean())


def _standardised(features: np.ndarray) -> np.ndarray:
    flat = features.reshape(len(features), -1).astype(np.float64)
    flat -= flat.mean(1, keepdims=True)
    return flat / (flat.std(1, keepdims=True) + 1e-9)


def _edge_map(image: np.ndarray) -> np.ndarray:
    """Where the outlines are (face, hair, eyes, mouth), blind to exposure once standardised."""
    grey = cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (0, 0), 1.5)
    edges = np.abs(cv2.Laplacian(grey, cv2.CV_32F))
    return cv2.resize(edges, (16, 16), interpolation=cv2.INTER_AREA)


def test_pipeline_writes_an_insightface_recordio(kedro_project):
    classes, per_class = 4, 5
    # Nested, as `kedro run --params synthetic.classes=4,...` hands them over; a
    # dotted key here would only add a top-level param named "synthetic.classes".
    params = {"synthetic": {"classes": classes, "images_per_class": per_class, "images_per_class_spread": 0}}
    kedro_project.run("synthetic", params=params)

    rec = kedro_project.data("01_raw/demo-webface/train.rec")
    reader = RecordIOReader(rec, rec.with_name("train.idx"))
    try:
        images = classes * per_class
        assert reader.index_source != "scan"
        assert reader.identity_key_range() == (images + 1, images + 1 + classes)
        records = list(reader.iter_images())
        identity_ranges = [reader.read_unpacked(images + 1 + label)[0].label for label in range(classes)]
        payloads = [bytes(image) for _, _, image in records]
        labels = [int(header.class_label) for _, header, _ in records]
    finally:
        reader.close()

    assert [key for key, _, _ in records] == list(range(1, images + 1))
    assert labels == sorted(labels)  # one identity's images together
    assert Counter(labels) == dict.fromkeys(range(classes), per_class)
    assert identity_ranges == [
        (float(1 + label * per_class), float(1 + (label + 1) * per_class)) for label in range(classes)
    ]
    for payload in payloads:
        assert payload[:2] == b"\xff\xd8"
        assert _decode(payload).shape == (112, 112, 3)
    assert len(set(payloads)) == images  # every photo differs, within an identity too

    # The runtime params reached the node: the file holds exactly what it draws for them.
    expected = kedro_project.path / "expected.rec"
    write_insightface(
        expected,
        expected.with_suffix(".idx"),
        generate_demo_faces(_params(classes=classes, images_per_class=per_class)),
    )
    assert rec.read_bytes() == expected.read_bytes()


def test_same_seed_same_bytes_other_seed_other_faces():
    params = _params(classes=3, images_per_class=4)
    first = list(generate_demo_faces(params))
    assert first == list(generate_demo_faces(params))
    other = list(generate_demo_faces({**params, "seed": params["seed"] + 1}))
    assert [label for label, _ in other] == [label for label, _ in first]
    assert not {jpeg for _, jpeg in first} & {jpeg for _, jpeg in other}


def test_an_identity_does_not_depend_on_how_many_are_drawn():
    smaller = list(generate_demo_faces(_params(classes=2, images_per_class=3)))
    larger = list(generate_demo_faces(_params(classes=3, images_per_class=3)))
    assert larger[: len(smaller)] == smaller


def test_class_sizes_spread_around_images_per_class():
    pairs = list(
        generate_demo_faces(_params(classes=12, images_per_class=6, images_per_class_spread=2, image_size=48))
    )
    counts = Counter(label for label, _ in pairs)
    assert sorted(counts) == list(range(12))
    assert all(4 <= n <= 8 for n in counts.values())
    assert len(set(counts.values())) > 1
    assert _decode(pairs[0][1]).shape == (48, 48, 3)


@pytest.mark.parametrize(
    "overrides",
    [
        {"classes": 0},
        {"images_per_class": 0},
        {"images_per_class_spread": 5},
        {"jpeg_quality": 0},
        {"image_size": 8},
    ],
)
def test_bad_params_are_refused_before_drawing(overrides):
    with pytest.raises(ValueError, match="synthetic"):
        generate_demo_faces(_params(**{"images_per_class": 5, **overrides}))


def test_identities_differ_in_geometry_not_in_colour():
    per_class = 10
    labels, images = _faces(classes=20, images_per_class=per_class)
    chance = 1 / 20

    # Colour alone: the whole image's mean, or the mean of the middle of the face
    # (mostly skin), barely beats chance.
    mean_colour = images.mean(axis=(1, 2))
    face_colour = images[:, 40:72, 36:76].mean(axis=(1, 2))
    colour_accuracy = max(
        _nearest_centroid_accuracy(mean_colour, labels, per_class),
        _nearest_centroid_accuracy(face_colour, labels, per_class),
    )
    assert colour_accuracy < 0.3

    # Where the outlines are is a crude cue, yet it tells most identities apart.
    edges = _standardised(np.stack([_edge_map(image) for image in images]))
    geometry_accuracy = _nearest_centroid_accuracy(edges, labels, per_class)
    assert geometry_accuracy > 0.45
    assert geometry_accuracy > max(2 * colour_accuracy, 5 * chance)


def test_lighting_varies_more_than_skin_tone_between_identities():
    per_class = 10
    labels, images = _faces(classes=20, images_per_class=per_class)
    # The median of the middle of the face is the lit skin colour.
    skin = np.median(images[:, 40:72, 36:76].reshape(len(images), -1, 3), axis=1)
    identity_means = np.stack([skin[labels == c].mean(0) for c in range(20)])
    within = np.mean([skin[labels == c].var(0, ddof=1).sum() for c in range(20)])
    # The spread of identity means, less what ten photos' lighting adds to each mean.
    between = identity_means.var(0, ddof=1).sum() - within / per_class
    assert within > between
