"""Train one party's face model on its own partition folder.

TensorFlow is imported inside the functions, not at the top: Kedro imports every
pipeline module when it starts, and the pipelines that do not train should not
pay the seconds that importing TensorFlow takes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from face_pipeline.datasets import ImageFolder
from face_pipeline.errors import TrainingError


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

    from face_pipeline.models.inputs import load_face_splits
    from face_pipeline.models.training import fit_face_model

    params = party_params(training, party, overrides)
    keras.utils.set_random_seed(params["seed"])
    splits = load_face_splits([partitioned.path(party)], params)
    model, history, metrics = fit_face_model(party, splits, params, Path(params["checkpoint_dir"]) / party)
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
