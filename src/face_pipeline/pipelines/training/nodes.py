"""Train one party's face model on its own partition folder.

TensorFlow is imported inside the functions, not at the top: Kedro imports every
pipeline module when it starts, and the pipelines that do not train should not
pay the seconds that importing TensorFlow takes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from face_pipeline.datasets import ImageFolder
from face_pipeline.errors import TrainingError

logger = logging.getLogger(__name__)


def party_params(training: dict, party: str, overrides: dict | None) -> dict:
    """The shared training parameters with this party's overrides on top."""
    unknown = set(overrides or {}) - set(training)
    if unknown:
        raise TrainingError(f"{party}.overrides: unknown training parameters {sorted(unknown)}")
    return {**training, **(overrides or {})}


def train_party(
    partitioned: ImageFolder, training: dict, party: str, overrides: dict | None
) -> tuple[Any, dict, Figure, dict]:
    """Train the party's model on ``<party>/train``; validate and score it on ``<party>/test``.

    Returns the model, its per-epoch history, the training curves and the
    closed-set top-1 accuracy on the party's held-out images.
    """
    import keras

    from face_pipeline.models.builders import build_face_model
    from face_pipeline.models.inputs import face_dataset, list_class_folders
    from face_pipeline.models.training import Checkpoint, EpochLog, compile_model, resume_from_checkpoint

    params = party_params(training, party, overrides)
    folder = partitioned.path(party)
    train_paths, train_labels, class_names = list_class_folders(folder / "train")
    test_paths, test_labels, test_classes = list_class_folders(folder / "test")
    if test_classes != class_names:
        raise TrainingError(
            f"{folder}: train/ and test/ hold different classes; rerun the partition pipeline"
        )
    keras.utils.set_random_seed(params["seed"])
    data = {
        "img_size": params["img_size"],
        "batch_size": params["batch_size"],
        "seed": params["seed"],
        "cache": params["cache"],
    }
    train_data = face_dataset(train_paths, train_labels, training=True, **data)
    test_data = face_dataset(test_paths, test_labels, training=False, **data)

    checkpoint = Path(params["checkpoint_dir"]) / party
    model, history, first_epoch = (
        resume_from_checkpoint(checkpoint, class_names) if params["resume"] else (None, {}, 0)
    )
    if model is None:
        model = build_face_model(
            len(class_names),
            architecture=params["architecture"],
            attention=params["attention"],
            img_size=params["img_size"],
            loss=params["loss"],
            embedding_size=params["embedding_size"],
            dropout=params["dropout"],
            precision=params["precision"],
            backbone=params["backbone"],
        )
        compile_model(model, params, steps_per_epoch=-(-len(train_paths) // params["batch_size"]))
    logger.info(
        "%s: training %s (%s parameters) on %d images of %d classes, %d held out, for %d epochs",
        party,
        model.name,
        f"{model.count_params():,}",
        len(train_paths),
        len(class_names),
        len(test_paths),
        params["epochs"],
    )
    started = time.perf_counter()
    fit = model.fit(
        train_data,
        validation_data=test_data,
        epochs=params["epochs"],
        initial_epoch=first_epoch,
        shuffle=False,  # face_dataset shuffles; Keras cannot shuffle a tf.data pipeline
        verbose=0,
        callbacks=[EpochLog(party, len(train_paths)), Checkpoint(checkpoint, class_names, history)],
    )
    seconds = time.perf_counter() - started
    for name, values in fit.history.items():
        history.setdefault(name, []).extend(float(v) for v in values)
    loss, accuracy = model.evaluate(test_data, verbose=0)
    metrics = {
        "party": party,
        "architecture": model.name,
        "closed_set_top1": float(accuracy),
        "test_loss": float(loss),
        "test_images": len(test_paths),
        "train_images": len(train_paths),
        "classes": len(class_names),
        "chance": 1 / len(class_names),
        "epochs": params["epochs"],
        "train_seconds": round(seconds, 1),
        "class_names": class_names,
        "params": params,
    }
    logger.info("%s: closed-set top-1 %.3f on %d held-out images", party, accuracy, len(test_paths))
    return model, history, plot_training_curves(history, party), metrics


def plot_training_curves(history: dict, party: str) -> Figure:
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    epochs = range(1, len(history.get("loss", [])) + 1)
    for key, label in (("loss", "train"), ("val_loss", "held out")):
        if key in history:
            loss_axes.plot(epochs, history[key], marker="o", label=label)
    for key, label in (
        ("sparse_categorical_accuracy", "train"),
        ("val_sparse_categorical_accuracy", "held out"),
    ):
        if key in history:
            accuracy_axes.plot(epochs, history[key], marker="o", label=label)
    loss_axes.set(title=f"{party}: loss", xlabel="epoch")
    accuracy_axes.set(title=f"{party}: top-1 accuracy", xlabel="epoch", ylim=(0, 1))
    loss_axes.legend()
    accuracy_axes.legend()
    return figure
